"""Evaluation never scores bad input silently: an undecodable val image is an error naming it, or (config) a counted
skip scored as missed; prediction files that cannot be scored are errors naming the file and the entry."""
import json
import pathlib
import re
import shutil
import sys

import numpy as np
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import evaluate_predictions  # noqa: E402
import test_eval_evaluator as evaluation_tests  # noqa: E402
from dataseg_jax import panoptic_ids  # noqa: E402
from dataseg_jax.evaluation import evaluator  # noqa: E402
from dataseg_jax.evaluation import instance  # noqa: E402
from dataseg_jax.evaluation import panoptic  # noqa: E402
from scripts import make_toy_data  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  make_toy_data.write(str(root), train=2, val=4, size=64, seed=0)
  return root


def _broken(toy, tmp_path, datasets, policy):
  """A copy of the toy data whose first val image of toy_ade and toy_o365 is truncated, and a config evaluating
  `datasets` with config.eval.on_bad_example=`policy`; -> (config, {dataset: truncated file})."""
  root = tmp_path / "toy"
  shutil.copytree(toy, root)
  broken = {}
  for name, folder in (("toy_ade", "toy_ade/images/validation"), ("toy_o365", "toy_o365/val")):
    jpg = sorted((root / folder).glob("*.jpg"))[0]
    jpg.write_bytes(jpg.read_bytes()[:300])
    broken[name] = jpg
  c = evaluation_tests.eval_config(root)
  c.data.datasets = {n: c.data.datasets[n] for n in datasets}
  c.eval.on_bad_example = policy
  return c, broken


def _evaluate(c, workdir):
  vocab, emb, model, variables = evaluation_tests.stand_in(c)
  return evaluator.evaluate(c, variables, vocab, emb, str(workdir), 3, model=model)


@pytest.mark.parametrize("dataset", ["toy_o365", "toy_ade"])
def test_an_undecodable_val_image_is_an_error_naming_it(toy, tmp_path, dataset):
  """Issue 24: eval.py dropped a val image that did not decode without a word, and COCOeval then covered only the
  predicted image ids, so its ground truth never counted as missed."""
  c, broken = _broken(toy, tmp_path, [dataset], "error")
  with pytest.raises(ValueError, match=f"^{dataset}/val: an example does not decode: {broken[dataset]}: .* Fix or "
                                       r"remove the file, or set config.eval.on_bad_example='skip' to count it and "
                                       "score its ground truth as missed$"):
    _evaluate(c, tmp_path / "work")


def test_with_skip_an_undecodable_val_image_is_counted_and_its_ground_truth_scored_as_missed(toy, tmp_path):
  c, broken = _broken(toy, tmp_path, ["toy_ade", "toy_o365"], "skip")
  metrics = _evaluate(c, tmp_path / "work")
  assert metrics["toy_ade/skipped_images"] == 1 and metrics["toy_o365/skipped_images"] == 1
  out = tmp_path / "work/eval/3"
  # instance: COCOeval over every val image, the skipped one's ground truth included (missed)
  gt = str(pathlib.Path(c.data_dir) / c.data.datasets.toy_o365.val_instances)
  results = str(out / "toy_o365/instance_results.json")
  everything = instance.coco_evaluate(gt, results, "segm")["AP"]
  predicted = {r["image_id"] for r in json.loads(pathlib.Path(results).read_text())}
  assert metrics["toy_o365/instance/AP"] == pytest.approx(everything, abs=1e-9)
  # semantic: the skipped image's labelled pixels count as unpredicted (an all-void ADE prediction PNG)
  labels = pathlib.Path(c.data_dir) / c.data.datasets.toy_ade.val_annotations
  missed = out / "toy_ade/semantic" / (broken["toy_ade"].stem + ".png")
  assert not missed.exists()
  Image.fromarray(np.zeros(np.array(Image.open(labels / missed.name)).shape, np.uint8)).save(missed)
  k = len((pathlib.Path(c.data_dir) / "toy_ade/names.txt").read_text().split())
  files = evaluate_predictions.evaluate_semantic(str(labels), str(out / "toy_ade/semantic"), k, reduce_zero_label=True)
  assert metrics["toy_ade/semantic/mIoU"] == pytest.approx(files["mIoU"], abs=1e-9)
  assert metrics["toy_ade/semantic/pixel_acc"] == pytest.approx(files["pixel_acc"], abs=1e-9)
  assert len(predicted) == 3  # the skipped image has no prediction, yet its ground truth was scored


def _gt():
  """A ground truth of one 4 x 5 image with one instance of category 1."""
  from pycocotools import mask as mask_utils
  m = np.zeros((4, 5), np.uint8)
  m[1:3, 1:4] = 1
  rle = mask_utils.encode(np.asfortranarray(m))
  rle["counts"] = rle["counts"].decode()
  return {"images": [{"id": 1, "height": 4, "width": 5, "file_name": "a.jpg"}],
          "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                           "area": 6.0, "bbox": [1, 1, 3, 2]}]}


def _result(**changes):
  r = {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": dict(_gt()["annotations"][0]["segmentation"]),
       "bbox": [1.0, 1.0, 3.0, 2.0]}
  r.update(changes)
  return r


@pytest.mark.parametrize("result,iou_type,message", [
    (_result(segmentation={"size": [4, 5], "counts": "garbage!!"}), "segm",
     r"has RLE counts that do not decode; encode masks with pycocotools.mask.encode"),
    (_result(segmentation={"size": [4, 5], "counts": "0"}), "segm",
     r"has an RLE whose runs cover 0 pixels but its size 4 x 5 has 20"),
    (_result(segmentation={"size": [8, 8], "counts": _result()["segmentation"]["counts"]}), "segm",
     r"has an RLE of size \[8, 8\] but its image is \[4, 5\] \(height, width\); encode the mask at the image's size"),
    (_result(segmentation=[[1, 1, 2]]), "segm", r"has a 'segmentation' list that is not polygons"),
    (_result(segmentation={"size": 20, "counts": "0"}), "segm",
     r"has an RLE size 20; it is \[height, width\] in pixels"),
    (_result(score=float("nan")), "segm", r"has score nan; scores are finite numbers"),
    (_result(score="high"), "bbox", r"has score 'high'; scores are finite numbers"),
    (_result(image_id="1"), "segm", r"has image_id '1' \(str\); ids are integers, as in the ground truth's images"),
    (_result(category_id="1"), "segm",
     r"has category_id '1' \(str\); ids are integers, as in the ground truth's categories"),
    (_result(category_id=7), "segm", r"has category_id 7, unknown to the ground truth; map predictions to the"),
    (_result(image_id=9), "bbox", r"has image_id 9, unknown to the ground truth"),
    (_result(bbox=[1, 1, float("nan"), 2]), "bbox", r"has bbox \[1, 1, nan, 2\]; boxes are \[x, y, width, height\]"),
    ({k: v for k, v in _result().items() if k != "segmentation"}, "segm",
     r"has no 'segmentation'; use --iou_type bbox"),
    ("not a result", "segm", r"is not an object"),
])
def test_instance_results_that_cannot_be_scored_are_errors_naming_the_entry(tmp_path, result, iou_type, message):
  """Issue 24: garbage RLE, RLE of the wrong size and NaN scores were scored; string ids gave a misleading 'unknown
  category' message."""
  path = tmp_path / "results.json"
  path.write_text(json.dumps([_result(), result]))
  with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: result 1( \(image_id [^)]*\))? {message}"):
    instance.coco_evaluate(_gt(), str(path), iou_type)
  path.write_text(json.dumps([_result()]))
  assert instance.coco_evaluate(_gt(), str(path), iou_type)["AP"] == pytest.approx(100.0)


def test_a_results_file_that_is_not_json_is_named(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("[{")
  with pytest.raises(ValueError, match=f"^{path} is not a valid JSON file"):
    instance.coco_evaluate(_gt(), str(path))


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_a_truncated_prediction_png_is_an_error_naming_it(tmp_path, task):
  """Issue 24: evaluate_predictions raised a bare OSError on a truncated prediction PNG."""
  ids = np.random.default_rng(0).integers(0, 2, (64, 64))
  for folder in ("gt", "pred"):
    (tmp_path / folder).mkdir()
    picture = panoptic_ids.id_to_rgb(ids) if task == "panoptic" else ids.astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / folder / "a.png")
  png = tmp_path / "pred/a.png"
  png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])
  with pytest.raises(ValueError, match=f"^{png}: the (label|panoptic) PNG does not decode"):
    if task == "semantic":
      evaluate_predictions.evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), 2)
    else:
      doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat", "isthing": 1}],
             "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 1, "category_id": 1}]}]}
      (tmp_path / "doc.json").write_text(json.dumps(doc))
      panoptic.pq_compute(str(tmp_path / "doc.json"), str(tmp_path / "gt"), str(tmp_path / "doc.json"),
                          str(tmp_path / "pred"))
