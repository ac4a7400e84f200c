"""Metrics from prediction files against ground truth, with no model.

  python scripts/evaluate_predictions.py --task panoptic --gt_json G --gt_dir GD --pred_json P --pred_dir PD
  python scripts/evaluate_predictions.py --task semantic --gt_dir GD --pred_dir PD --num_classes K \
      [--ignore_label 255] [--reduce_zero_label]
  python scripts/evaluate_predictions.py --task instance --gt_json G --pred_json P [--iou_type segm|bbox]

Prints one JSON object on stdout (0-100 scale): panoptic PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st,
RQ_st; semantic mIoU, pixel_acc, mAcc, fwIoU; instance AP, AP50, AP75, APs, APm, APl.

Semantic files: one PNG per ground-truth PNG with the same name, class ids as pixel values. With
--reduce_zero_label both are in the ADE format (0 = void, k = class k - 1): ground-truth 0 is ignored and
a predicted 0 on a labelled pixel counts as a miss.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

from dataseg_jax.evaluation import instance
from dataseg_jax.evaluation import panoptic
from dataseg_jax.evaluation import semantic


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


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", required=True, choices=("panoptic", "semantic", "instance"))
  p.add_argument("--gt_json")
  p.add_argument("--gt_dir")
  p.add_argument("--pred_json")
  p.add_argument("--pred_dir")
  p.add_argument("--num_classes", type=int)
  p.add_argument("--ignore_label", type=int, default=255)
  p.add_argument("--reduce_zero_label", action="store_true")
  p.add_argument("--iou_type", default="segm", choices=("segm", "bbox"))
  args = p.parse_args(argv)
  need = {"panoptic": ("gt_json", "gt_dir", "pred_json", "pred_dir"),
          "semantic": ("gt_dir", "pred_dir", "num_classes"),
          "instance": ("gt_json", "pred_json")}[args.task]
  missing = [f"--{k}" for k in need if getattr(args, k) is None]
  if missing:
    p.error(f"--task {args.task} needs {' '.join(missing)}")
  if args.task == "panoptic":
    out = panoptic.pq_compute(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir)
    out.pop("per_category")
  elif args.task == "semantic":
    out = evaluate_semantic(args.gt_dir, args.pred_dir, args.num_classes, args.ignore_label,
                            args.reduce_zero_label)
  else:
    out = instance.coco_evaluate(args.gt_json, args.pred_json, args.iou_type)
  return out


if __name__ == "__main__":
  try:
    result = main()
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result))
