"""Names files: the format that is accepted, and a clear error (line / byte offset) for each bad input."""
import pytest

from dataseg_jax.vocab import names


def _write(tmp_path, data: bytes):
  path = tmp_path / "names.txt"
  path.write_bytes(data)
  return path


def test_names_file_reads_one_name_per_line(tmp_path):
  assert names.read_names(_write(tmp_path, b"cat\n  traffic light \ndog")) == ["cat", "traffic light", "dog"]
  assert names.read_names(_write(tmp_path, b"cat\r\ndog\r\n")) == ["cat", "dog"]
  assert names.read_names(_write(tmp_path, "\ufeffcaf\u00e9\nstra\u00dfe\n".encode("utf-8"))) == ["caf\u00e9", "stra\u00dfe"]


def test_names_file_duplicate_names_give_both_line_numbers(tmp_path):
  with pytest.raises(names.NamesFileError, match=r"line 4 'cat' duplicates line 2 'cat'"):
    names.read_names(_write(tmp_path, b"dog\ncat\nbird\ncat\n"))
  with pytest.raises(names.NamesFileError, match=r"line 3 'Wall_Other' duplicates line 1 'wall other'"):
    names.read_names(_write(tmp_path, b"wall other\nsky\nWall_Other\n"))


@pytest.mark.parametrize("data,line", [(b"cat\n\ndog\n", 2), (b"cat\ndog\n   \n", 3), (b"\ncat\n", 1),
                                       (b"cat\ndog\n\n", 3)])
def test_names_file_empty_line_is_an_error_with_its_line(tmp_path, data, line):
  with pytest.raises(names.NamesFileError, match=rf"line {line} is empty"):
    names.read_names(_write(tmp_path, data))


def test_names_file_non_utf8_bytes_give_byte_offset(tmp_path):
  with pytest.raises(names.NamesFileError, match=r"byte offset 8 \(line 3\) is not UTF-8.*save the file as UTF-8"):
    names.read_names(_write(tmp_path, b"cat\ndog\n\xff\xfebird\n"))
  with pytest.raises(names.NamesFileError, match=r"byte offset 3 \(line 1\)"):
    names.read_names(_write(tmp_path, "caf\u00e9".encode("latin-1") + b"x\n"))


def test_names_file_empty_missing_or_unnamable(tmp_path):
  with pytest.raises(names.NamesFileError, match="the file is empty"):
    names.read_names(_write(tmp_path, b""))
  with pytest.raises(FileNotFoundError, match="one class name per line"):
    names.read_names(tmp_path / "absent.txt")
  with pytest.raises(names.NamesFileError, match="line 2: class name '-'"):
    names.read_names(_write(tmp_path, b"cat\n-\n"))
