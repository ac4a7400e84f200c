"""coco_detection: COCO-style JSON with `bbox` = [x, y, w, h] in pixels (Objects365 and any box set): box-only
supervision.

Trains 'box' (the projection loss, no masks): boxes partly outside the image are clipped, crowd annotations are kept
flagged (void, not a box target); all classes are things; names: the entry's names file renames the categories
(sorted by id) in order, else the JSON's. Evaluates 'instance' (weak transfer [paper]) against `val_instances`, a
COCO instances JSON with masks of the val images, from which the val split is then read (as coco_instances).
"""
from data_pipelines import readers
from data_pipelines.formats import coco_instances

NAME = "coco_detection"
LAYOUT = "COCO detection layout: <images dir>/FILE.jpg and a COCO JSON with 'bbox' annotations"
TRAIN_TASKS = ("box",)
INSTANCE_GT_IN_ANNOTATIONS = False
VAL_PANOPTIC_ANNOTATIONS = False
TFDS_LABEL_CHANNELS = 0
SEGMENTS_ARE_CLASSES = False
# Evaluation reads the val split from `val_instances` as coco_instances does, and scores it the same way.
EVAL_TASKS = coco_instances.EVAL_TASKS
ground_truth = coco_instances.ground_truth
check_example = coco_instances.check_example


def dataset_vocab(entry):
  """The JSON's categories sorted by id (renamed by the names file), all things."""
  return readers.coco_entry_vocab(entry, LAYOUT)


def read_index(entry, name: str, split: str, vocab, bad: readers.BadInput) -> readers.Index:
  """The boxes of split `split` of resolved entry `entry`; a val split with `val_instances` is read from that
  JSON, masks included (a coco_instances index)."""
  names = list(vocab.names) if entry.names else None
  if split == "val" and entry.val_instances:
    return coco_instances.read(name, split, entry.val_images, entry.val_instances, bad, names)
  return read(name, split, entry[f"{split}_images"], entry[f"{split}_annotations"], bad, names)


def read(dataset, split, images_dir, json_path, bad: readers.BadInput, names=None) -> readers.Index:
  """A COCO detection JSON -> boxes per image (`readers.read_coco_boxes`)."""
  return readers.read_coco_boxes(dataset, split, images_dir, json_path, bad, names, fmt=NAME, layout=LAYOUT,
                                 keep_annotations=False)


def decode(index: readers.Index, row: dict, image, r, reduce_zero_label: bool, masks: bool) -> dict:
  """Only the boxes of `row`: idmap None, has_mask False."""
  del index, r, reduce_zero_label, masks
  return readers.boxes_only(image, row)


def val_task(entry) -> str:
  """The task whose targets the val stream decodes: 'instance' (masks) when the val split is `val_instances`."""
  return "instance" if entry.val_instances else entry.task

