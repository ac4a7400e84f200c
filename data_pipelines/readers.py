"""Native-format readers: turn a dataset folder or JSON into an `Index` of examples (pure Python).

Formats (one `Index` per split):
- `semantic_png`: ADEChallengeData2016 layout, `images/<split>/*.jpg` + `annotations/<split>/*.png`
  (same stem), one uint8 class id per pixel (grayscale value or palette index), 0 = void when
  `reduce_zero_label`. 8-bit only: a names file of more than 255 classes, or a 16-bit label PNG (checked
  on the split's first label), is an error here, since tf.data decodes labels as uint8 and larger ids
  would come out wrong; such benchmarks are written as `coco_panoptic` (`data_pipelines.transfer`).
- `coco_panoptic`: COCO panoptic JSON + RGB PNGs, segment id = R + 256 G + 256^2 B [COCO panoptic
  format]; `iscrowd` segments and id 0 are void.
- `coco_detection`: COCO-style JSON with `bbox` = [x, y, w, h] in pixels (Objects365 and any box
  set), used as box-only supervision.
- `coco_instances`: COCO instances JSON with polygon or RLE `segmentation` (weak-transfer evaluation).

The index holds paths and per-image annotation tables; pixels are decoded later in tf.data
(`data_pipelines.pipeline`). Bad input found here (an unknown category, an empty annotation list, a box that is
not four finite numbers, degenerate or outside its image, an image entry without its size, an annotation without a
required key, a missing file, a file name that is absolute or leaves its folder: `paths`) is an error or a
counted, logged skip, as `config.data.on_bad_example` (training) or `config.eval.on_bad_example` (evaluation) says
(`BadInput`); every message names the JSON and the image or annotation id.
"""
import collections
import dataclasses
import json
import math
import os
import pathlib

from absl import logging
import numpy as np
from PIL import Image

from data_pipelines import paths
from dataseg_jax.vocab import vocabulary

FORMATS = ("semantic_png", "coco_panoptic", "coco_detection", "coco_instances")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MAX_8BIT_CLASSES = 255  # semantic_png: values 1..255 with reduce_zero_label, 0..254 (255 void) without
_LAYOUT = {
    "semantic_png": ("ADEChallengeData2016 layout: <root>/images/{training,validation}/NAME.jpg and "
                     "<root>/annotations/{training,validation}/NAME.png (8-bit class ids, 0 = void)"),
    "coco_panoptic": ("COCO panoptic layout: <images dir>/FILE.jpg, panoptic_<split>.json and "
                      "panoptic_<split>/FILE.png (RGB-coded segment ids)"),
    "coco_detection": "COCO detection layout: <images dir>/FILE.jpg and a COCO JSON with 'bbox' annotations",
    "coco_instances": "COCO instances layout: <images dir>/FILE.jpg and a COCO JSON with 'segmentation'",
}


class BadInput:
  """Policy for bad input: `'error'` raises at once, `'skip'` counts and logs (first 5 per reason); `key` is the
  config key that sets the policy, for messages."""

  def __init__(self, policy: str, dataset: str, key: str = "config.data.on_bad_example"):
    if policy not in ("skip", "error"):
      raise ValueError(f"{key} must be 'skip' or 'error', got {policy!r}")
    self.policy, self.dataset, self.key = policy, dataset, key
    self.counts = collections.Counter()
    self.messages = []  # (reason, message) of every skipped item, for scripts/check_dataset.py

  def __call__(self, reason: str, where: str, fix: str) -> None:
    """Reports one bad item: `reason` (a short key), `where` (file, image, annotation), `fix` (advice)."""
    msg = f"{self.dataset}: {reason}: {where}. {fix}"
    if self.policy == "error":
      raise ValueError(msg + f" (or set {self.key}='skip' to count and skip such items)")
    self.counts[reason] += 1
    self.messages.append((reason, msg))
    if self.counts[reason] <= 5:
      logging.warning("skipped (%d so far): %s", self.counts[reason], msg)

  def log_summary(self, split: str) -> None:
    if self.counts:
      logging.warning("%s/%s: skipped at indexing: %s", self.dataset, split, dict(self.counts))


@dataclasses.dataclass
class Index:
  """Examples of one split. Per image r: `image_paths[r]`, `label_paths[r]` ('' when none),
  `image_ids[r]`, `sizes[r]` = (height, width) from the JSON (-1 when unknown), and the rows
  `seg_splits[r]:seg_splits[r+1]` of the per-segment tables: `seg_ids` (panoptic segment id),
  `seg_class` (dataset-local class index), `seg_crowd`, `boxes` [S, 4] pixel (x0, y0, x1, y1),
  `instance_anns` (coco_instances: the raw annotation dicts per image, for rasterising), and
  `panoptic_gt` (a semantic_png val split with `val_panoptic_annotations`: per image r a dict
  {'png': path, 'image_id': the JSON's id, 'segments_info': [{'id', 'category_id' (the JSON's),
  'class' (dataset-local index), 'iscrowd'}]}; read the pixels with `load_panoptic_gt`). `skip_messages`:
  (reason, message naming the file) of every item skipped while indexing (`BadInput.messages`)."""
  dataset: str
  format: str
  split: str
  vocab: vocabulary.DatasetVocab
  image_paths: list
  label_paths: list
  image_ids: np.ndarray
  sizes: np.ndarray
  seg_splits: np.ndarray
  seg_ids: np.ndarray
  seg_class: np.ndarray
  seg_crowd: np.ndarray
  boxes: np.ndarray
  instance_anns: list
  skipped: collections.Counter
  panoptic_gt: list = dataclasses.field(default_factory=list)
  skip_messages: list = dataclasses.field(default_factory=list)

  def __len__(self):
    return len(self.image_paths)


def require_dir(path, what: str, fmt: str) -> pathlib.Path:
  """The directory `path`, or FileNotFoundError naming it and the layout that format expects."""
  p = pathlib.Path(path)
  if not p.is_dir():
    raise FileNotFoundError(f"{what} directory {p} not found. Expected the {_LAYOUT[fmt]}. "
                            "Check config.data_dir and the dataset entry's paths; nothing is downloaded.")
  return p


def require_file(path, what: str, fmt: str) -> pathlib.Path:
  """The file `path`, or FileNotFoundError naming it and the layout that format expects."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what} file {p} not found. Expected the {_LAYOUT[fmt]}. "
                            "Check config.data_dir and the dataset entry's paths; nothing is downloaded.")
  return p


def read_json(path, what: str = "annotation") -> dict:
  """The JSON object in file `path`, or ValueError naming the file (and the line and column of a syntax error)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what} JSON {p} not found")
  try:
    data = json.loads(p.read_bytes())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{p} is not a valid JSON file ({e}); re-export or re-download the {what} file") from None
  if not isinstance(data, dict):
    raise ValueError(f"{p} holds a JSON {type(data).__name__}, not an object; expected a COCO-style {what} file "
                     "with 'images', 'annotations' and 'categories'")
  return data


def load_json(path, fmt: str) -> dict:
  """A COCO-style annotation JSON of format `fmt`, with its 'images', 'annotations' and 'categories' lists."""
  p = require_file(path, "annotation", fmt)
  data = read_json(p)
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise ValueError(f"{p} has no {key!r} list; expected the {_LAYOUT[fmt]}")
  return data


def coco_vocab(data: dict, fmt: str, names: list = None, source="the annotation JSON") -> tuple:
  """Categories sorted by id -> (DatasetVocab, {category id: local index}); `source` names the JSON in errors.

  `names` (from the entry's names file) renames the categories in that order when given.
  """
  for k, c in enumerate(data["categories"]):
    if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
      raise ValueError(f"{source}: categories[{k}] = {c!r} needs an integer 'id' and a 'name'; fix the category")
  cats = sorted(data["categories"], key=lambda c: c["id"])
  if not cats:
    raise ValueError(f"{source} lists no categories; add a 'categories' list")
  if names is not None and len(names) != len(cats):
    raise ValueError(f"the names file has {len(names)} names but {source} has {len(cats)} categories")
  vocab = vocabulary.DatasetVocab(
      tuple(names if names is not None else [c["name"] for c in cats]),
      tuple(bool(c.get("isthing", 1)) if fmt == "coco_panoptic" else True for c in cats))
  return vocab, {int(c["id"]): k for k, c in enumerate(cats)}


def _empty_tables(n_images):
  return dict(seg_splits=np.zeros(n_images + 1, np.int64), seg_ids=np.zeros(0, np.int32),
              seg_class=np.zeros(0, np.int32), seg_crowd=np.zeros(0, bool),
              boxes=np.zeros((0, 4), np.float32))


def _listdir(path) -> set:
  return set(os.listdir(path))


def _where(json_path, key: str, k: int, item) -> str:
  """'<json> <key>[k] (id <id>)': where entry k of a JSON list is, for messages."""
  ident = item.get("id") if isinstance(item, dict) else None
  return f"{json_path} {key}[{k}]" + (f" (id {ident})" if ident is not None else "")


def _has_keys(item, keys: tuple, locate, bad: "BadInput", kind: str) -> bool:
  """Whether JSON entry `item` (an image, annotation or segment) is an object holding `keys`; else reports it as
  bad input ('malformed_<kind>') naming the missing keys at `locate()` (a callable: the message is built only for
  bad entries, of millions)."""
  missing = [k for k in keys if not isinstance(item, dict) or k not in item]
  if missing:
    bad(f"malformed_{kind}", f"{locate()} has no {', '.join(repr(k) for k in missing)}",
        f"Add the key(s) to the {kind} entry (COCO format); the {kind} is skipped.")
  return not missing


def _json_file(folder: pathlib.Path, name, where: str, bad: "BadInput") -> pathlib.Path | None:
  """`folder / name` for a file name read from a JSON (`paths.inside`), or None after reporting it as bad input
  ('path_outside_root') when it is empty, absolute or leaves `folder`."""
  issue = paths.problem(name)
  if issue:
    bad("path_outside_root", f"{where}: file name {str(name)!r} {issue}",
        f"Fix the file name: relative to {folder}, with no leading '/' and no '..' that leaves it; the image is "
        "skipped.")
    return None
  return paths.inside(folder, name, where)


def box_problem(bbox) -> tuple | None:
  """(reason, what is wrong) of a COCO 'bbox' that is not four finite numbers [x, y, width, height] with
  width, height > 0, or None when it is fine."""
  if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
    return "malformed_box", "is not a list [x, y, width, height]"
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
    return "malformed_box", "holds a value that is not a number"
  if not all(math.isfinite(v) for v in bbox):
    return "nonfinite_box", "holds a NaN or infinite value"
  if bbox[2] <= 0 or bbox[3] <= 0:
    return "degenerate_box", "has width or height <= 0"
  return None


def image_size_problem(im: dict) -> str | None:
  """What is wrong with a COCO image entry's 'height' and 'width' (missing, not a positive number), or None."""
  for key in ("height", "width"):
    v = im.get(key)
    if v is None:
      return f"has no {key!r}"
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 1:
      return f"has {key} {v!r}, not a positive number of pixels"
  return None


def _present(folder: pathlib.Path, file_name: str, listing: set) -> bool:
  """Whether `folder/file_name` is a file: a look-up in the folder's `listing` for a plain name, a stat for a name
  with sub-folders (Objects365 v2's 'images/v1/patch8/objects365_v1_00420917.jpg')."""
  return file_name in listing if "/" not in file_name else (folder / file_name).is_file()


def read_semantic_png(dataset, split, images_dir, labels_dir, vocab, bad: BadInput,
                      panoptic: tuple = None) -> Index:
  """ADE-style folders: every image with a same-stem PNG label; unmatched images are bad input.

  `panoptic` = (COCO panoptic JSON, PNG dir) adds each image's panoptic ground truth (`Index.panoptic_gt`,
  matched by file stem); an image without it is bad input ('missing_panoptic_annotation').
  """
  images_dir = require_dir(images_dir, f"{split} images", "semantic_png")
  labels_dir = require_dir(labels_dir, f"{split} annotations", "semantic_png")
  labels = {os.path.splitext(f)[0]: f for f in _listdir(labels_dir) if f.lower().endswith(".png")}
  gt = _semantic_panoptic_gt(panoptic, vocab, bad) if panoptic else None
  image_paths, label_paths, panoptic_gt = [], [], []
  for f in sorted(_listdir(images_dir)):
    stem, ext = os.path.splitext(f)
    if ext.lower() not in IMAGE_EXTS:
      continue
    if stem not in labels:
      bad("missing_annotation", f"{images_dir / f} has no {labels_dir / (stem + '.png')}",
          "Add the label PNG or remove the image.")
      continue
    if gt is not None:
      if stem not in gt:
        bad("missing_panoptic_annotation", f"{images_dir / f} has no annotation in {panoptic[0]}",
            "Add its panoptic PNG and an 'annotations' entry, or remove the image; the image is skipped.")
        continue
      if gt[stem] is None:  # its PNG is missing, reported above
        continue
      panoptic_gt.append(gt[stem])
    image_paths.append(str(images_dir / f))
    label_paths.append(str(labels_dir / labels[stem]))
  if not image_paths:
    raise FileNotFoundError(f"no image/label pairs in {images_dir} and {labels_dir}; expected the "
                            f"{_LAYOUT['semantic_png']}")
  _require_8bit_labels(vocab, label_paths[0])
  n = len(image_paths)
  bad.log_summary(split)
  return Index(dataset, "semantic_png", split, vocab, image_paths, label_paths,
               image_ids=np.arange(n, dtype=np.int64), sizes=np.full((n, 2), -1, np.int32),
               instance_anns=[], skipped=bad.counts, panoptic_gt=panoptic_gt, skip_messages=bad.messages,
               **_empty_tables(n))


def png_bit_depth(path) -> int:
  """Bits per sample of a PNG file, from its IHDR chunk (byte 24); 0 when the file is not a PNG."""
  with open(path, "rb") as f:
    head = f.read(26)
  if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
    return 0
  return head[24]


def _require_8bit_labels(vocab, label_path) -> None:
  """ValueError unless the names file fits 8-bit class ids and `label_path` (the split's first) is not 16-bit.

  tf.data decodes semantic_png labels as uint8, which scales a 16-bit PNG down to 8 bits (300 -> 1), so such
  labels would silently become other classes; benchmarks with more classes are written as coco_panoptic.
  """
  fix = ("Write the labels as a COCO panoptic JSON + PNGs (format 'coco_panoptic', task 'semantic'), as "
         "`python scripts/prepare_transfer.py --benchmark pascal_context459|ade847` does.")
  if len(vocab.names) > MAX_8BIT_CLASSES:
    raise ValueError(f"semantic_png labels are 8-bit (at most {MAX_8BIT_CLASSES} classes) but the names file "
                     f"has {len(vocab.names)} classes; larger class ids cannot be stored. {fix}")
  if png_bit_depth(label_path) == 16:
    raise ValueError(f"{label_path}: 16-bit label PNG; semantic_png labels are decoded as 8-bit, so values above "
                     f"255 would be read as other classes. Save the labels as 8-bit PNGs (mode 'L' or 'P'). {fix}")


def _semantic_panoptic_gt(panoptic: tuple, vocab, bad: BadInput) -> dict:
  """{image file stem: panoptic_gt entry} of a COCO panoptic JSON for a semantic_png dataset.

  The JSON's categories sorted by id are the names file's classes in order (ADE's own panoptic JSON
  uses ids 0..149, the toy one label values 1..K); a different count is an error, a different name a
  logged warning. Segments of unknown categories are bad input and left out (their pixels are void); an
  annotation whose PNG is missing is bad input and maps its stem to None.
  """
  json_path, png_dir = panoptic
  data = load_json(json_path, "coco_panoptic")
  png_dir = require_dir(png_dir, "val panoptic PNG", "coco_panoptic")
  cats = sorted(data["categories"], key=lambda c: c["id"])
  if len(cats) != len(vocab.names):
    raise ValueError(f"{json_path} has {len(cats)} categories but the dataset's names file has "
                     f"{len(vocab.names)} classes; the panoptic categories, sorted by id, must be the "
                     "names file's classes in order")
  renamed = [(c["name"], n) for c, n in zip(cats, vocab.names)
             if vocabulary.normalise_name(c["name"]) != vocabulary.normalise_name(n)]
  if renamed:
    logging.warning("%s: %d category names differ from the names file (JSON, names file): %s", json_path,
                    len(renamed), renamed[:5])
  cat_index = {int(c["id"]): k for k, c in enumerate(cats)}
  stems = {im["id"]: os.path.splitext(im["file_name"])[0] for k, im in enumerate(data["images"])
           if _has_keys(im, ("id", "file_name"), lambda: _where(json_path, "images", k, im), bad, "image")}
  pngs = _listdir(png_dir)
  out = {}
  for k, ann in enumerate(data["annotations"]):
    keys = ("image_id", "file_name", "segments_info")
    if not _has_keys(ann, keys, lambda: _where(json_path, "annotations", k, ann), bad, "annotation"):
      continue
    where = f"{json_path} image_id {ann['image_id']}"
    if ann["image_id"] not in stems:
      bad("unknown_image", where, "The annotation names an image_id missing from 'images'; fix the JSON.")
      continue
    png = _json_file(png_dir, ann["file_name"], where, bad)
    if png is not None and not _present(png_dir, ann["file_name"], pngs):
      bad("missing_annotation", f"{png}", "Add the panoptic PNG or drop the image.")
      png = None
    if png is None:  # reported above
      out[stems[ann["image_id"]]] = None
      continue
    segs = []
    for s in _segments(ann, where, cat_index, bad):
      segs.append({"id": int(s["id"]), "category_id": int(s["category_id"]), "class": cat_index[s["category_id"]],
                   "iscrowd": int(s.get("iscrowd", 0))})
    out[stems[ann["image_id"]]] = {"png": str(png), "image_id": ann["image_id"], "segments_info": segs}
  return out


def _segments(ann: dict, where: str, cat_index: dict, bad: BadInput) -> list:
  """The segments of a COCO panoptic annotation that have an 'id' and a known 'category_id'; the others are
  reported as bad input (and their pixels are void)."""
  kept = []
  for k, s in enumerate(ann["segments_info"]):
    if not _has_keys(s, ("id", "category_id"), lambda: f"{where} segments_info[{k}]", bad, "segment"):
      continue
    if s["category_id"] not in cat_index:
      bad("unknown_category", f"{where} segment {s['id']} category_id {s['category_id']!r}",
          "Add the category to 'categories' or fix the segment; the segment is treated as void.")
      continue
    kept.append(s)
  return kept


def load_panoptic_gt(entry: dict, image_size=None) -> np.ndarray:
  """Segment ids [H, W] int64 of one `Index.panoptic_gt` entry (id = R + 256 G + 256^2 B, 0 void).

  Pixels whose id is not listed in `segments_info` become 0 (void). A PNG that does not decode, or whose
  size differs from `image_size` (H, W) when given, is a ValueError naming the file.
  """
  path = entry["png"]
  try:
    with Image.open(path) as im:
      rgb = np.asarray(im.convert("RGB"), np.int64)
  except (OSError, SyntaxError) as e:
    raise ValueError(f"{path}: panoptic PNG does not decode ({e}); re-export it as an RGB PNG") from None
  if image_size is not None and tuple(rgb.shape[:2]) != tuple(image_size):
    raise ValueError(f"{path}: panoptic PNG is {rgb.shape[1]}x{rgb.shape[0]} but its image is "
                     f"{image_size[1]}x{image_size[0]}; regenerate it at the image's size")
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  listed = np.array(sorted(s["id"] for s in entry["segments_info"]), np.int64)
  return np.where(np.isin(ids, listed), ids, 0)


def read_coco_panoptic(dataset, split, images_dir, json_path, png_dir, bad: BadInput, names=None) -> Index:
  """COCO panoptic: per image its PNG and segments (sorted by id; crowd flagged to become void)."""
  images_dir = require_dir(images_dir, f"{split} images", "coco_panoptic")
  png_dir = require_dir(png_dir, f"{split} panoptic PNG", "coco_panoptic")
  data = load_json(json_path, "coco_panoptic")
  vocab, cat_index = coco_vocab(data, "coco_panoptic", names, json_path)
  images = {im["id"]: im for k, im in enumerate(data["images"])
            if _has_keys(im, ("id", "file_name"), lambda: _where(json_path, "images", k, im), bad, "image")}
  keys = ("image_id", "file_name", "segments_info")
  anns = [a for k, a in enumerate(data["annotations"])
          if _has_keys(a, keys, lambda: _where(json_path, "annotations", k, a), bad, "annotation")]
  present, pngs = _listdir(images_dir), _listdir(png_dir)
  out = dict(image_paths=[], label_paths=[], image_ids=[], sizes=[], splits=[0], ids=[], cls=[], crowd=[])
  for ann in sorted(anns, key=lambda a: a["image_id"]):
    im = images.get(ann["image_id"])
    where = f"{json_path} image_id {ann['image_id']}"
    if im is None:
      bad("unknown_image", where, "The annotation names an image_id missing from 'images'; fix the JSON.")
      continue
    image, png = _json_file(images_dir, im["file_name"], where, bad), _json_file(png_dir, ann["file_name"], where, bad)
    if image is None or png is None:
      continue
    if not _present(images_dir, im["file_name"], present):
      bad("missing_image_file", f"{image}", "Add the image or drop it from the JSON.")
      continue
    if not _present(png_dir, ann["file_name"], pngs):
      bad("missing_annotation", f"{png}", "Add the panoptic PNG or drop the image.")
      continue
    segs = [(int(s["id"]), cat_index[s["category_id"]], bool(s.get("iscrowd", 0)))
            for s in _segments(ann, where, cat_index, bad)]
    if split == "train" and not any(not c for _, _, c in segs):  # evaluation scores false positives on it
      bad("empty_annotations", where, "The image has no (non-crowd) segments; annotate it or drop it.")
      continue
    segs.sort()
    out["image_paths"].append(str(image))
    out["label_paths"].append(str(png))
    out["image_ids"].append(int(im["id"]))
    out["sizes"].append((int(im.get("height", -1)), int(im.get("width", -1))))
    out["ids"] += [s[0] for s in segs]
    out["cls"] += [s[1] for s in segs]
    out["crowd"] += [s[2] for s in segs]
    out["splits"].append(len(out["ids"]))
  _require_some(out["image_paths"], json_path, "coco_panoptic")
  bad.log_summary(split)
  return Index(dataset, "coco_panoptic", split, vocab, out["image_paths"], out["label_paths"],
               image_ids=np.array(out["image_ids"], np.int64), sizes=np.array(out["sizes"], np.int32),
               seg_splits=np.array(out["splits"], np.int64), seg_ids=np.array(out["ids"], np.int32),
               seg_class=np.array(out["cls"], np.int32), seg_crowd=np.array(out["crowd"], bool),
               boxes=np.zeros((len(out["ids"]), 4), np.float32), instance_anns=[], skipped=bad.counts,
               skip_messages=bad.messages)


def _require_some(paths, json_path, fmt):
  if not paths:
    raise ValueError(f"{json_path}: no usable images (see the skip counts above); expected the {_LAYOUT[fmt]}")


def read_coco_boxes(dataset, split, images_dir, json_path, bad: BadInput, names=None,
                    fmt: str = "coco_detection") -> Index:
  """COCO detection or instances JSON -> boxes (x0, y0, x1, y1) clipped to the image, per image.

  A box that is not four finite numbers, with w <= 0 or h <= 0, or with no overlap with the image, is bad input; a
  box partly outside is clipped. An image entry without a positive 'height' and 'width' is bad input. Crowd
  annotations are kept flagged (void in masks, not a box target).
  Training images left with no non-crowd annotation are bad input ('empty_annotations'); val images are
  kept (evaluation scores the false positives on them, as COCOeval over the whole split does).
  """
  images_dir = require_dir(images_dir, f"{split} images", fmt)
  data = load_json(json_path, fmt)
  vocab, cat_index = coco_vocab(data, fmt, names, json_path)
  per_image = collections.defaultdict(list)
  for k, ann in enumerate(data["annotations"]):
    if _has_keys(ann, ("image_id", "category_id", "bbox"), lambda: _where(json_path, "annotations", k, ann), bad,
                 "annotation"):
      per_image[ann["image_id"]].append(ann)
  present = _listdir(images_dir)
  out = dict(image_paths=[], image_ids=[], sizes=[], splits=[0], cls=[], crowd=[], boxes=[], anns=[])
  images = [im for k, im in enumerate(data["images"])
            if _has_keys(im, ("id", "file_name"), lambda: _where(json_path, "images", k, im), bad, "image")]
  for im in sorted(images, key=lambda i: i["id"]):
    where = f"{json_path} image_id {im['id']} ({im['file_name']})"
    image = _json_file(images_dir, im["file_name"], where, bad)
    if image is None:
      continue
    if not _present(images_dir, im["file_name"], present):
      bad("missing_image_file", f"{image}", "Add the image or drop it from the JSON.")
      continue
    size_issue = image_size_problem(im)
    if size_issue:
      bad("missing_image_size", f"{where} {size_issue}",
          "Add the image's 'height' and 'width' in pixels to its entry in 'images'; the image is skipped.")
      continue
    h, w = int(im["height"]), int(im["width"])
    kept = []
    for ann in per_image.get(im["id"], []):
      if ann["category_id"] not in cat_index:
        bad("unknown_category", f"{where} annotation {ann.get('id')} category_id {ann['category_id']!r}",
            "Add the category to 'categories' or fix the annotation; the annotation is dropped.")
        continue
      issue = box_problem(ann["bbox"])
      if issue:
        bad(issue[0], f"{where} annotation {ann.get('id')} bbox {ann['bbox']} {issue[1]}",
            "Boxes are [x, y, width, height] in pixels, finite, with width, height > 0; the box is dropped.")
        continue
      x, y, bw, bh = (float(v) for v in ann["bbox"])
      x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
      if x1 <= x0 or y1 <= y0:
        bad("box_outside_image", f"{where} annotation {ann.get('id')} bbox {ann['bbox']} image {w}x{h}",
            "The box does not overlap the image; fix its coordinates; the box is dropped.")
        continue
      kept.append((ann, cat_index[ann["category_id"]], bool(ann.get("iscrowd", 0)), (x0, y0, x1, y1)))
    if split == "train" and not any(not c for _, _, c, _ in kept):  # evaluation scores false positives on it
      bad("empty_annotations", where, "The image has no usable annotation; annotate it or drop it.")
      continue
    out["image_paths"].append(str(image))
    out["image_ids"].append(int(im["id"]))
    out["sizes"].append((h, w))
    out["cls"] += [k[1] for k in kept]
    out["crowd"] += [k[2] for k in kept]
    out["boxes"] += [k[3] for k in kept]
    out["splits"].append(len(out["cls"]))
    if fmt == "coco_instances":
      out["anns"].append([k[0] for k in kept])
  _require_some(out["image_paths"], json_path, fmt)
  bad.log_summary(split)
  n_seg = len(out["cls"])
  return Index(dataset, fmt, split, vocab, out["image_paths"], [""] * len(out["image_paths"]),
               image_ids=np.array(out["image_ids"], np.int64), sizes=np.array(out["sizes"], np.int32),
               seg_splits=np.array(out["splits"], np.int64), seg_ids=np.arange(1, n_seg + 1, dtype=np.int32),
               seg_class=np.array(out["cls"], np.int32), seg_crowd=np.array(out["crowd"], bool),
               boxes=np.array(out["boxes"], np.float32).reshape(-1, 4), instance_anns=out["anns"],
               skipped=bad.counts, skip_messages=bad.messages)
