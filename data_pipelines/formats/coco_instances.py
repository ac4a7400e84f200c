"""coco_instances: COCO instances JSON with polygon, RLE or uncompressed-RLE `segmentation`.

Trains 'instance' or 'box' (then only the JSON's boxes are used, as for coco_detection). Instances may overlap: the
masks are painted largest first, so where two overlap the smaller one owns the pixel (whatever the JSON order), and
crowd annotations are void where no smaller instance lies on them. All classes are things; names: the entry's names
file renames the categories (sorted by id) in order, else the JSON's. Evaluates 'instance' against its own val JSON
(or `val_instances`, from which the val split is then read).
"""
import numpy as np

from data_pipelines import readers

NAME = "coco_instances"
LAYOUT = "COCO instances layout: <images dir>/FILE.jpg and a COCO JSON with 'segmentation'"
TRAIN_TASKS = ("instance", "box")
EVAL_TASKS = ("instance",)
INSTANCE_GT_IN_ANNOTATIONS = True
VAL_PANOPTIC_ANNOTATIONS = False
TFDS_LABEL_CHANNELS = 0
SEGMENTS_ARE_CLASSES = False


def dataset_vocab(entry):
  """The JSON's categories sorted by id (renamed by the names file), all things."""
  return readers.coco_entry_vocab(entry, LAYOUT)


def read_index(entry, name: str, split: str, vocab, bad: readers.BadInput, reader=None) -> readers.Index:
  """The instances of split `split` of resolved entry `entry` (the val split from `val_instances` when set), read by
  `reader` (default `read`; lvis passes its own, with the same signature)."""
  names = list(vocab.names) if entry.names else None
  json_path = entry.val_instances if split == "val" and entry.val_instances else entry[f"{split}_annotations"]
  return (reader or read)(name, split, entry[f"{split}_images"], json_path, bad, names)


def read(dataset, split, images_dir, json_path, bad: readers.BadInput, names=None) -> readers.Index:
  """A COCO instances JSON -> boxes and annotation dicts per image (`readers.read_coco_boxes`)."""
  return readers.read_coco_boxes(dataset, split, images_dir, json_path, bad, names, fmt=NAME, layout=LAYOUT,
                                 keep_annotations=True)


def decode(index: readers.Index, row: dict, image, r, reduce_zero_label: bool, masks: bool) -> dict:
  """The instance masks of image row `r` rasterised into idmap [h, w] (`rasterise_fn`); with `masks` False (task
  'box') only the boxes, as coco_detection."""
  del reduce_zero_label
  if not masks:
    return readers.boxes_only(image, row)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TensorFlow only where examples are decoded
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  idmap = tf.numpy_function(rasterise_fn(index), [r, h, w], tf.int32, stateful=False)
  idmap = tf.ensure_shape(idmap, [None, None])
  return dict(image=image, idmap=idmap, seg_class=row["cls"], seg_crowd=row["crowd"], boxes=row["boxes"],
              has_mask=True)


def rasterise_fn(index: readers.Index):
  """numpy_function body (r, h, w) -> idmap int32 [h, w]: the instance masks of image row r painted largest first
  (small ones stay on top), crowd ones void."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top

  def fn(r, h, w):
    idmap = np.full((h, w), -1, np.int32)
    anns = index.instance_anns[int(r)]
    masks = []
    for j, ann in enumerate(anns):
      seg = ann.get("segmentation")
      if not seg:
        continue
      if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, int(h), int(w)))
      elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, int(h), int(w))
      else:
        rle = seg
      masks.append((float(mask_utils.area(rle)), j, mask_utils.decode(rle).astype(bool)))
    for _, j, m in sorted(masks, key=lambda t: -t[0]):
      idmap[m] = -1 if anns[j].get("iscrowd", 0) else j
    return idmap
  return fn


def val_task(entry) -> str:
  """The task whose targets the val stream decodes: the entry's own."""
  return entry.task


def ground_truth(entry, index: readers.Index, vocab, instance_gt) -> readers.InstanceGroundTruth:
  """The evaluation ground truth: the instances of the val JSON (`val_instances` when set), `instance_gt`, scored
  by COCOeval (also coco_detection's and lvis')."""
  del entry, index, vocab
  return readers.InstanceGroundTruth(instance_gt)


def check_example(index: readers.Index, r: int, ex: dict) -> tuple:
  """check_dataset's rules for decoded example `ex`: (the class name of each instance or box, no further
  problems) (also coco_detection's and lvis')."""
  return readers.segment_classes(index, r, ex)
