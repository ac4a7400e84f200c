"""scripts/check_dataset.py: clean data passes; each kind of bad input is reported with its file, exit 1."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy")
  subprocess.run([sys.executable, str(REPO / "scripts/make_toy_data.py"), "--out", str(out), "--train", "4",
                  "--val", "2", "--size", "64"], check=True, capture_output=True, cwd=REPO, timeout=120)
  return out


def check(data_dir, tmp_path, *extra):
  proc = subprocess.run([sys.executable, str(REPO / "scripts/check_dataset.py"), "--config",
                         str(REPO / "configs/toy.py"), f"--config.data_dir={data_dir}", "--out", str(tmp_path / "ov"),
                         *extra], capture_output=True, text=True, cwd=REPO, timeout=300)
  return proc.returncode, proc.stdout


def test_clean_toy_data_passes_and_writes_overlays(toy, tmp_path):
  rc, out = check(toy, tmp_path)
  assert rc == 0, out
  assert "0 errors" in out and "toy_o365/train: 4 images" in out
  assert len(list((tmp_path / "ov").glob("*.png"))) >= 7


def test_each_bad_input_is_reported_with_its_file(toy, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(toy, bad)
  jpg = sorted((bad / "toy_ade/images/training").glob("*.jpg"))[0]
  jpg.write_bytes(jpg.read_bytes()[:200])  # truncated image
  ann = bad / "toy_o365/annotations/train.json"
  doc = json.loads(ann.read_text())
  first = doc["annotations"][0]
  doc["annotations"].append(dict(first, id=10**6, category_id=999))  # unknown category
  doc["annotations"].append(dict(first, id=10**6 + 1, bbox=[3, 3, 0, 5]))  # zero-width box
  doc["images"].append(dict(doc["images"][0], id=10**6, file_name=doc["images"][0]["file_name"]))  # no annotations
  ann.write_text(json.dumps(doc))
  rc, out = check(bad, tmp_path, "--dataset", "toy_o365")
  assert rc == 1, out
  assert "unknown_category" in out and "999" in out
  assert "degenerate_box" in out
  assert "WARNING empty_annotations" in out
  rc, out = check(bad, tmp_path, "--dataset", "toy_ade")
  assert rc == 1, out
  assert "undecodable_or_invalid" in out and jpg.name in out


def test_missing_folder_names_the_path_and_layout(toy, tmp_path):
  rc, out = check(tmp_path / "nowhere", tmp_path, "--dataset", "toy_coco")
  assert rc == 1
  assert "nowhere" in out and "layout" in out
