"""Metrics from prediction files against ground truth, with no model.

  python scripts/evaluate_predictions.py --task panoptic --gt_json G --gt_dir GD --pred_json P --pred_dir PD
  python scripts/evaluate_predictions.py --task semantic --gt_dir GD --pred_dir PD --num_classes K \
      [--ignore_label 255] [--reduce_zero_label]
  python scripts/evaluate_predictions.py --task instance --gt_json G --pred_json P [--iou_type segm|bbox]

Prints one JSON object on stdout (0-100 scale): panoptic PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st,
RQ_st; semantic mIoU, pixel_acc, mAcc, fwIoU; instance AP, AP50, AP75, APs, APm, APl (an AP that COCOeval leaves
undefined, -1, e.g. APl without large ground-truth objects, is left out).

Instance results with both a 'segmentation' and a 'bbox' (as eval.py writes them) are scored by their masks with
--iou_type segm and by their boxes with --iou_type bbox, the other key dropped, as detectron2 does. Passed raw to
pycocotools (`COCO.loadRes` of the file), a result's area comes from its 'bbox' (w * h) even for mask AP, which moves
detections between the small, medium and large ranges: AP, AP50 and AP75 agree, APs, APm and APl do not (toy_o365
after 100 toy steps: APs/APm 0.45/0.81 here, 0.86/0.59 raw).

Semantic files: one PNG per ground-truth PNG with the same name, class ids as pixel values. With
--reduce_zero_label both are in the ADE format (0 = void, k = class k - 1): ground-truth 0 is ignored and
a predicted 0 on a labelled pixel counts as a miss.
"""
import json
import os
import sys

from absl import flags
import numpy as np
from PIL import Image

from dataseg_jax import cli

TASKS = ("panoptic", "semantic", "instance")
NEEDS = {"panoptic": ("gt_json", "gt_dir", "pred_json", "pred_dir"), "semantic": ("gt_dir", "pred_dir", "num_classes"),
         "instance": ("gt_json", "pred_json")}


def read_label_png(path) -> np.ndarray:
  """Single-channel label PNG -> int64 [H, W], with an error naming a file that is missing or does not decode."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"label PNG {path} not found")
  try:
    with Image.open(path) as img:
      if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"{path}: expected a single-channel label PNG, got mode {img.mode}")
      return np.array(img).astype(np.int64)
  except (OSError, SyntaxError) as e:  # PIL: not an image, truncated
    raise ValueError(f"{path}: the label PNG does not decode ({e}); write it again") from None


def evaluate_semantic(gt_dir, pred_dir, num_classes, ignore_label=255, reduce_zero_label=False) -> dict:
  """mIoU, pixel_acc, mAcc, fwIoU of the PNGs of `pred_dir` against same-named PNGs of `gt_dir`."""
  from dataseg_jax.evaluation import semantic  # pylint: disable=g-import-not-at-top  # imports flax
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"ground-truth folder {gt_dir} not found")
  names = sorted(f for f in os.listdir(gt_dir) if f.lower().endswith(".png"))
  if not names:
    raise FileNotFoundError(f"no PNG in the ground-truth folder {gt_dir}")
  metric = semantic.SemanticConfusion.empty(num_classes)
  for name in names:
    pred_path = os.path.join(pred_dir, name)
    if not os.path.isfile(pred_path):
      raise FileNotFoundError(f"prediction {pred_path} is missing for ground truth {os.path.join(gt_dir, name)}")
    gt = read_label_png(os.path.join(gt_dir, name))
    pred = read_label_png(pred_path)
    if gt.shape != pred.shape:
      raise ValueError(f"{pred_path} is {pred.shape} but its ground truth is {gt.shape}")
    if reduce_zero_label:
      gt = np.where(gt == 0, ignore_label, gt - 1)
      pred = pred - 1
    try:
      metric = metric.merge(semantic.SemanticConfusion.from_model_output(pred, gt, num_classes, ignore_label))
    except ValueError as e:
      raise ValueError(f"{pred_path}: {e}") from None
  return metric.compute()


def evaluate(task: str, gt_json=None, gt_dir=None, pred_json=None, pred_dir=None, num_classes=None, ignore_label=255,
             reduce_zero_label=False, iou_type="segm") -> dict:
  """The metrics of `task` (module docstring); ValueError naming the flags the task needs that are missing."""
  from dataseg_jax.evaluation import instance, panoptic  # pylint: disable=g-import-not-at-top

  given = {"gt_json": gt_json, "gt_dir": gt_dir, "pred_json": pred_json, "pred_dir": pred_dir,
           "num_classes": num_classes}
  missing = [f"--{k}" for k in NEEDS[task] if given[k] is None]
  if missing:
    raise ValueError(f"--task {task} needs {' '.join(missing)}")
  if task == "panoptic":
    out = panoptic.pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    out.pop("per_category")
    return out
  if task == "semantic":
    return evaluate_semantic(gt_dir, pred_dir, num_classes, ignore_label, reduce_zero_label)
  return instance.coco_evaluate(gt_json, pred_json, iou_type)


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import the functions without them."""
  flags.DEFINE_enum("task", None, list(TASKS), "Which metrics: panoptic (PQ), semantic (mIoU) or instance (AP).")
  flags.DEFINE_string("gt_json", None, "panoptic: the COCO panoptic JSON; instance: the COCO instances JSON.")
  flags.DEFINE_string("gt_dir", None, "panoptic: the folder of ground-truth panoptic PNGs; semantic: of ground-truth "
                      "label PNGs.")
  flags.DEFINE_string("pred_json", None, "panoptic: the predicted COCO panoptic JSON; instance: a COCO results JSON "
                      "(a list of {image_id, category_id, segmentation and/or bbox, score}).")
  flags.DEFINE_string("pred_dir", None, "panoptic: the folder of predicted panoptic PNGs; semantic: of predicted "
                      "label PNGs named as the ground truth.")
  flags.DEFINE_integer("num_classes", None, "semantic: number of classes K (labels 0..K-1).")
  flags.DEFINE_integer("ignore_label", 255, "semantic: ground-truth value that is not scored.")
  flags.DEFINE_boolean("reduce_zero_label", False, "semantic: ADE format in both folders, 0 = void and k = class "
                       "k - 1.")
  flags.DEFINE_enum("iou_type", "segm", ["segm", "bbox"], "instance: mask AP (segm; each result's 'bbox' dropped) "
                    "or box AP (bbox).")
  flags.mark_flags_as_required(["task"])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    result = evaluate(f.task, f.gt_json, f.gt_dir, f.pred_json, f.pred_dir, f.num_classes, f.ignore_label,
                      f.reduce_zero_label, f.iou_type)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
