"""Names files: one reader and one rule for every entry point (dataseg_jax/vocab/names.py); each bad file is an
error naming the file and the line (or byte offset) and saying what to do."""
import io
import pathlib
import sys
import types

import ml_collections
import numpy as np
import pytest

from data_pipelines import registry
from dataseg_jax import config as config_lib
from dataseg_jax.vocab import names

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import embed_vocab  # noqa: E402
import predict  # noqa: E402


def _write(tmp_path, data: bytes, name="names.txt"):
  path = tmp_path / name
  path.write_bytes(data)
  return path


def _npz_bytes() -> bytes:
  out = io.BytesIO()
  np.savez(out, names=np.array(["cat"]), embeddings=np.zeros((1, 4), np.float32))
  return out.getvalue()


ADE_HEADER = b"Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n"


@pytest.mark.parametrize("data,want", [
    (b"cat\n  traffic light \ndog", ["cat", "traffic light", "dog"]),
    (b"cat\r\ndog\r\n", ["cat", "dog"]),
    ("\ufeffcaf\u00e9\nstra\u00dfe\n".encode("utf-8"), ["caf\u00e9", "stra\u00dfe"]),
    (b"# my classes\ncat\n  # the dogs\ndog\n", ["cat", "dog"]),      # comments are not classes
    (b"cat\ndog\n\n  \n", ["cat", "dog"]),                              # blank lines at the end
    (b"Idx\ncat\n", ["Idx", "cat"]),                                    # a lone 'Idx' is a class, not a header
    (ADE_HEADER, ["wall", "building, edifice"]),                        # objectInfo150.txt: the Name column
    (b"# ADE\r\n" + ADE_HEADER.replace(b"\n", b"\r\n"), ["wall", "building, edifice"]),
])
def test_names_file_rule(tmp_path, data, want):
  assert names.read_names(_write(tmp_path, data)) == want


@pytest.mark.parametrize("data,message", [
    (b"cat\n\ndog\n", r"names.txt: line 2 is empty; remove it or name the class"),
    (b"\ncat\n", r"names.txt: line 1 is empty"),
    (b"# header\n\ncat\n", r"names.txt: line 2 is empty"),
    (b"dog\ncat\nbird\ncat\n", r"names.txt: line 4 'cat' duplicates line 2 'cat' \(both are the class 'cat'\)"),
    (b"wall other\nsky\nWall_Other\n", r"line 3 'Wall_Other' duplicates line 1 'wall other'"),
    (b"cat\n,\n", r"names.txt: line 2: class name ',' is empty after normalisation; give the class a name"),
    (b"cat\n-\n", r"names.txt: line 2: class name '-'"),
    (b"", r"names.txt: the file has no class names; write one class name per line"),
    (b"# only a comment\n\n", r"names.txt: the file has no class names"),
    (b"cat\ndog\n\xff\xfebird\n", r"names.txt: byte offset 8 \(line 3\) is not UTF-8.*save the file as UTF-8"),
    ("caf\u00e9".encode("latin-1") + b"x\n", r"byte offset 3 \(line 1\)"),
    (_npz_bytes(), r"names.txt: a binary file \(it holds NUL bytes, e.g. an .npz of embeddings\), not a names file"),
    (b"Idx\tName\n1\tcat\n3\tdog\n", r"names.txt: line 3: Idx is '3' but this row is class 2"),
    (b"Idx\tName\n1\tcat\n2\n", r"names.txt: line 3 has 1 tab-separated columns but the header has 2 \(idx, name\)"),
    (b"building, edifice\nsky\nBuilding;house\n",
     r"line 3 'Building;house' duplicates line 1 'building, edifice' \(both are the class 'building'\)"),
])
def test_bad_names_file_names_the_file_and_line(tmp_path, data, message):
  with pytest.raises(names.NamesFileError, match=message):
    names.read_names(_write(tmp_path, data))


def test_a_json_file_is_not_a_names_file(tmp_path):
  """A JSON vocabulary read line by line would give classes such as '{' and '"categories": [': refused instead."""
  data = b'{"categories": [\n{"id": 1, "name": "cat", "isthing": 1}\n]}\n'
  assert names.parse_names(data) == ['{"categories": [', '{"id": 1, "name": "cat", "isthing": 1}', "]}"]
  with pytest.raises(names.NamesFileError, match=r"vocab.json: a JSON file, not a names file; write a UTF-8 text"):
    names.read_names(_write(tmp_path, data, "vocab.json"))


def test_missing_names_file_and_lists_that_may_be_empty(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"names file .*absent.txt not found; write a UTF-8 text file"):
    names.read_names(tmp_path / "absent.txt")
  assert names.read_names(_write(tmp_path, b"\n"), allow_empty=True) == []  # a things.txt without things


def _dataset_names(path):
  """The names training reads from a semantic_png entry's names file."""
  c = config_lib.base_config()
  c.data.datasets = ml_collections.ConfigDict({"mine": config_lib.dataset_entry(
      format="semantic_png", task="semantic", train_images="images/training", names=str(path))})
  return list(registry.dataset_vocab(registry.resolve_entry(c, "mine")).names)


def _embedded_names(path):
  return embed_vocab.run(str(path), str(path.parent / "out.npz"), encoder="hash", dim=8).names


def _predict_names(path):
  """The names `predict.py --vocab` swaps into an export (a stand-in model: only the vocabulary is read)."""
  swapped = {}
  model = types.SimpleNamespace(
      names=["cat"], thing_mask=[True], config={"vocab": {"encoder": "hash", "prompts": ["{}"]}, "embed_dim": 8},
      set_vocabulary=lambda n, emb, things: swapped.update(names=list(n)))
  predict.swap_vocabulary(model, str(path))
  return swapped["names"]


ENTRY_POINTS = {"training": _dataset_names, "embed_vocab": _embedded_names, "predict --vocab": _predict_names}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_reads_names_by_the_one_rule(tmp_path, entry):
  """Issue 24: embed_vocab.py kept a '#' line as a class and refused blank lines, while training and predict skipped
  both and also dropped a first line 'Idx' (taken for ADE's header)."""
  read = ENTRY_POINTS[entry]
  assert read(_write(tmp_path, b"# my classes\nIdx\ncat\ndog\n\n")) == ["Idx", "cat", "dog"]
  with pytest.raises(ValueError, match=r"names.txt: line 3 is empty; remove it or name the class"):
    read(_write(tmp_path, b"cat\ndog\n\nbird\n"))


@pytest.mark.parametrize("data,message", [
    (_npz_bytes(), r"vocab.npz: a binary file"),
    (b"cat\n\xe9t\xe9\n", r"vocab.npz: byte offset 4 \(line 2\) is not UTF-8"),
    (b"", r"vocab.npz: the file has no class names"),
    (b"cat\n,\n", r"vocab.npz: line 2: class name ','"),
])
def test_predict_vocab_errors_name_the_file_and_line(tmp_path, data, message):
  """Issue 24: predict --vocab with a .npz, non-UTF-8, empty file or a ',' line named neither file nor line."""
  with pytest.raises(ValueError, match=message):
    _predict_names(_write(tmp_path, data, "vocab.npz"))
