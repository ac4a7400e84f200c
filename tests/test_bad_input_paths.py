"""One path rule for every reader and converter (data_pipelines/paths.py): file names read from data files are
relative and stay inside their folder; nothing is read from, or written to, outside the folders given.

The readers' rows (a JSON file_name with '../' or an absolute path) are in tests/test_bad_input_data.py."""
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from data_pipelines import paths
from data_pipelines import transfer
from dataseg_jax import panoptic_ids
from dataseg_jax.evaluation import panoptic

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import predict  # noqa: E402


@pytest.mark.parametrize("name,problem", [
    ("a.jpg", None), ("images/v1/patch8/objects365_v1_00420917.jpg", None), ("./a.jpg", None),
    ("a/../b.jpg", None), ("...jpg", None),
    ("../a.jpg", "leaves its folder"), ("a/../../b.jpg", "leaves its folder"), ("..", "leaves its folder"),
    ("/etc/passwd", "is an absolute path"), ("", "is empty"), ("a/..", "names the folder itself, not a file"),
])
def test_the_path_rule(name, problem):
  assert paths.problem(name) == problem
  if problem:
    with pytest.raises(paths.PathOutsideRoot, match=f"^list.txt line 3: file name {name!r} {problem}; name files "
                                                    r"relative to /data \(no leading '/', no '..' that leaves it\)"):
      paths.inside("/data", name, "list.txt line 3")
  else:
    assert str(paths.inside("/data", name, "w")).startswith("/data/")


def _voc(root: pathlib.Path, ids) -> pathlib.Path:
  """A VOC2012-layout folder with images and palette labels for `ids` (paths relative to JPEGImages)."""
  for i in ids:
    for folder, ext, im in (("JPEGImages", ".jpg", Image.new("RGB", (8, 6), (90, 20, 200))),
                            ("SegmentationClass", ".png", Image.fromarray(np.ones((6, 8), np.uint8), "P"))):
      path = root / folder / f"{i}{ext}"
      path.parent.mkdir(parents=True, exist_ok=True)
      im.save(path)
  (root / "ImageSets/Segmentation").mkdir(parents=True)
  (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids))
  return root


def test_a_converter_never_writes_outside_out(tmp_path):
  """scripts/prepare_transfer.py refuses an id of an ImageSets list that leaves its folder (an id '../../../../X'
  would write a file outside --out), naming the list file and its line, and writes nothing there."""
  src, out = tmp_path / "src/VOC2012", tmp_path / "out/voc21"
  _voc(src, ["2007_000032", "../../../victim/X"])  # the second id's image: tmp_path/victim/X.jpg
  victim = tmp_path / "out/victim/X.png"  # where its label would be written: outside --out
  victim.parent.mkdir(parents=True)
  victim.write_bytes(b"precious")
  done = subprocess.run([sys.executable, "scripts/prepare_transfer.py", "--benchmark", "voc21", "--src", str(src),
                         "--out", str(out)], capture_output=True, text=True, check=False, cwd=REPO)
  assert done.returncode == 1, done.stderr
  assert done.stderr.strip() == (
      f"error: {src}/ImageSets/Segmentation/val.txt: line 2 (id '../../../victim/X'): file name "
      f"'../../../victim/X.jpg' leaves its folder; name files relative to {src}/JPEGImages (no leading '/', no '..' "
      f"that leaves it)")
  assert victim.read_bytes() == b"precious" and not (tmp_path / "out/victim/X.jpg").exists()
  assert transfer.prepare_voc(_voc(tmp_path / "clean", ["2007_000032"]), tmp_path / "out/clean") == 1


def test_prediction_files_outside_their_folder_are_refused(tmp_path):
  """evaluate_predictions.py --task panoptic: a PNG name of the prediction JSON follows the same rule."""
  ids = np.zeros((4, 4), np.int64)
  ids[:2] = 1
  for folder in ("gt", "pred"):
    (tmp_path / folder).mkdir()
    Image.fromarray(panoptic_ids.id_to_rgb(ids)).save(tmp_path / folder / "a.png")
  cats = [{"id": 1, "name": "cat", "isthing": 1}]
  segs = [{"id": 1, "category_id": 1}]
  gt = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": cats,
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segs}]}
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  pred = dict(gt, annotations=[{"image_id": 1, "file_name": "../gt/a.png", "segments_info": segs}])
  (tmp_path / "pred.json").write_text(json.dumps(pred))
  with pytest.raises(ValueError, match=f"^{tmp_path}/pred.json image_id 1: file name '../gt/a.png' leaves its folder"):
    panoptic.pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"),
                        str(tmp_path / "pred"))
  pred["annotations"][0]["file_name"] = "a.png"
  (tmp_path / "pred.json").write_text(json.dumps(pred))
  assert panoptic.pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"),
                             str(tmp_path / "pred"))["PQ"] == 100.0


def test_predict_out_that_is_a_file_is_an_error_before_loading_the_model(tmp_path):
  """Issue 24: `predict.py --out FILE` failed with NotADirectoryError after loading the model."""
  (tmp_path / "out.png").write_bytes(b"")
  with pytest.raises(ValueError, match=f"^--out {tmp_path}/out.png is a file; pass a folder"):
    predict.run(str(tmp_path / "no_export"), [str(tmp_path)], str(tmp_path / "out.png"))
