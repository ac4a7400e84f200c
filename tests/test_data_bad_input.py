"""Bad input never passes silently: a clear error, or a counted and logged skip (config decides)."""
import json
import shutil

import numpy as np
from PIL import Image
import pytest

from data_pipelines import mixture
from data_pipelines import registry
import test_data_common as common


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
  return common.write_toy(tmp_path_factory.mktemp("toy"), train=12, val=4, size=64)


def _single(data_dir, name, policy, batch=4):
  config = common.toy_config(data_dir, batch=batch)
  config.data.datasets = {name: config.data.datasets[name]}
  config.data.on_bad_example = policy
  return config


@pytest.fixture
def broken_ade(clean_dir, tmp_path):
  """toy_ade with a truncated JPEG, a grayscale JPEG and an RGBA PNG among its 12 training images."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_ade", root / "toy_ade")
  imgs = root / "toy_ade/images/training"
  data = (imgs / "ADE_train_00000002.jpg").read_bytes()
  (imgs / "ADE_train_00000002.jpg").write_bytes(data[: len(data) // 3])
  Image.open(imgs / "ADE_train_00000005.jpg").convert("L").save(imgs / "ADE_train_00000005.jpg")
  rgba = Image.open(imgs / "ADE_train_00000009.jpg").convert("RGBA")
  (imgs / "ADE_train_00000009.jpg").unlink()
  rgba.save(imgs / "ADE_train_00000009.png")
  return root


def test_missing_directory_names_the_path_and_layout(tmp_path):
  config = _single(tmp_path, "toy_ade", "skip")
  with pytest.raises(FileNotFoundError, match=r"toy_ade/images/training.*ADEChallengeData2016 layout"):
    registry.build_index(config, "toy_ade", "train")
  config = _single(tmp_path, "toy_coco", "skip")
  with pytest.raises(FileNotFoundError, match=r"toy_coco/train.*COCO panoptic layout"):
    registry.build_index(config, "toy_coco", "train")


def test_corrupt_grayscale_rgba_images_are_counted_and_skipped(broken_ade):
  config = _single(broken_ade, "toy_ade", "skip")
  vocab = registry.build_vocab(config)
  it = mixture.TrainIterator(config, vocab)
  n = 0
  while it.get_state()["consumed"]["toy_ade"] < 12:  # one full epoch
    batch = next(it)
    n += len(batch["image"])
    assert batch["image"].shape[-1] == 3
  assert it.bad_counts["toy_ade"]["undecodable_or_invalid"] == 3
  assert it.get_state()["consumed"]["toy_ade"] == n + 3


def test_corrupt_image_is_an_error_naming_the_file(broken_ade):
  config = _single(broken_ade, "toy_ade", "error", batch=12)
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  with pytest.raises(ValueError, match=r"bad example.*ADE_train_0000000[259]"):
    next(it)


@pytest.fixture
def broken_o365(clean_dir, tmp_path):
  """toy_o365 whose train JSON has each kind of bad annotation."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_o365", root / "toy_o365")
  path = root / "toy_o365/annotations/train.json"
  data = json.loads(path.read_text())
  anns = data["annotations"]
  first = anns[0]["image_id"]
  anns[0] = dict(anns[0], category_id=999)                     # unknown category
  anns[1] = dict(anns[1], bbox=[5, 5, 0, 10])                  # zero width
  anns[2] = dict(anns[2], bbox=[5, 5, -3, 10])                 # negative width
  anns[3] = dict(anns[3], bbox=[500, 500, 10, 10])             # outside the image
  last = data["images"][-1]["id"]
  data["annotations"] = [a for a in anns if a["image_id"] != last]  # an image with no annotations
  path.write_text(json.dumps(data))
  return root, first, last


def test_bad_annotations_are_counted_with_skip(broken_o365):
  root, _, last = broken_o365
  config = _single(root, "toy_o365", "skip")
  index = registry.build_index(config, "toy_o365", "train")
  assert index.skipped["unknown_category"] == 1
  assert index.skipped["degenerate_box"] == 2
  assert index.skipped["box_outside_image"] == 1
  assert index.skipped["empty_annotations"] >= 1 and last not in index.image_ids
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  assert it.bad_counts["toy_o365"]["degenerate_box"] == 2
  batch = next(it)
  y0, x0, y1, x1 = np.moveaxis(batch["seg_box"][batch["seg_valid"]], -1, 0)
  assert ((y1 > y0) & (x1 > x0)).all()


@pytest.mark.parametrize("field,pattern", [("category", "unknown_category"), ("bbox", "degenerate_box")])
def test_bad_annotation_is_an_error_with_error_policy(broken_o365, field, pattern):
  root, _, _ = broken_o365
  path = root / "toy_o365/annotations/train.json"
  data = json.loads(path.read_text())
  keep = 0 if field == "category" else 1
  data["annotations"] = [a for i, a in enumerate(data["annotations"]) if i == keep or i > 3]
  path.write_text(json.dumps(data))
  config = _single(root, "toy_o365", "error")
  with pytest.raises(ValueError, match=pattern + r".*train.json image_id"):
    registry.build_index(config, "toy_o365", "train")


def test_panoptic_unknown_category_and_empty_image(clean_dir, tmp_path):
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_coco", root / "toy_coco")
  path = root / "toy_coco/annotations/panoptic_train.json"
  data = json.loads(path.read_text())
  data["annotations"][0]["segments_info"][0]["category_id"] = 12345
  data["annotations"][1]["segments_info"] = []
  path.write_text(json.dumps(data))
  index = registry.build_index(_single(root, "toy_coco", "skip"), "toy_coco", "train")
  assert index.skipped["unknown_category"] == 1 and index.skipped["empty_annotations"] == 1
  assert len(index) == 11
  with pytest.raises(ValueError, match="unknown_category.*category_id 12345"):
    registry.build_index(_single(root, "toy_coco", "error"), "toy_coco", "train")
