"""Instance mask AP and box AP through pycocotools' COCOeval, and COCO results encoding.

COCOeval is the reference [default: the COCO evaluation everyone reports]; this module only checks the
inputs, encodes predictions as COCO results (RLE masks, [x, y, w, h] boxes) and fills ground-truth boxes
from masks where a dataset has none.
"""
import contextlib
import copy
import io
import json
import os

import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_ground_truth(gt) -> coco_lib.COCO:
  """COCO object from a path or dict; annotations without 'bbox' get the tight box of their mask."""
  if isinstance(gt, coco_lib.COCO):
    return gt
  if isinstance(gt, (str, os.PathLike)):
    if not os.path.isfile(gt):
      raise FileNotFoundError(f"ground-truth JSON {gt} not found")
    with open(gt) as f:
      data = json.load(f)
  else:
    data = copy.deepcopy(gt)
  images = {im["id"]: im for im in data.get("images", [])}
  for ann in data.get("annotations", []):
    if "bbox" not in ann:
      im = images[ann["image_id"]]
      ann["bbox"] = mask_utils.toBbox(_to_rle(ann["segmentation"], im["height"], im["width"])).tolist()
    if "area" not in ann:
      ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    ann.setdefault("iscrowd", 0)
  coco = coco_lib.COCO()
  coco.dataset = data
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _to_rle(segm, h, w):
  if isinstance(segm, list):
    return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
  if isinstance(segm.get("counts"), list):
    return mask_utils.frPyObjects(segm, h, w)
  return segm


def encode_results(image_id, masks, scores, category_ids, transposed=False) -> list:
  """COCO results of one image: masks bool [K, H, W] -> RLE (counts as str), 'bbox' [x, y, w, h] (the masks'
  tight boxes), 'score', 'category_id'.

  With `transposed`, masks are [K, W, H] (each mask column-major, as `postprocess.infer_tasks` emits them):
  pycocotools encodes [H, W, K] in Fortran order, which is that array's memory, so a contiguous one is
  encoded without a copy (the copy costs 0.13 s for 100 masks of 1024 x 1024).
  """
  masks = np.asarray(masks, bool)
  if not len(masks):
    return []
  # one call for all K masks on [H, W, K] in Fortran order (bool viewed as uint8)
  hwk = masks.view(np.uint8).transpose(2, 1, 0) if transposed else masks.view(np.uint8).transpose(1, 2, 0)
  rles = mask_utils.encode(np.asfortranarray(hwk))
  bboxes = mask_utils.toBbox(rles).tolist()
  out = []
  for k, rle in enumerate(rles):
    rle["counts"] = rle["counts"].decode("ascii")
    out.append({"image_id": int(image_id), "category_id": int(category_ids[k]), "segmentation": rle,
                "bbox": bboxes[k], "score": float(scores[k])})
  return out


def check_results(gt: coco_lib.COCO, results: list, where: str) -> None:
  """Errors naming `where` and the offending entry for unknown image or category ids."""
  images, cats = set(gt.getImgIds()), set(gt.getCatIds())
  for i, r in enumerate(results):
    for key in ("image_id", "category_id", "score"):
      if key not in r:
        raise ValueError(f"{where}: result {i} has no {key!r}")
    if r["image_id"] not in images:
      raise ValueError(f"{where}: result {i} has image_id {r['image_id']}, not in the ground truth")
    if r["category_id"] not in cats:
      raise ValueError(f"{where}: result {i} (image_id {r['image_id']}) has category_id {r['category_id']}, "
                       f"unknown to the ground truth")


def coco_evaluate(gt, results, iou_type: str = "segm", where: str = "results", image_ids=None) -> dict:
  """COCOeval `iou_type` ('segm' or 'bbox') of `results` (list, or a results JSON path) against `gt`, on the
  images `image_ids` (default: every image of `gt`; an evaluation of part of a split passes the images it
  predicted, as detectron2's COCOEvaluator does, so that the others do not count as missed).

  Returns {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'} on the 0-100 scale, without the entries COCOeval leaves
  undefined (its -1: no ground truth in that area range, e.g. APl of a split without large objects), so that no
  writer logs -1 as a score.

  A result with a 'segmentation' is scored by its mask alone, its 'bbox' dropped (as detectron2 does): pycocotools'
  `loadRes` takes the area of a result that has a 'bbox' from the box (w * h), not from the mask, and the area
  decides whether a detection counts in APs, APm or APl; AP, AP50 and AP75 are the same either way.
  """
  if iou_type not in ("segm", "bbox"):
    raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
  gt = load_ground_truth(gt)
  if isinstance(results, (str, os.PathLike)):
    where = str(results)
    if not os.path.isfile(results):
      raise FileNotFoundError(f"results JSON {results} not found")
    with open(results) as f:
      results = json.load(f)
  if not isinstance(results, list):
    raise ValueError(f"{where}: expected a list of COCO results")
  check_results(gt, results, where)
  if iou_type == "segm":
    missing = [i for i, r in enumerate(results) if "segmentation" not in r]
    if missing:
      raise ValueError(f"{where}: result {missing[0]} has no 'segmentation'; use --iou_type bbox")
  else:
    missing = [i for i, r in enumerate(results) if "bbox" not in r]
    if missing:
      raise ValueError(f"{where}: result {missing[0]} has no 'bbox'; use --iou_type segm")
  drop = "bbox" if iou_type == "segm" else "segmentation"  # as detectron2: loadRes prefers 'bbox'
  results = [{k: v for k, v in r.items() if k != drop} for r in results]
  with contextlib.redirect_stdout(io.StringIO()):
    if results:
      dt = gt.loadRes(copy.deepcopy(results))
    else:
      dt = coco_lib.COCO()
      dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
      dt.createIndex()
    ev = cocoeval.COCOeval(gt, dt, iou_type)
    if image_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in image_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return {name: float(v) * 100.0 for name, v in zip(STAT_NAMES, ev.stats[:6]) if v >= 0}
