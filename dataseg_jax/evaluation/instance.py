"""Instance mask AP and box AP through pycocotools' COCOeval, and COCO results encoding.

COCOeval is the reference [default: the COCO evaluation everyone reports]; this module only checks the
inputs, encodes predictions as COCO results (RLE masks, [x, y, w, h] boxes) and fills ground-truth boxes
from masks where a dataset has none. pycocotools scores what it is given, garbage included (an RLE whose counts do not
cover its size decodes to whatever memory holds), so every result is checked first (`result_problem`): integer
image and category ids of the ground truth, a finite score, and a mask (RLE of the image's size whose run lengths
cover it exactly, or polygons) or a box of four finite numbers; the error names the file and the result.
"""
import contextlib
import copy
import io
import json
import math
import numbers
import os

import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

from data_pipelines import readers

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_ground_truth(gt) -> coco_lib.COCO:
  """COCO object from a path or dict; annotations without 'bbox' get the tight box of their mask."""
  if isinstance(gt, coco_lib.COCO):
    return gt
  if isinstance(gt, (str, os.PathLike)):
    data = readers.read_json(gt, "ground-truth")
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


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def rle_counts(counts) -> np.ndarray | None:
  """Run lengths int64 [n] of a COCO RLE `counts` (a list, or the compressed string of pycocotools'
  `rleToString`), or None when they do not decode. The string holds 5 bits a character (offset 48), 0x20 = another
  character follows, 0x10 of a number's last character its sign, and from the fourth on each number is a difference
  to the one two before (maskApi.c `rleFrString`), decoded here with numpy (a Python loop took 0.6 ms a mask)."""
  if isinstance(counts, list):
    ints = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
    return np.asarray(counts, np.int64) if ints else None
  data = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
  if not isinstance(data, bytes):
    return None
  c = np.frombuffer(data, np.uint8).astype(np.int64) - 48
  if not len(c):
    return np.zeros(0, np.int64)
  more = (c & 0x20) != 0
  if (c < 0).any() or (c > 63).any() or more[-1]:
    return None
  ends = np.flatnonzero(~more)
  starts = np.concatenate([[0], ends[:-1] + 1])
  k = np.arange(len(c)) - np.repeat(starts, ends - starts + 1)  # character index within its number
  if k.max() > 11:  # no run of an image fits in more than 12 characters (60 bits)
    return None
  x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
  x = np.where(c[ends] & 0x10, x | (-1 << (5 * (k[ends] + 1))), x)
  out = x.copy()
  out[1::2] = np.cumsum(x[1::2])  # number i > 2 adds number i - 2
  out[2::2] = np.cumsum(x[2::2])
  return out


def _mask_problem(segm, size) -> str | None:
  """What is wrong with a result's 'segmentation' for an image of `size` (height, width), or None."""
  if isinstance(segm, list):
    if not segm or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
                           for p in segm):
      return "has a 'segmentation' list that is not polygons [[x0, y0, x1, y1, x2, y2, ...], ...] of finite numbers"
    return None
  if not isinstance(segm, dict) or "size" not in segm or "counts" not in segm:
    return "has a 'segmentation' that is neither an RLE {'size': [h, w], 'counts': ...} nor polygons"
  rle_size = segm["size"]
  if not (isinstance(rle_size, (list, tuple)) and len(rle_size) == 2 and all(_is_int(v) and v >= 0 for v in rle_size)):
    return f"has an RLE size {rle_size!r}; it is [height, width] in pixels"
  if size is not None and list(rle_size) != list(size):
    return (f"has an RLE of size {list(segm['size'])} but its image is {list(size)} (height, width); encode the mask "
            "at the image's size")
  counts = rle_counts(segm["counts"])
  h, w = segm["size"]
  if counts is None or (counts < 0).any():
    return "has RLE counts that do not decode; encode masks with pycocotools.mask.encode"
  if counts.sum() != h * w:
    return (f"has an RLE whose runs cover {counts.sum()} pixels but its size {h} x {w} has {h * w}; encode masks with "
            "pycocotools.mask.encode")
  return None


def result_problem(r, images: dict, cats: set, iou_type: str) -> str | None:
  """What is wrong with one COCO result against the ground truth's `images` {id: (height, width) or None} and
  category ids `cats` for `iou_type`, with what to do, or None when it can be scored."""
  if not isinstance(r, dict):
    return "is not an object {'image_id', 'category_id', 'score', 'segmentation' or 'bbox'}"
  need = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
  missing = [k for k in need if k not in r]
  if missing:
    other = "--iou_type bbox" if "segmentation" in missing else "--iou_type segm" if "bbox" in missing else ""
    return f"has no {missing[0]!r}" + (f"; use {other}" if other and len(missing) == 1 else "")
  for key, ids, what in (("image_id", images, "images"), ("category_id", cats, "categories")):
    if not _is_int(r[key]):
      return (f"has {key} {r[key]!r} ({type(r[key]).__name__}); ids are integers, as in the ground truth's "
              f"{what}")
    if r[key] not in ids:
      return f"has {key} {r[key]}, unknown to the ground truth; map predictions to the ground truth's {what}"
  if not _is_number(r["score"]):
    return f"has score {r['score']!r}; scores are finite numbers"
  if iou_type == "segm":
    return _mask_problem(r["segmentation"], images[r["image_id"]])
  box = r["bbox"]
  if not isinstance(box, list) or len(box) != 4 or not all(map(_is_number, box)) or box[2] < 0 or box[3] < 0:
    return f"has bbox {box!r}; boxes are [x, y, width, height], four finite numbers, width and height >= 0"
  return None


def check_results(gt: coco_lib.COCO, results: list, where: str, iou_type: str = "segm") -> None:
  """ValueError naming `where`, the result and what to do for the first result that cannot be scored
  (`result_problem`)."""
  images = {im["id"]: (im["height"], im["width"]) if "height" in im and "width" in im else None
            for im in gt.dataset.get("images", [])}
  cats = set(gt.getCatIds())
  for i, r in enumerate(results):
    issue = result_problem(r, images, cats, iou_type)
    if issue:
      of = f" (image_id {r['image_id']!r})" if isinstance(r, dict) and "image_id" in r else ""
      raise ValueError(f"{where}: result {i}{of} {issue}")


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
    try:
      with open(results, "rb") as f:
        results = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{where} is not a valid JSON file ({e}); write the results with json.dump") from None
  if not isinstance(results, list):
    raise ValueError(f"{where}: expected a list of COCO results")
  check_results(gt, results, where, iou_type)
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
