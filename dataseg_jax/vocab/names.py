"""The one reader of names files (class-name lists), for every entry point.

Training's `names` and `thing_classes` files and a semantic dataset's `objectInfo150.txt` / `names.txt`, the
transfer benchmarks' lists, `scripts/embed_vocab.py --names`, `scripts/predict.py --vocab / --things` and an
export's `names.txt` / `things.txt` are all read by `read_names`, with one rule:

- UTF-8 text, never JSON: a `.json` file is refused (the JSON vocabularies of dataseg_jax/vocab/ are built-ins,
  read by `vocabulary.load_builtin` with their ids and thing flags). A byte-order mark at the start is dropped; lines end with `\\n` or `\\r\\n`; the final newline is
  optional.
- A line whose first non-blank character is `#` is a comment and is skipped.
- Every other line is one class, in label order (line k of the names = class k), surrounding spaces stripped.
- Blank lines are allowed only at the end of the file. One before or between names is an error: skipped, it would
  move every later class to another label; kept, it would be a class without a name.
- Header: when the first line that is not a comment has tab-separated columns, one of them titled `Name` (ADE20K's
  `objectInfo150.txt`: `Idx Ratio Train Val Name`), the file is a table: every later line has as many columns, the
  class is its `Name` column, and an `Idx` column must count 1, 2, 3, ... A lone word on the first line (`Idx`) is a
  class, not a header.
- A line may list synonyms separated by ',' or ';' ('building, edifice'): the line is kept whole as the class's
  name, and its first synonym, normalised, is its key (`vocabulary.normalise_name`: lower case, '_' '-' '/' as
  spaces, COCO's '-merged' / '-stuff' / '-other' suffixes dropped).
- Each name must keep a key (a line ',' has none), and no two lines may have the same key ('Car' and 'car ' clash,
  and so do 'building, edifice' and 'building': they would share one text embedding and one union row).
- A file with no names is an error, except for lists that may be empty (`allow_empty`: thing classes).

Errors are `NamesFileError` (a ValueError) naming the file and the line (or byte offset) and saying what to do; a
binary file (NUL bytes: an .npz of embeddings, an image) is refused as such. Pure Python (no numpy, jax or tf here).
"""
import pathlib

from dataseg_jax.vocab import vocabulary


class NamesFileError(ValueError):
  """A names file that cannot be used as a vocabulary; the message says where and what to do."""


def _decode(data: bytes, source: str) -> str:
  """UTF-8 text of a names file without its byte-order mark, or NamesFileError naming the byte offset and line."""
  if b"\0" in data:
    raise NamesFileError(f"{source}: a binary file (it holds NUL bytes, e.g. an .npz of embeddings), not a names file; "
                         "pass a UTF-8 text file with one class name per line")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise NamesFileError(f"{source}: byte offset {e.start} (line {line}) is not UTF-8 "
                         f"({data[e.start:e.end]!r}: {e.reason}); save the file as UTF-8") from None
  return text[1:] if text.startswith("\ufeff") else text


def _content_lines(text: str) -> list:
  """(line number, text) of every line that is not a comment, without the blank lines at the end of the file."""
  lines = [(i, raw.rstrip("\r")) for i, raw in enumerate(text.split("\n"), start=1)]
  lines = [(i, raw) for i, raw in lines if not raw.lstrip().startswith("#")]
  while lines and not lines[-1][1].strip():
    lines.pop()
  return lines


def _table_columns(line: str) -> list | None:
  """Column titles of a header line (tab-separated, one titled 'Name'), or None when `line` is not one."""
  titles = [t.strip().lower() for t in line.split("\t")]
  return titles if len(titles) > 1 and "name" in titles else None


def _table_name(raw: str, titles: list, where: str, label: int) -> str:
  """The `Name` column of one table row (checking its column count and its `Idx` when the table has one)."""
  fields = raw.split("\t")
  if len(fields) != len(titles):
    raise NamesFileError(f"{where} has {len(fields)} tab-separated columns but the header has {len(titles)} "
                         f"({', '.join(titles)}); give every row the header's columns")
  if "idx" in titles and fields[titles.index("idx")].strip() != str(label):
    raise NamesFileError(f"{where}: Idx is {fields[titles.index('idx')].strip()!r} but this row is class {label} "
                         "(rows are in label order, Idx 1, 2, 3, ...); fix the Idx or the row order")
  return fields[titles.index("name")].strip()


def parse_names(data: bytes, source: str = "<names>", allow_empty: bool = False) -> list:
  """Bytes of a names file -> class names [K] in label order (module docstring), or NamesFileError naming the
  line or byte offset."""
  lines = _content_lines(_decode(data, source))
  titles = _table_columns(lines[0][1]) if lines else None
  if titles:
    lines = lines[1:]
  names, seen = [], {}
  for i, raw in lines:
    where = f"{source}: line {i}"
    if not raw.strip():
      raise NamesFileError(f"{where} is empty; remove it or name the class (one class name per line, in label "
                           "order; blank lines only at the end)")
    name = _table_name(raw, titles, where, len(names) + 1) if titles else raw.strip()
    try:
      key = vocabulary.normalise_name(name)
    except ValueError as e:
      raise NamesFileError(f"{where}: {e}") from None
    if key in seen:
      j, other = seen[key]
      raise NamesFileError(f"{where} {name!r} duplicates line {j} {other!r} (both are the class {key!r}); keep one "
                           "of them or rename the other")
    seen[key] = (i, name)
    names.append(name)
  if not names and not allow_empty:
    raise NamesFileError(f"{source}: the file has no class names; write one class name per line")
  return names


def read_names(path, allow_empty: bool = False) -> list:
  """Names file -> class names [K] in label order (see the module docstring for the rule and the errors);
  `allow_empty` accepts a file with no names (a list of thing classes that has none)."""
  path = pathlib.Path(path)
  if path.suffix.lower() == ".json":
    raise NamesFileError(f"{path}: a JSON file, not a names file; write a UTF-8 text file with one class name per "
                         "line, in label order")
  if not path.is_file():
    raise FileNotFoundError(f"names file {path} not found; write a UTF-8 text file with one class name per line, in "
                            "label order")
  return parse_names(path.read_bytes(), str(path), allow_empty)
