"""What the dataset formats share (pure Python): the `Index` of a split, the bad-input policy, and COCO JSON reading.

Each format lives in one module of `data_pipelines.formats` (its reader, decoding, evaluation ground truth, tasks and
check rules); this module holds what several of them use: `Index` and `BadInput`, the checks of folders, files and
JSON files (errors quote the format's `LAYOUT`), the COCO category vocabulary, the per-entry checks of COCO JSON
items, and `read_coco_boxes`, the reader of every COCO-style instance or box JSON.

The index holds paths and per-image annotation tables; pixels are decoded later in tf.data
(`data_pipelines.pipeline` and the format's `decode`). Bad input found here (an unknown category, an empty annotation
list, a box that is not four finite numbers, degenerate or outside its image, an image entry without its size, an
annotation without a required key, a missing file, a file name that is absolute or leaves its folder: `paths`) is an
error or a counted, logged skip, as `config.data.on_bad_example` (training) or `config.eval.on_bad_example`
(evaluation) says (`BadInput`); every message names the JSON and the image or annotation id.
"""
import collections
import dataclasses
import json
import math
import os
import pathlib

from absl import logging
import numpy as np

from data_pipelines import paths
from dataseg_jax.vocab import names as names_lib
from dataseg_jax.vocab import vocabulary

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
IGNORE = -1  # void in evaluation ground truth: outside every class id


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


def require_dir(path, what: str, layout: str) -> pathlib.Path:
  """The directory `path`, or FileNotFoundError naming it and `layout` (a format's `LAYOUT`)."""
  p = pathlib.Path(path)
  if not p.is_dir():
    raise FileNotFoundError(f"{what} directory {p} not found. Expected the {layout}. "
                            "Check config.data_dir and the dataset entry's paths; nothing is downloaded.")
  return p


def require_file(path, what: str, layout: str) -> pathlib.Path:
  """The file `path`, or FileNotFoundError naming it and `layout` (a format's `LAYOUT`)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what} file {p} not found. Expected the {layout}. "
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


def load_json(path, layout: str) -> dict:
  """A COCO-style annotation JSON with its 'images', 'annotations' and 'categories' lists; errors quote `layout`."""
  p = require_file(path, "annotation", layout)
  data = read_json(p)
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise ValueError(f"{p} has no {key!r} list; expected the {layout}")
  return data


def coco_vocab(data: dict, names: list = None, source="the annotation JSON", isthing: bool = False) -> tuple:
  """Categories sorted by id -> (DatasetVocab, {category id: local index}); `source` names the JSON in errors.

  `names` (from the entry's names file) renames the categories in that order when given. Thing flags: each
  category's `isthing` (default 1) when `isthing` (COCO panoptic), else all things (instance and box formats).
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
      tuple(bool(c.get("isthing", 1)) if isthing else True for c in cats))
  return vocab, {int(c["id"]): k for k, c in enumerate(cats)}


def coco_entry_vocab(entry, layout: str, isthing: bool = False) -> vocabulary.DatasetVocab:
  """The local vocabulary of a resolved entry of a COCO-JSON format: the categories of its first annotation JSON
  (train, else val, else val_instances), renamed by its names file when it has one (`coco_vocab`)."""
  json_path = entry.train_annotations or entry.val_annotations or entry.val_instances
  require_file(json_path, "annotation", layout)
  data = read_json(json_path)
  if not isinstance(data.get("categories"), list):
    raise ValueError(f"{json_path} has no 'categories' list; expected a COCO-format JSON")
  names = names_lib.read_names(entry.names) if entry.names else None
  vocab, _ = coco_vocab({"images": [], "annotations": [], "categories": data["categories"]}, names, json_path,
                        isthing)
  return vocab


def empty_tables(n_images):
  return dict(seg_splits=np.zeros(n_images + 1, np.int64), seg_ids=np.zeros(0, np.int32),
              seg_class=np.zeros(0, np.int32), seg_crowd=np.zeros(0, bool),
              boxes=np.zeros((0, 4), np.float32))


def listdir(path) -> set:
  return set(os.listdir(path))


def json_item(json_path, key: str, k: int, item) -> str:
  """'<json> <key>[k] (id <id>)': where entry k of a JSON list is, for messages."""
  ident = item.get("id") if isinstance(item, dict) else None
  return f"{json_path} {key}[{k}]" + (f" (id {ident})" if ident is not None else "")


def has_keys(item, keys: tuple, locate, bad: "BadInput", kind: str) -> bool:
  """Whether JSON entry `item` (an image, annotation or segment) is an object holding `keys`; else reports it as
  bad input ('malformed_<kind>') naming the missing keys at `locate()` (a callable: the message is built only for
  bad entries, of millions)."""
  missing = [k for k in keys if not isinstance(item, dict) or k not in item]
  if missing:
    bad(f"malformed_{kind}", f"{locate()} has no {', '.join(repr(k) for k in missing)}",
        f"Add the key(s) to the {kind} entry (COCO format); the {kind} is skipped.")
  return not missing


def json_file(folder: pathlib.Path, name, where: str, bad: "BadInput") -> pathlib.Path | None:
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


def file_present(folder: pathlib.Path, file_name: str, listing: set) -> bool:
  """Whether `folder/file_name` is a file: a look-up in the folder's `listing` for a plain name, a stat for a name
  with sub-folders (Objects365 v2's 'images/v1/patch8/objects365_v1_00420917.jpg')."""
  return file_name in listing if "/" not in file_name else (folder / file_name).is_file()


def require_some(image_paths, json_path, layout: str) -> None:
  """ValueError when indexing `json_path` left no usable image; it quotes `layout`."""
  if not image_paths:
    raise ValueError(f"{json_path}: no usable images (see the skip counts above); expected the {layout}")


def read_coco_boxes(dataset, split, images_dir, json_path, bad: BadInput, names=None, *, fmt: str, layout: str,
                    keep_annotations: bool, data: dict = None) -> Index:
  """A COCO-style instances or box JSON -> boxes (x0, y0, x1, y1) clipped to the image, per image: an `Index` of
  format `fmt` (errors quote `layout`); `keep_annotations` keeps each image's annotation dicts
  (`Index.instance_anns`, for formats that rasterise their masks). `data`: the JSON already loaded (and adapted) by
  the format, else it is read from `json_path`.

  A box that is not four finite numbers, with w <= 0 or h <= 0, or with no overlap with the image, is bad input; a
  box partly outside is clipped. An image entry without a positive 'height' and 'width' is bad input. Crowd
  annotations are kept flagged (void in masks, not a box target).
  Training images left with no non-crowd annotation are bad input ('empty_annotations'); val images are
  kept (evaluation scores the false positives on them, as COCOeval over the whole split does).
  """
  images_dir = require_dir(images_dir, f"{split} images", layout)
  data = load_json(json_path, layout) if data is None else data
  vocab, cat_index = coco_vocab(data, names, json_path)
  per_image = collections.defaultdict(list)
  for k, ann in enumerate(data["annotations"]):
    if has_keys(ann, ("image_id", "category_id", "bbox"), lambda: json_item(json_path, "annotations", k, ann), bad,
                 "annotation"):
      per_image[ann["image_id"]].append(ann)
  present = listdir(images_dir)
  out = dict(image_paths=[], image_ids=[], sizes=[], splits=[0], cls=[], crowd=[], boxes=[], anns=[])
  images = [im for k, im in enumerate(data["images"])
            if has_keys(im, ("id", "file_name"), lambda: json_item(json_path, "images", k, im), bad, "image")]
  for im in sorted(images, key=lambda i: i["id"]):
    where = f"{json_path} image_id {im['id']} ({im['file_name']})"
    image = json_file(images_dir, im["file_name"], where, bad)
    if image is None:
      continue
    if not file_present(images_dir, im["file_name"], present):
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
    if keep_annotations:
      out["anns"].append([k[0] for k in kept])
  require_some(out["image_paths"], json_path, layout)
  bad.log_summary(split)
  n_seg = len(out["cls"])
  return Index(dataset, fmt, split, vocab, out["image_paths"], [""] * len(out["image_paths"]),
               image_ids=np.array(out["image_ids"], np.int64), sizes=np.array(out["sizes"], np.int32),
               seg_splits=np.array(out["splits"], np.int64), seg_ids=np.arange(1, n_seg + 1, dtype=np.int32),
               seg_class=np.array(out["cls"], np.int32), seg_crowd=np.array(out["crowd"], bool),
               boxes=np.array(out["boxes"], np.float32).reshape(-1, 4), instance_anns=out["anns"],
               skipped=bad.counts, skip_messages=bad.messages)


def panoptic_segments(ann: dict, where: str, cat_index: dict, bad: BadInput) -> list:
  """The segments of a COCO panoptic annotation that have an 'id' and a known 'category_id'; the others are
  reported as bad input (and their pixels are void)."""
  kept = []
  for k, s in enumerate(ann["segments_info"]):
    if not has_keys(s, ("id", "category_id"), lambda: f"{where} segments_info[{k}]", bad, "segment"):
      continue
    if s["category_id"] not in cat_index:
      bad("unknown_category", f"{where} segment {s['id']} category_id {s['category_id']!r}",
          "Add the category to 'categories' or fix the segment; the segment is treated as void.")
      continue
    kept.append(s)
  return kept


def png_bit_depth(path) -> int:
  """Bits per sample of a PNG file, from its IHDR chunk (byte 24); 0 when the file is not a PNG."""
  with open(path, "rb") as f:
    head = f.read(26)
  if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
    return 0
  return head[24]


def boxes_only(image, row: dict) -> dict:
  """A decoded example with only the boxes of `row` (`pipeline.Tables.fetch`): idmap None and has_mask False, so
  the box-only losses apply (the batch contract's box-only data)."""
  return dict(image=image, idmap=None, seg_class=row["cls"], seg_crowd=row["crowd"], boxes=row["boxes"],
              has_mask=False)


def segment_classes(index: Index, r: int, ex: dict) -> tuple:
  """`check_example` of a format with annotated segments: (the class name of each decoded segment, no problems)."""
  del r
  return [index.vocab.names[c] for c in ex["seg_class"].numpy()], []


class InstanceGroundTruth:
  """Evaluation ground truth of a COCO-JSON instance or box format: 'instance' only, scored by COCOeval against
  `instance_gt` (the evaluator's pycocotools COCO of `val_instances` or `val_annotations`), whose categories sorted
  by id are the dataset's classes in order."""

  semantic_offset = 0

  def __init__(self, instance_gt):
    self.category_ids = sorted(instance_gt.getCatIds())
    self.categories = [instance_gt.cats[c] for c in self.category_ids]

  def listed_image_ids(self):
    """None: the images scored are those of the instance JSON."""
    return None
