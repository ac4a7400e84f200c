"""Reading and validating user vocabularies: names files with one class name per line.

A names file is UTF-8 text (an optional byte-order mark is dropped), one class per line in label order,
surrounding spaces stripped, `\\n` or `\\r\\n` line ends, a final newline optional. It is rejected, with the
line (or byte offset) to fix, when it has bytes that are not UTF-8, an empty or blank line, or two lines
that name the same class (equal after `vocabulary.normalise_name`, so 'Car' and 'car ' clash too: they
would share one text embedding and one row of the union vocabulary).

Pure Python (no numpy, jax or tf).
"""
import pathlib

from dataseg_jax.vocab import vocabulary


class NamesFileError(ValueError):
  """A names file that cannot be used as a vocabulary; the message says where and what to do."""


def parse_names(data: bytes, source: str = "<names>") -> list:
  """Bytes of a names file -> class names [K], or NamesFileError naming the line or byte offset."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise NamesFileError(f"{source}: byte offset {e.start} (line {line}) is not UTF-8 "
                         f"({data[e.start:e.end]!r}: {e.reason}); save the file as UTF-8") from None
  if text.startswith("\ufeff"):
    text = text[1:]
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines = lines[:-1]
  if not lines:
    raise NamesFileError(f"{source}: the file is empty; write one class name per line")
  names, seen = [], {}
  for i, raw in enumerate(lines, start=1):
    name = raw.rstrip("\r").strip()
    if not name:
      raise NamesFileError(f"{source}: line {i} is empty; remove it (one class name per line, no blank lines)")
    try:
      key = vocabulary.normalise_name(name)
    except ValueError as e:
      raise NamesFileError(f"{source}: line {i}: {e}") from None
    if key in seen:
      j = seen[key]
      raise NamesFileError(f"{source}: line {i} {name!r} duplicates line {j} {names[j - 1]!r} (both are the class "
                           f"{key!r}); keep one of them or rename the other")
    seen[key] = i
    names.append(name)
  return names


def read_names(path) -> list:
  """Names file -> class names [K] in label order (see the module docstring for the format and errors)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"names file {path} not found; write a UTF-8 text file with one class name per line")
  return parse_names(path.read_bytes(), str(path))
