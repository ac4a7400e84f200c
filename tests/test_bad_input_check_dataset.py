"""scripts/check_dataset.py: clean data passes; each kind of bad input (issues 5 and 24) is reported with its file
and the fix; exit 1 on errors, 0 on warnings only. One row of `BAD` per kind."""
import json
import pathlib
import runpy
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import check_dataset  # noqa: E402  (defines no flags on import)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy")
  subprocess.run([sys.executable, str(REPO / "scripts/make_toy_data.py"), "--out", str(out), "--train", "4",
                  "--val", "2", "--size", "64"], check=True, capture_output=True, cwd=REPO, timeout=120)
  return out


def toy4(data_dir):
  c = runpy.run_path(str(REPO / "configs/toy4.py"))["get_config"]()
  c.data_dir = str(data_dir)
  return c


def run_script(data_dir, tmp_path, *extra):
  proc = subprocess.run([sys.executable, str(REPO / "scripts/check_dataset.py"), "--config",
                         str(REPO / "configs/toy4.py"), f"--config.data_dir={data_dir}", "--out", str(tmp_path / "ov"),
                         *extra], capture_output=True, text=True, cwd=REPO, timeout=300)
  return proc.returncode, proc.stdout + proc.stderr


# ------------------------------------------------------------------ one corruption per kind of bad input
def _first(folder, pattern="*"):
  return sorted(pathlib.Path(folder).glob(pattern))[0]


def _edit_json(path, fn):
  doc = json.loads(path.read_text())
  fn(doc)
  path.write_text(json.dumps(doc))


def truncated_image(d):
  jpg = _first(d / "toy_ade/images/training", "*.jpg")
  jpg.write_bytes(jpg.read_bytes()[:200])
  return "toy_ade", "undecodable_image", jpg.name


def corrupt_image(d):
  jpg = _first(d / "toy_coco/val", "*.jpg")
  jpg.write_bytes(b"\x00garbage" * 50)
  return "toy_coco", "undecodable_image", jpg.name


def truncated_o365_image(d):
  jpg = _first(d / "toy_o365/train", "*.jpg")
  jpg.write_bytes(jpg.read_bytes()[:200])
  return "toy_o365", "undecodable_image", jpg.name


def label_outside_names(d):
  png = _first(d / "toy_ade/annotations/validation", "*.png")
  lab = np.array(Image.open(png))
  lab[0, :5] = 200  # toy_ade has 10 classes (values 1..10, 0 void)
  Image.fromarray(lab).save(png)
  return "toy_ade", "label_out_of_range", png.name


def label_other_size(d):
  png = _first(d / "toy_heldout/annotations/validation", "*.png")
  Image.open(png).resize((16, 16), Image.NEAREST).save(png)
  return "toy_heldout", "label_size_mismatch", png.name


def missing_label(d):
  png = _first(d / "toy_ade/annotations/training", "*.png")
  png.unlink()
  return "toy_ade", "missing_annotation", png.stem + ".jpg"


def unknown_category(d):
  path = d / "toy_o365/annotations/train.json"
  _edit_json(path, lambda doc: doc["annotations"].append(dict(doc["annotations"][0], id=10**6, category_id=999)))
  return "toy_o365", "unknown_category", "train.json image_id"


def zero_size_box(d):
  path = d / "toy_o365/annotations/val_instances.json"  # the val split of an entry with val_instances
  _edit_json(path, lambda doc: doc["annotations"].append(dict(doc["annotations"][0], id=10**6, bbox=[3, 3, 0, 5])))
  return "toy_o365", "degenerate_box", "val_instances.json image_id"


def negative_size_box(d):
  path = d / "toy_city/annotations/train_instances.json"
  _edit_json(path, lambda doc: doc["annotations"].append(dict(doc["annotations"][0], id=10**6, bbox=[9, 9, 4, -2])))
  return "toy_city", "degenerate_box", "train_instances.json image_id"


def one_point_polygon(d):
  path = d / "toy_city/annotations/train_instances.json"
  doc = json.loads(path.read_text())
  doc["annotations"][0]["segmentation"] = [[20, 20]]  # pycocotools cannot draw it
  path.write_text(json.dumps(doc))
  image = next(im for im in doc["images"] if im["id"] == doc["annotations"][0]["image_id"])
  return "toy_city", "bad_annotation", image["file_name"]


def box_outside_image(d):
  path = d / "toy_o365/annotations/train.json"
  _edit_json(path, lambda doc: doc["annotations"].append(dict(doc["annotations"][0], id=10**6, bbox=[500, 500, 9, 9])))
  return "toy_o365", "box_outside_image", "train.json image_id"


def image_missing_from_folder(d):
  jpg = _first(d / "toy_o365/val", "*.jpg")
  jpg.unlink()
  return "toy_o365", "missing_image_file", jpg.name


def panoptic_png_other_size(d):
  png = _first(d / "toy_ade/panoptic_val", "*.png")
  Image.open(png).resize((8, 8), Image.NEAREST).save(png)
  return "toy_ade", "bad_panoptic_png", png.name


def missing_folder(d):
  shutil.rmtree(d / "toy_coco/annotations/panoptic_train")
  return "toy_coco", "layout", "panoptic_train"


def nan_box(d):
  """Issue 24: passed as 'no problems' and trained as an image with no objects."""
  path = d / "toy_o365/annotations/train.json"
  _edit_json(path, lambda doc: doc["annotations"].append(dict(doc["annotations"][0], id=10**6,
                                                              bbox=[float("nan"), 3, 5, 5])))
  return "toy_o365", "nonfinite_box", "annotation 1000000 bbox [nan, 3, 5, 5] holds a NaN or infinite value"


def image_without_height(d):
  """Issue 24: a KeyError traceback."""
  path = d / "toy_o365/annotations/train.json"
  doc = json.loads(path.read_text())
  del doc["images"][0]["height"]
  path.write_text(json.dumps(doc))
  return "toy_o365", "missing_image_size", f"image_id {doc['images'][0]['id']} ({doc['images'][0]['file_name']}) has no"


def annotation_without_bbox(d):
  path = d / "toy_o365/annotations/train.json"
  _edit_json(path, lambda doc: doc["annotations"].append({"id": 10**6, "image_id": 1, "category_id": 1}))
  return "toy_o365", "malformed_annotation", "train.json annotations["


def file_name_outside_its_folder(d):
  """Issue 24: read from outside data_dir without a warning."""
  path = d / "toy_o365/annotations/train.json"
  doc = json.loads(path.read_text())
  outside = d / "outside.jpg"
  shutil.copy(d / "toy_o365/train" / doc["images"][0]["file_name"], outside)
  doc["images"][0]["file_name"] = "../../outside.jpg"
  path.write_text(json.dumps(doc))
  return "toy_o365", "path_outside_root", "file name '../../outside.jpg' leaves its folder"


def undecodable_label_png(d):
  """Issue 24: the message named the image, not its broken label PNG."""
  png = _first(d / "toy_ade/annotations/training", "*.png")
  png.write_bytes(png.read_bytes()[:60])
  return "toy_ade", "undecodable_label", f"{png} (the label of"


BAD = [truncated_image, corrupt_image, label_outside_names, label_other_size,
       missing_label, unknown_category, zero_size_box, negative_size_box, one_point_polygon, box_outside_image,
       image_missing_from_folder, panoptic_png_other_size, missing_folder, nan_box, image_without_height,
       annotation_without_bbox, file_name_outside_its_folder, undecodable_label_png]


@pytest.mark.parametrize("corrupt", BAD, ids=[f.__name__ for f in BAD])
def test_each_bad_input_is_an_error_naming_its_file(toy, tmp_path, corrupt):
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  dataset, reason, file_part = corrupt(data)
  lines = []
  errors, warnings = check_dataset.check(toy4(data), [dataset], str(tmp_path / "ov"), 1, echo=lines.append)
  report = "\n".join(lines)
  assert errors >= 1, report
  hits = [ln for ln in report.splitlines() if ln.strip().startswith(f"ERROR {reason}:")]
  assert hits and any(file_part in ln for ln in hits), report
  if reason != "layout":  # every message says what to do (layout: the expected layout and the config keys)
    assert any(w in hits[0] for w in ("fix", "Fix", "Add", "convert", "re-export", "regenerate", "drop")), hits[0]
  else:
    assert "Expected the COCO panoptic layout" in hits[0]


def test_empty_images_are_warnings_only(toy, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  path = data / "toy_o365/annotations/train.json"
  _edit_json(path, lambda doc: doc["images"].append(dict(doc["images"][0], id=10**6)))  # no annotations
  png = _first(data / "toy_ade/annotations/training", "*.png")
  Image.fromarray(np.zeros_like(np.array(Image.open(png)))).save(png)  # every pixel void
  lines = []
  errors, warnings = check_dataset.check(toy4(data), ["toy_o365", "toy_ade"], str(tmp_path / "ov"), 0,
                                         echo=lines.append)
  report = "\n".join(lines)
  assert (errors, warnings) == (0, 2), report
  assert "WARNING empty_annotations" in report and png.name in report and "image_id 1000000" in report


def test_counts_and_class_frequencies_match_the_files(toy, tmp_path):
  lines = []
  errors, warnings = check_dataset.check(toy4(toy), ["toy_o365", "toy_city"], str(tmp_path / "ov"), 2,
                                         echo=lines.append)
  assert (errors, warnings) == (0, 0)
  report = "\n".join(lines)
  for name, split, ann in (("toy_o365", "train", "train.json"), ("toy_city", "val", "val_instances.json")):
    doc = json.loads((toy / name / "annotations" / ann).read_text())
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    assert f"{name}/{split}: {len(doc['images'])} images, {len(doc['annotations'])} segments" in report
    freq = next(ln for ln in report.split(f"{name}/{split}:")[1].splitlines() if "class frequencies" in ln)
    for cid, n in zip(*np.unique([a["category_id"] for a in doc["annotations"]], return_counts=True)):
      assert f" {cats[cid]} {n}," in freq + ",", freq
  assert len(list((tmp_path / "ov").glob("toy_city_*.png"))) == 4


def test_grayscale_rgba_and_cmyk_images_are_no_problem(toy, tmp_path):
  """They are decoded as RGB (as detectron2 reads them), in training and here."""
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  for folder, mode in (("toy_o365/train", "L"), ("toy_city/train", "RGBA"), ("toy_ade/images/training", "CMYK")):
    jpg = _first(data / folder, "*.jpg")
    Image.open(jpg).convert(mode).save(jpg, format="PNG" if mode == "RGBA" else "JPEG")
  lines = []
  errors, _ = check_dataset.check(toy4(data), ["toy_o365", "toy_city", "toy_ade"], str(tmp_path / "ov"), 0,
                                  echo=lines.append)
  assert errors == 0, "\n".join(lines)


def test_script_exit_codes(toy, tmp_path):
  rc, out = run_script(toy, tmp_path)
  assert rc == 0, out
  assert "0 errors, 0 warnings" in out and "toy_heldout/val: 2 images" in out and "toy_heldout/train" not in out
  assert len(list((tmp_path / "ov").glob("*.png"))) == 4 * 3 + 5 * 2  # 3 per split, at most its images
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  _edit_json(data / "toy_o365/annotations/train.json", lambda doc: doc["images"].append(dict(doc["images"][0], id=7)))
  rc, out = run_script(data, tmp_path, "--dataset", "toy_o365")
  assert rc == 0 and "0 errors, 1 warnings" in out, out
  _, _, name = truncated_o365_image(data)
  rc, out = run_script(data, tmp_path, "--dataset", "toy_o365")
  assert rc == 1 and "ERROR undecodable_image" in out and name in out, out
  rc, out = run_script(data, tmp_path, "--dataset", "nope")
  assert rc == 1 and "nope is not in the config" in out


def test_names_that_clash_in_a_dataset_are_an_error(toy, tmp_path):
  """Two names of a names file that normalise to the same name stop training at the vocabulary; the check says so."""
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  names = data / "toy_ade/names.txt"
  lines = names.read_text().splitlines()
  names.write_text("\n".join(lines + [lines[0].upper()]) + "\n")  # a class more, named as the first
  out = []
  errors, _ = check_dataset.check(toy4(data), ["toy_ade"], str(tmp_path / "ov"), 0, echo=out.append)
  assert errors >= 1 and any("ERROR vocabulary" in line and f"names.txt: line {len(lines) + 1} {lines[0].upper()!r} "
                             f"duplicates line 1 {lines[0]!r}" in line for line in out), out


def test_an_annotation_file_that_is_not_json_is_named(toy, tmp_path):
  """Issue 24: 'Expecting value: line 1 column 1' with no file name."""
  data = tmp_path / "data"
  shutil.copytree(toy, data)
  (data / "toy_o365/annotations/train.json").write_text("<html>not found</html>")
  out = []
  errors, _ = check_dataset.check(toy4(data), ["toy_o365"], str(tmp_path / "ov"), 0, echo=out.append)
  assert errors >= 1 and any(
      "ERROR vocabulary" in line and f"{data}/toy_o365/annotations/train.json is not a valid JSON file (Expecting "
      "value: line 1 column 1 (char 0)); re-export or re-download the annotation file" in line for line in out), out
