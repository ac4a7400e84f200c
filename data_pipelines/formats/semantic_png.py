"""semantic_png: ADEChallengeData2016 layout, one 8-bit class id per pixel.

`images/<split>/*.jpg` + `annotations/<split>/*.png` (same stem), one uint8 class id per pixel (grayscale value or
palette index), 0 = void and value k = class k - 1 with `reduce_zero_label`, else value k = class k and 255 = void.
8-bit only: a names file of more than 255 classes, or a 16-bit label PNG (checked on the split's first label), is an
error here, since tf.data decodes labels as uint8 and larger ids would come out wrong; such benchmarks are written as
`coco_panoptic` (`data_pipelines.transfer`). Names: the entry's names file, else `objectInfo150.txt`/`names.txt` in
the dataset root (the parent of `images/`), else the built-in ADE-150 list; things: `entry.thing_classes`, else
ADE-150's flags when the names are ADE's, else all stuff.

Trains 'semantic'; evaluates 'semantic' against the label PNGs and 'panoptic' (weak transfer [paper]) against the
COCO panoptic JSON + PNGs of `val_panoptic_annotations` (matched by file stem, `Index.panoptic_gt`), else against
ground truth derived from the labels: each stuff class one segment, each connected component of a thing class one
instance [default].
"""
import io
import os
import pathlib

from absl import logging
import numpy as np
from PIL import Image

from data_pipelines import readers
from data_pipelines.formats import coco_panoptic
from dataseg_jax import panoptic_ids
from dataseg_jax.vocab import names as names_lib
from dataseg_jax.vocab import vocabulary

NAME = "semantic_png"
LAYOUT = ("ADEChallengeData2016 layout: <root>/images/{training,validation}/NAME.jpg and "
          "<root>/annotations/{training,validation}/NAME.png (8-bit class ids, 0 = void)")
TRAIN_TASKS = ("semantic",)
EVAL_TASKS = ("semantic", "panoptic")
INSTANCE_GT_IN_ANNOTATIONS = False
VAL_PANOPTIC_ANNOTATIONS = True
TFDS_LABEL_CHANNELS = 1
SEGMENTS_ARE_CLASSES = True
MAX_8BIT_CLASSES = 255  # values 1..255 with reduce_zero_label, 0..254 (255 void) without


def dataset_vocab(entry) -> vocabulary.DatasetVocab:
  """Names (module docstring) in label order and their thing flags."""
  names = _names(entry)
  return vocabulary.DatasetVocab(tuple(names), _things(entry, names))


def _names(e) -> list:
  if e.names:
    return names_lib.read_names(e.names)
  root = pathlib.Path(e.train_images or e.val_images).parent.parent
  for candidate in ("objectInfo150.txt", "names.txt"):
    if (root / candidate).is_file():
      return names_lib.read_names(root / candidate)
  logging.info("no names file for %s; using the built-in ADE-150 names", root)
  return list(vocabulary.load_builtin("ade150")[0].names)


def _things(e, names) -> tuple:
  if e.thing_classes:
    things = {vocabulary.normalise_name(n) for n in names_lib.read_names(e.thing_classes, allow_empty=True)}
    unknown = things - {vocabulary.normalise_name(n) for n in names}
    if unknown:
      raise ValueError(f"{e.thing_classes}: thing classes {sorted(unknown)} are not in the dataset's names")
    return tuple(vocabulary.normalise_name(n) in things for n in names)
  ade, _ = vocabulary.load_builtin("ade150")
  if [vocabulary.normalise_name(n) for n in names] == [vocabulary.normalise_name(n) for n in ade.names]:
    return ade.is_thing
  logging.warning("no thing_classes file for a semantic_png dataset with %d classes: all are stuff", len(names))
  return (False,) * len(names)


def read_index(entry, name: str, split: str, vocab, bad: readers.BadInput) -> readers.Index:
  """The index of split `split` of resolved entry `entry` (`read`); a val split with `val_panoptic_annotations`
  carries its panoptic ground truth."""
  panoptic = None
  if split == "val" and entry.val_panoptic_annotations:
    panoptic = (entry.val_panoptic_annotations, entry.val_panoptic_dir)
  return read(name, split, entry[f"{split}_images"], entry[f"{split}_annotations"], vocab, bad, panoptic)


def read(dataset, split, images_dir, labels_dir, vocab, bad: readers.BadInput, panoptic: tuple = None) -> readers.Index:
  """ADE-style folders: every image with a same-stem PNG label; unmatched images are bad input.

  `panoptic` = (COCO panoptic JSON, PNG dir) adds each image's panoptic ground truth (`Index.panoptic_gt`,
  matched by file stem); an image without it is bad input ('missing_panoptic_annotation').
  """
  images_dir = readers.require_dir(images_dir, f"{split} images", LAYOUT)
  labels_dir = readers.require_dir(labels_dir, f"{split} annotations", LAYOUT)
  labels = {os.path.splitext(f)[0]: f for f in readers.listdir(labels_dir) if f.lower().endswith(".png")}
  gt = _panoptic_gt(panoptic, vocab, bad) if panoptic else None
  image_paths, label_paths, panoptic_gt = [], [], []
  for f in sorted(readers.listdir(images_dir)):
    stem, ext = os.path.splitext(f)
    if ext.lower() not in readers.IMAGE_EXTS:
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
    raise FileNotFoundError(f"no image/label pairs in {images_dir} and {labels_dir}; expected the {LAYOUT}")
  _require_8bit_labels(vocab, label_paths[0])
  n = len(image_paths)
  bad.log_summary(split)
  return readers.Index(dataset, NAME, split, vocab, image_paths, label_paths,
                       image_ids=np.arange(n, dtype=np.int64), sizes=np.full((n, 2), -1, np.int32),
                       instance_anns=[], skipped=bad.counts, panoptic_gt=panoptic_gt, skip_messages=bad.messages,
                       **readers.empty_tables(n))


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
  if readers.png_bit_depth(label_path) == 16:
    raise ValueError(f"{label_path}: 16-bit label PNG; semantic_png labels are decoded as 8-bit, so values above "
                     f"255 would be read as other classes. Save the labels as 8-bit PNGs (mode 'L' or 'P'). {fix}")


def _panoptic_gt(panoptic: tuple, vocab, bad: readers.BadInput) -> dict:
  """{image file stem: panoptic_gt entry} of a COCO panoptic JSON for a semantic_png dataset.

  The JSON's categories sorted by id are the names file's classes in order (ADE's own panoptic JSON
  uses ids 0..149, the toy one label values 1..K); a different count is an error, a different name a
  logged warning. Segments of unknown categories are bad input and left out (their pixels are void); an
  annotation whose PNG is missing is bad input and maps its stem to None.
  """
  json_path, png_dir = panoptic
  data = readers.load_json(json_path, coco_panoptic.LAYOUT)
  png_dir = readers.require_dir(png_dir, "val panoptic PNG", coco_panoptic.LAYOUT)
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
           if readers.has_keys(im, ("id", "file_name"), lambda: readers.json_item(json_path, "images", k, im), bad,
                               "image")}
  pngs = readers.listdir(png_dir)
  out = {}
  for k, ann in enumerate(data["annotations"]):
    keys = ("image_id", "file_name", "segments_info")
    if not readers.has_keys(ann, keys, lambda: readers.json_item(json_path, "annotations", k, ann), bad,
                            "annotation"):
      continue
    where = f"{json_path} image_id {ann['image_id']}"
    if ann["image_id"] not in stems:
      bad("unknown_image", where, "The annotation names an image_id missing from 'images'; fix the JSON.")
      continue
    png = readers.json_file(png_dir, ann["file_name"], where, bad)
    if png is not None and not readers.file_present(png_dir, ann["file_name"], pngs):
      bad("missing_annotation", f"{png}", "Add the panoptic PNG or drop the image.")
      png = None
    if png is None:  # reported above
      out[stems[ann["image_id"]]] = None
      continue
    segs = []
    for s in readers.panoptic_segments(ann, where, cat_index, bad):
      segs.append({"id": int(s["id"]), "category_id": int(s["category_id"]), "class": cat_index[s["category_id"]],
                   "iscrowd": int(s.get("iscrowd", 0))})
    out[stems[ann["image_id"]]] = {"png": str(png), "image_id": ann["image_id"], "segments_info": segs}
  return out


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
  ids = panoptic_ids.rgb_to_id(rgb)
  listed = np.array(sorted(s["id"] for s in entry["segments_info"]), np.int64)
  return np.where(np.isin(ids, listed), ids, 0)


def _pil_label(data):
  """numpy_function body: label PNG bytes -> (values as PIL reads them, uint8 [h, w]; decoded ok).

  Palette PNGs give their palette indices and 1-bit PNGs 0/1, what `np.array(Image.open(f))` (the
  evaluator) reads. A file that does not decode, or that is not one channel, gives ok = False."""
  try:
    with Image.open(io.BytesIO(np.asarray(data).item())) as im:  # a 0-d object array holding the bytes
      values = np.asarray(im)
    if values.ndim == 2:
      return values.astype(np.uint8), np.bool_(True)
  except Exception:  # pylint: disable=broad-except  # reported by the assertion in `_decode_label_png`
    pass
  return np.zeros((0, 0), np.uint8), np.bool_(False)


def _decode_label_png(data, path):
  """Bytes of a semantic_png label -> its stored values, int32 [h, w].

  `tf.io.decode_png(channels=1)` turns a palette PNG (IHDR colour type 3, VOC style) into the grey
  levels of its colours and scales a 1-bit PNG to 0/255, so those (and other bit depths below 8) are
  read with PIL, as the evaluator reads them; every other label keeps the fast TF decoder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TensorFlow only where examples are decoded
  head = tf.io.decode_raw(tf.strings.substr(data, 0, 26), tf.uint8)  # signature and IHDR up to colour type
  head = tf.pad(head, [[0, 26 - tf.size(head)]])
  is_png = tf.reduce_all(tf.equal(head[12:16], tf.constant(list(b"IHDR"), tf.uint8)))
  use_pil = tf.logical_and(is_png, tf.logical_or(head[25] == 3, head[24] < 8))  # palette, or under 8 bits

  def pil():
    values, ok = tf.numpy_function(_pil_label, [data], [tf.uint8, tf.bool], stateful=False)
    return tf.ensure_shape(values, [None, None]), tf.ensure_shape(ok, [])

  label, ok = tf.cond(use_pil, pil, lambda: (tf.io.decode_png(data, channels=1)[..., 0], tf.constant(True)))
  tf.debugging.Assert(ok, ["label PNG does not decode (corrupt or truncated); re-export it as an 8-bit grayscale "
                           "or palette PNG:", path])
  return tf.cast(label, tf.int32)


def decode(index: readers.Index, row: dict, image, r, reduce_zero_label: bool, masks: bool) -> dict:
  """The label PNG of `row` -> idmap [h, w] (class index, -1 void) and one segment per class of the names file."""
  del r, masks
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TensorFlow only where examples are decoded
  label_path = row["label_path"]
  label = _decode_label_png(row["label"], label_path)
  k = len(index.vocab.names)
  tf.debugging.Assert(tf.reduce_all(tf.equal(tf.shape(label), tf.shape(image)[:2])),
                      ["label PNG size differs from its image; regenerate it at the image's size:", label_path])
  if reduce_zero_label:  # 0 = void, k -> class k - 1
    idmap = label - 1
  else:  # 255 = void
    idmap = tf.where(label == 255, -1, label)
  tf.debugging.Assert(tf.reduce_max(idmap) < k, [f"label value outside the {k} classes of the names file (an "
                                                 "unknown category); fix the label PNG or add the class to the "
                                                 "names file:", label_path])
  return dict(image=image, idmap=idmap, seg_class=tf.range(k, dtype=tf.int32),
              seg_crowd=tf.zeros([k], tf.bool), boxes=tf.zeros([k, 4]), has_mask=True)


def val_task(entry) -> str:
  """The task whose targets the val stream decodes: the entry's own."""
  return entry.task


class GroundTruth:
  """Evaluation ground truth of a semantic_png val split (module docstring). Panoptic category ids: those of the
  val panoptic JSON (sorted, the names file's classes in order; ADE's own uses 0..149), else the label values
  (class k -> k + 1); `semantic_offset` is added to predicted classes written as semantic PNGs, so they read as the
  label PNGs do."""

  def __init__(self, entry, index: readers.Index, vocab):
    self.index, self.reduce_zero_label = index, bool(entry.reduce_zero_label)
    self.is_thing = np.array(vocab.is_thing, bool)
    self.category_ids = (sorted(int(c["id"]) for c in readers.load_json(entry.val_panoptic_annotations,
                                                                         coco_panoptic.LAYOUT)["categories"])
                         if entry.val_panoptic_annotations else list(range(1, len(vocab.names) + 1)))
    self.categories = [{"id": i, "name": n, "isthing": int(t)}
                       for i, n, t in zip(self.category_ids, vocab.names, self.is_thing)]
    self.semantic_offset = 1 if self.reduce_zero_label else 0

  def listed_image_ids(self):
    """None: every val image is one of the index (no JSON lists others)."""
    return None

  def semantic(self, row: int, image_id) -> np.ndarray:
    """Local class ids [H, W] of image row `row`, `readers.IGNORE` on void."""
    del image_id
    lab = np.array(Image.open(self.index.label_paths[row])).astype(np.int64)
    if self.reduce_zero_label:
      return np.where(lab == 0, readers.IGNORE, lab - 1)
    return np.where(lab == 255, readers.IGNORE, lab)  # 8-bit labels without reduce_zero_label: 255 is void

  def panoptic(self, row: int, image_id) -> tuple:
    """(segment ids [H, W], segments_info) of image row `row`: the val panoptic PNG and JSON when the entry has
    them; otherwise built from the labels, one segment per stuff class and per connected component of a thing
    class (an approximation of the instances, which such labels do not hold)."""
    if self.index.panoptic_gt:
      gt = self.index.panoptic_gt[row]
      segs = [{"id": int(s["id"]), "category_id": self.category_ids[s["class"]], "iscrowd": int(s["iscrowd"])}
              for s in gt["segments_info"]]
      return load_panoptic_gt(gt), segs
    from scipy import ndimage  # pylint: disable=g-import-not-at-top  # only for derived panoptic ground truth
    lab = self.semantic(row, image_id)
    ids = np.zeros(lab.shape, np.int64)
    segs = []
    for k in np.unique(lab[lab != readers.IGNORE]):
      comps, n = ndimage.label(lab == k) if self.is_thing[k] else ((lab == k).astype(np.int64), 1)
      for j in range(1, n + 1):
        sid = len(segs) + 1
        ids[comps == j] = sid
        segs.append({"id": sid, "category_id": self.category_ids[k], "iscrowd": 0})
    return ids, segs


def ground_truth(entry, index: readers.Index, vocab, instance_gt=None) -> GroundTruth:
  """The evaluation ground truth of the val split `index` (`instance_gt` unused: no instance evaluation)."""
  del instance_gt
  return GroundTruth(entry, index, vocab)


def check_example(index: readers.Index, r: int, ex: dict) -> tuple:
  """check_dataset's rules for decoded example `ex` of row `r` -> (the class names present, problems
  [(severity, reason, message)]): the val panoptic PNG decodes at the image's size; a label map that is all void is
  a warning (it teaches nothing)."""
  problems = []
  if index.panoptic_gt:
    try:
      load_panoptic_gt(index.panoptic_gt[r], tuple(ex["image"].shape[:2]))
    except ValueError as e:
      problems.append(("error", "bad_panoptic_png", str(e)))
  ids = np.unique(ex["idmap"].numpy())
  if not (ids >= 0).any():
    problems.append(("warning", "empty_annotations", f"{index.label_paths[r]}: every pixel is void; "
                     "label the image or remove it (it teaches nothing)"))
  return [index.vocab.names[i] for i in ids if i >= 0], problems
