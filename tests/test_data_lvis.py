"""The lvis format (data_pipelines/formats/lvis.py), the worked example of adding a format: a tiny LVIS JSON over
a COCO-style root, read through the registry into the batches of the same annotations written as coco_instances,
and its evaluation ground truth."""
import json

import numpy as np
from PIL import Image
import pytest

from data_pipelines import formats
from data_pipelines import mixture
from data_pipelines import registry
from dataseg_jax import config as config_lib
from dataseg_jax import contract
import test_data_common as common

H, W = 48, 64
CATEGORIES = [{"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "frequency": "c"},
              {"id": 3, "name": "apple", "synonyms": ["apple"], "frequency": "f"}]


def _box_polygon(x, y, w, h):
  return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_lvis(root):
  """A COCO root with train2017/ and val2017/ images and one LVIS JSON over both (LVIS val mixes them), plus the
  same annotations as a coco_instances JSON (file_name instead of coco_url)."""
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for k, (folder, stem) in enumerate((("train2017", "000000000009"), ("val2017", "000000000139"),
                                      ("train2017", "000000000025")), start=1):
    (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)).save(root / folder / f"{stem}.jpg")
    images.append({"id": k, "height": H, "width": W, "coco_url": f"http://images.cocodataset.org/{folder}/{stem}.jpg",
                   "not_exhaustive_category_ids": [3], "neg_category_ids": [1] if k == 2 else []})
    for j, (cat, box) in enumerate(((1, (4, 6, 20 + k, 14)), (3, (30, 10, 12, 20 + k)))):
      annotations.append({"id": 10 * k + j, "image_id": k, "category_id": cat, "bbox": list(box),
                          "area": box[2] * box[3], "segmentation": _box_polygon(*box)})
  lvis = {"images": images, "annotations": annotations, "categories": CATEGORIES}
  (root / "lvis_v1_train.json").write_text(json.dumps(lvis))
  coco = dict(lvis, images=[{"id": im["id"], "height": H, "width": W,
                             "file_name": "/".join(im["coco_url"].split("/")[-2:])} for im in images])
  (root / "coco_instances_train.json").write_text(json.dumps(coco))


def lvis_config(root, fmt="lvis", json_name="lvis_v1_train.json", task="instance"):
  c = common.toy_config(root, batch=2)
  c.data.datasets = {"tiny_lvis": config_lib.dataset_entry(
      format=fmt, task=task, train_images=".", train_annotations=json_name, val_images=".",
      val_annotations=json_name, ratio=1.0, eval_tasks=("instance",))}
  return c


@pytest.fixture(scope="module")
def lvis_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco")
  write_lvis(root)
  return root


def test_lvis_images_are_found_by_their_coco_url_in_both_coco_folders(lvis_root):
  index = registry.build_index(lvis_config(lvis_root), "tiny_lvis", "val")
  assert index.format == "lvis" and len(index) == 3
  assert [p.split("/")[-2] for p in index.image_paths] == ["train2017", "val2017", "train2017"]
  assert list(index.vocab.names) == ["aerosol_can", "apple"] and all(index.vocab.is_thing)


@pytest.mark.parametrize("task", ["instance", "box"])
def test_lvis_batches_equal_those_of_the_same_annotations_as_coco_instances(lvis_root, task):
  def batches(c):
    it = mixture.TrainIterator(c, registry.build_vocab(c))
    return [next(it) for _ in range(3)]

  got = batches(lvis_config(lvis_root, task=task))
  want = batches(lvis_config(lvis_root, "coco_instances", "coco_instances_train.json", task))
  for g, w in zip(got, want):
    assert (g["seg_has_mask"][g["seg_valid"]]).all() == (task == "instance")
    assert ((g["segment_map"] != contract.VOID).any()) == (task == "instance")
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_lvis_evaluation_ground_truth_and_tasks(lvis_root):
  from dataseg_jax.evaluation import instance  # pylint: disable=g-import-not-at-top  # pycocotools
  c = lvis_config(lvis_root)
  assert config_lib.eval_tasks(c, "tiny_lvis") == ("instance",)
  e = registry.resolve_entry(c, "tiny_lvis")
  index = registry.build_index(c, "tiny_lvis", "val")
  gt = formats.get("lvis").ground_truth(e, index, index.vocab, instance.load_ground_truth(e.val_annotations))
  assert gt.category_ids == [1, 3] and [x["name"] for x in gt.categories] == ["aerosol_can", "apple"]
  c.data.datasets.tiny_lvis.eval_tasks = ("instance", "semantic")
  with pytest.raises(ValueError, match="tiny_lvis.eval_tasks: a lvis dataset supports only 'instance'"):
    config_lib.eval_tasks(c, "tiny_lvis")


def test_an_unknown_format_lists_the_known_ones_lvis_included():
  with pytest.raises(ValueError, match=r"config.data.datasets.x.format: 'lvis_v2' is not one of \(.*'lvis'"):
    formats.get("lvis_v2", "config.data.datasets.x.format")
