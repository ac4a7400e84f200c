"""coco_panoptic: COCO panoptic JSON + RGB PNGs, segment id = R + 256 G + 256^2 B [COCO panoptic format].

`iscrowd` segments, id 0 and ids not in `segments_info` are void; `isthing` from the categories; names: the entry's
names file renames the categories (sorted by id) in order, else the JSON's. Trains 'panoptic', 'semantic' (the
segments of each class merged into one target, so per-instance annotations train as semantic labels) or 'instance';
evaluates 'semantic' and 'panoptic' against the val JSON and PNGs, and 'instance' against `val_instances`. The
transfer benchmarks with more than 255 classes and Cityscapes panoptic are converted to this format
(`data_pipelines.transfer`).
"""
import numpy as np

from data_pipelines import paths
from data_pipelines import readers
from dataseg_jax.evaluation import panoptic as panoptic_lib

NAME = "coco_panoptic"
LAYOUT = ("COCO panoptic layout: <images dir>/FILE.jpg, panoptic_<split>.json and "
          "panoptic_<split>/FILE.png (RGB-coded segment ids)")
TRAIN_TASKS = ("panoptic", "semantic", "instance")
EVAL_TASKS = ("semantic", "panoptic", "instance")
INSTANCE_GT_IN_ANNOTATIONS = False
VAL_PANOPTIC_ANNOTATIONS = False
TFDS_LABEL_CHANNELS = 3
SEGMENTS_ARE_CLASSES = False


def dataset_vocab(entry):
  """The JSON's categories sorted by id (renamed by the names file), things from `isthing`."""
  return readers.coco_entry_vocab(entry, LAYOUT, isthing=True)


def read_index(entry, name: str, split: str, vocab, bad: readers.BadInput) -> readers.Index:
  """The index of split `split` of resolved entry `entry` (`read`)."""
  names = list(vocab.names) if entry.names else None
  return read(name, split, entry[f"{split}_images"], entry[f"{split}_annotations"], entry[f"{split}_panoptic_dir"],
              bad, names)


def read(dataset, split, images_dir, json_path, png_dir, bad: readers.BadInput, names=None) -> readers.Index:
  """COCO panoptic: per image its PNG and segments (sorted by id; crowd flagged to become void)."""
  images_dir = readers.require_dir(images_dir, f"{split} images", LAYOUT)
  png_dir = readers.require_dir(png_dir, f"{split} panoptic PNG", LAYOUT)
  data = readers.load_json(json_path, LAYOUT)
  vocab, cat_index = readers.coco_vocab(data, names, json_path, isthing=True)
  images = {im["id"]: im for k, im in enumerate(data["images"])
            if readers.has_keys(im, ("id", "file_name"), lambda: readers.json_item(json_path, "images", k, im), bad,
                                "image")}
  keys = ("image_id", "file_name", "segments_info")
  anns = [a for k, a in enumerate(data["annotations"])
          if readers.has_keys(a, keys, lambda: readers.json_item(json_path, "annotations", k, a), bad, "annotation")]
  present, pngs = readers.listdir(images_dir), readers.listdir(png_dir)
  out = dict(image_paths=[], label_paths=[], image_ids=[], sizes=[], splits=[0], ids=[], cls=[], crowd=[])
  for ann in sorted(anns, key=lambda a: a["image_id"]):
    im = images.get(ann["image_id"])
    where = f"{json_path} image_id {ann['image_id']}"
    if im is None:
      bad("unknown_image", where, "The annotation names an image_id missing from 'images'; fix the JSON.")
      continue
    image = readers.json_file(images_dir, im["file_name"], where, bad)
    png = readers.json_file(png_dir, ann["file_name"], where, bad)
    if image is None or png is None:
      continue
    if not readers.file_present(images_dir, im["file_name"], present):
      bad("missing_image_file", f"{image}", "Add the image or drop it from the JSON.")
      continue
    if not readers.file_present(png_dir, ann["file_name"], pngs):
      bad("missing_annotation", f"{png}", "Add the panoptic PNG or drop the image.")
      continue
    segs = [(int(s["id"]), cat_index[s["category_id"]], bool(s.get("iscrowd", 0)))
            for s in readers.panoptic_segments(ann, where, cat_index, bad)]
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
  readers.require_some(out["image_paths"], json_path, LAYOUT)
  bad.log_summary(split)
  return readers.Index(dataset, NAME, split, vocab, out["image_paths"], out["label_paths"],
                       image_ids=np.array(out["image_ids"], np.int64), sizes=np.array(out["sizes"], np.int32),
                       seg_splits=np.array(out["splits"], np.int64), seg_ids=np.array(out["ids"], np.int32),
                       seg_class=np.array(out["cls"], np.int32), seg_crowd=np.array(out["crowd"], bool),
                       boxes=np.zeros((len(out["ids"]), 4), np.float32), instance_anns=[], skipped=bad.counts,
                       skip_messages=bad.messages)


def decode(index: readers.Index, row: dict, image, r, reduce_zero_label: bool, masks: bool) -> dict:
  """The panoptic PNG of `row` -> idmap [h, w] (segment row, -1 void: crowd, id 0, unlisted ids)."""
  del index, r, reduce_zero_label, masks
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TensorFlow only where examples are decoded
  from data_pipelines import packing  # pylint: disable=g-import-not-at-top  # (TensorFlow)
  label_path = row["label_path"]
  rgb = tf.cast(tf.io.decode_png(row["label"], channels=3), tf.int32)
  tf.debugging.Assert(tf.reduce_all(tf.equal(tf.shape(rgb)[:2], tf.shape(image)[:2])),
                      ["panoptic PNG size differs from its image; regenerate it at the image's size:", label_path])
  idmap = packing.panoptic_idmap(rgb, row["ids"], row["crowd"])
  return dict(image=image, idmap=idmap, seg_class=row["cls"], seg_crowd=row["crowd"], boxes=row["boxes"],
              has_mask=True)


def val_task(entry) -> str:
  """The task whose targets the val stream decodes: the entry's own."""
  return entry.task


class GroundTruth:
  """Evaluation ground truth of a coco_panoptic val split: the val JSON's annotations and PNGs; category ids are
  the JSON's, sorted (the dataset's classes in order)."""

  semantic_offset = 0

  def __init__(self, entry):
    self.json_path, self.png_dir = entry.val_annotations, entry.val_panoptic_dir
    data = readers.read_json(self.json_path)
    self.annotations = panoptic_lib.index_annotations(data, self.json_path)
    self.category_ids = sorted(int(c["id"]) for c in data["categories"])
    self.categories = sorted(data["categories"], key=lambda c: c["id"])

  def listed_image_ids(self) -> set:
    """The image ids the val JSON annotates (those that indexing skipped are scored as missed)."""
    return set(self.annotations)

  def panoptic(self, row: int, image_id) -> tuple:
    """(segment ids [H, W], segments_info) of `image_id`: its PNG and JSON entry."""
    del row
    ann = self.annotations[image_id]
    where = f"{self.json_path} image_id {image_id}"
    ids = panoptic_lib.read_png_ids(paths.inside(self.png_dir, ann["file_name"], where))
    return ids, ann["segments_info"]

  def semantic(self, row: int, image_id) -> np.ndarray:
    """Local class ids [H, W] of `image_id`, `readers.IGNORE` on void: the classes of its panoptic segments."""
    ids, segs = self.panoptic(row, image_id)
    out = np.full(ids.shape, readers.IGNORE, np.int64)
    for s in segs:
      out[ids == s["id"]] = self.category_ids.index(int(s["category_id"]))
    return out


def ground_truth(entry, index: readers.Index, vocab, instance_gt=None) -> GroundTruth:
  """The evaluation ground truth of the val split (`instance_gt`, of `val_instances`, scores 'instance' apart)."""
  del index, vocab, instance_gt
  return GroundTruth(entry)


def check_example(index: readers.Index, r: int, ex: dict) -> tuple:
  """check_dataset's rules for decoded example `ex`: (the class name of each segment, no further problems)."""
  return readers.segment_classes(index, r, ex)
