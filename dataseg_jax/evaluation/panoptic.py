"""Panoptic quality (PQ, SQ, RQ; all, things, stuff), with panopticapi's `pq_compute` semantics.

Kirillov et al., "Panoptic Segmentation" (CVPR 2019), as implemented by cocodataset/panopticapi
`evaluation.py` [default: the reference implementation]. Per image:
- a predicted and a ground-truth segment of the same category match when IoU > 0.5, where the union
  leaves out the predicted pixels that fall on void (id 0) ground truth; crowd ground truth never matches;
- TP_c counts matches and sums their IoU; unmatched non-crowd ground truth is FN_c;
- an unmatched prediction is FP_c unless more than half of its area lies on void plus the crowd region
  of its own category.
Then PQ_c = sum IoU / (TP + FP/2 + FN/2), SQ_c = sum IoU / TP, RQ_c = TP / (TP + FP/2 + FN/2), averaged
over categories with TP + FP + FN > 0 (all, things only, stuff only), on the 0-100 scale. Where a
group has no such category the average is 0 (panopticapi divides by zero).
Ground-truth areas come from the JSON `area` field when present (as panopticapi does), else from the PNG.
PNG names in the JSON files follow the one path rule (`data_pipelines.paths`): relative and inside their folder.
"""
import json
import os

import numpy as np
from PIL import Image

from data_pipelines import paths
from dataseg_jax import panoptic_ids

OFFSET = panoptic_ids.MAX_ID + 1  # panopticapi's OFFSET: a (gt id, predicted id) pair is gt * OFFSET + pred
VOID = 0


class PQStat:
  """Per-category sums: IoU of matches, TP, FP, FN (float64 / int64 arrays indexed by category row)."""

  def __init__(self, categories: dict):
    """categories: {category id: {'isthing': 0/1, ...}} as in the ground-truth JSON."""
    self.categories = dict(categories)
    self.row = {cid: k for k, cid in enumerate(self.categories)}
    n = len(self.categories)
    self.iou = np.zeros(n, np.float64)
    self.tp = np.zeros(n, np.int64)
    self.fp = np.zeros(n, np.int64)
    self.fn = np.zeros(n, np.int64)

  def merge(self, other: "PQStat") -> "PQStat":
    for key in ("iou", "tp", "fp", "fn"):
      setattr(self, key, getattr(self, key) + getattr(other, key))
    return self

  def add_image(self, gt_ids, gt_segments, pred_ids, pred_segments, where: str = "") -> None:
    """Accumulates one image.

    Args:
      gt_ids, pred_ids: int [H, W] segment ids (0 void).
      gt_segments: list of {'id', 'category_id', 'iscrowd' (optional), 'area' (optional)}.
      pred_segments: list of {'id', 'category_id'}; areas are taken from `pred_ids`.
      where: names the image in error messages.
    """
    gt_ids = np.asarray(gt_ids, np.int64)
    pred_ids = np.asarray(pred_ids, np.int64)
    if gt_ids.shape != pred_ids.shape:
      raise ValueError(f"{where}: prediction is {pred_ids.shape[:2]} but the ground truth is {gt_ids.shape[:2]}")
    pred_segments = _check_prediction(pred_ids, pred_segments, self.row, where)
    gt_info = {int(s["id"]): s for s in gt_segments}
    gt_area_px = dict(zip(*np.unique(gt_ids, return_counts=True)))
    pred_area = {int(k): int(v) for k, v in zip(*np.unique(pred_ids, return_counts=True))}

    pairs, inter = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
    pair_gt, pair_pred = pairs // OFFSET, pairs % OFFSET
    void_inter = dict(zip(pair_pred[pair_gt == VOID].tolist(), inter[pair_gt == VOID].tolist()))

    gt_cat = {g: int(s["category_id"]) for g, s in gt_info.items()}
    gt_crowd = {g: int(s.get("iscrowd", 0)) for g, s in gt_info.items()}
    gt_area = {g: float(s["area"]) if "area" in s else float(gt_area_px.get(g, 0)) for g, s in gt_info.items()}
    pred_cat = {p: int(s["category_id"]) for p, s in pred_segments.items()}

    gt_matched, pred_matched = set(), set()
    for g, p, n in zip(pair_gt.tolist(), pair_pred.tolist(), inter.tolist()):
      if g not in gt_info or p not in pred_segments or gt_crowd[g] == 1 or gt_cat[g] != pred_cat[p]:
        continue
      union = pred_area[p] + gt_area[g] - n - void_inter.get(p, 0)
      iou = n / union
      if iou > 0.5:
        r = self.row[gt_cat[g]]
        self.tp[r] += 1
        self.iou[r] += iou
        gt_matched.add(g)
        pred_matched.add(p)

    crowd_of_cat = {}
    for g in gt_info:
      if g in gt_matched:
        continue
      if gt_crowd[g] == 1:
        crowd_of_cat[gt_cat[g]] = g
        continue
      self.fn[self.row[gt_cat[g]]] += 1

    pair_inter = dict(zip(zip(pair_gt.tolist(), pair_pred.tolist()), inter.tolist()))
    for p in pred_segments:
      if p in pred_matched:
        continue
      ignored = void_inter.get(p, 0)
      if pred_cat[p] in crowd_of_cat:
        ignored += pair_inter.get((crowd_of_cat[pred_cat[p]], p), 0)
      if ignored / pred_area[p] > 0.5:
        continue
      self.fp[self.row[pred_cat[p]]] += 1

  def average(self, isthing=None) -> dict:
    """{'PQ', 'SQ', 'RQ' (0-100), 'n'} over categories (isthing None: all; True: things; False: stuff)."""
    flags = np.array([bool(c.get("isthing", 1)) for c in self.categories.values()], bool)
    sel = np.ones(len(flags), bool) if isthing is None else flags == bool(isthing)
    denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
    sel &= (self.tp + self.fp + self.fn) > 0
    n = int(sel.sum())
    if n == 0:
      return {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "n": 0}
    pq = self.iou[sel] / denom[sel]
    sq = np.where(self.tp[sel] > 0, self.iou[sel] / np.maximum(self.tp[sel], 1), 0.0)
    rq = self.tp[sel] / denom[sel]
    return {"PQ": 100.0 * pq.sum() / n, "SQ": 100.0 * sq.sum() / n, "RQ": 100.0 * rq.sum() / n, "n": n}

  def summary(self) -> dict:
    """Flat dict: PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st (0-100)."""
    out = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
      avg = self.average(isthing)
      for key in ("PQ", "SQ", "RQ"):
        out[key + suffix] = float(avg[key])
    return out


def _check_prediction(pred_ids, pred_segments, category_rows, where) -> dict:
  """{id: segment} after checking the JSON segments against the PNG ids and the categories."""
  segs = {}
  for s in pred_segments:
    sid = int(s["id"])
    if sid in segs:
      raise ValueError(f"{where}: segment id {sid} is listed twice in segments_info")
    if int(s["category_id"]) not in category_rows:
      raise ValueError(f"{where}: segment id {sid} has category_id {s['category_id']}, unknown to the "
                       f"ground truth categories; map predictions to the ground-truth category ids")
    segs[sid] = s
  present = set(np.unique(pred_ids).tolist())
  missing = sorted(set(segs) - present)
  if missing:
    raise ValueError(f"{where}: segment ids {missing} are in segments_info but absent from the PNG")
  extra = sorted(present - set(segs) - {VOID})
  if extra:
    raise ValueError(f"{where}: segment ids {extra} are in the PNG but not in segments_info; list them "
                     f"or set those pixels to 0 (void)")
  return segs


def _load_json(path, what):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} JSON {path} not found")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{what} JSON {path} is not valid JSON ({e})") from None


def read_png_ids(path) -> np.ndarray:
  """Segment ids [H, W] of a COCO panoptic PNG, with an error naming a missing file or one that does not decode."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"panoptic PNG {path} not found")
  try:
    with Image.open(path) as im:
      return panoptic_ids.rgb_to_id(np.array(im.convert("RGB")))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"{path}: the panoptic PNG does not decode ({e}); write it again as an RGB PNG") from None


def index_annotations(data: dict, path: str) -> dict:
  """{image_id: annotation} of a COCO panoptic JSON; duplicate image ids are an error naming the file."""
  if "annotations" not in data:
    raise ValueError(f"{path} has no 'annotations' list; expected COCO panoptic format")
  out = {}
  for ann in data["annotations"]:
    iid = ann["image_id"]
    if iid in out:
      raise ValueError(f"{path}: image_id {iid} has more than one annotation; keep one per image")
    out[iid] = ann
  return out


def pq_compute(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str) -> dict:
  """PQ of prediction files against ground-truth files, both in COCO panoptic format.

  Returns the `PQStat.summary()` dict plus 'per_category' {category id: {'PQ', 'SQ', 'RQ'}}.
  Raises ValueError / FileNotFoundError naming the file and the image or segment id for: a missing PNG,
  a segment id in the JSON but not the PNG (or the reverse), duplicate image ids, a category id unknown
  to the ground truth, a ground-truth image without a prediction, or a prediction for an unknown image.
  """
  gt = _load_json(gt_json, "ground-truth")
  pred = _load_json(pred_json, "prediction")
  categories = {int(c["id"]): c for c in gt["categories"]}
  gt_anns = index_annotations(gt, gt_json)
  pred_anns = index_annotations(pred, pred_json)
  unknown = sorted(set(pred_anns) - set(gt_anns), key=str)
  if unknown:
    raise ValueError(f"{pred_json}: image_id {unknown[0]} is not in the ground truth {gt_json}")
  stat = PQStat(categories)
  for iid, gt_ann in gt_anns.items():
    if iid not in pred_anns:
      raise ValueError(f"{pred_json}: no prediction for image_id {iid} of the ground truth")
    p_ann = pred_anns[iid]
    pred_png = paths.inside(pred_dir, p_ann["file_name"], f"{pred_json} image_id {iid}")
    where = f"{pred_json} image_id {iid} ({pred_png})"
    if not os.path.isfile(pred_png):
      raise FileNotFoundError(f"{where}: the prediction PNG is missing")
    stat.add_image(read_png_ids(paths.inside(gt_dir, gt_ann["file_name"], f"{gt_json} image_id {iid}")),
                   gt_ann["segments_info"], read_png_ids(pred_png), p_ann["segments_info"], where)
  out = stat.summary()
  denom = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
  out["per_category"] = {
      cid: {"PQ": 100.0 * stat.iou[r] / denom[r] if denom[r] else 0.0,
            "SQ": 100.0 * stat.iou[r] / stat.tp[r] if stat.tp[r] else 0.0,
            "RQ": 100.0 * stat.tp[r] / denom[r] if denom[r] else 0.0}
      for cid, r in stat.row.items()}
  return out
