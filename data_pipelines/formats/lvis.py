"""lvis: LVIS v1 JSON (COCO instances over the COCO 2017 images, 1203 categories) [LVIS, Gupta et al. CVPR 2019].

An LVIS JSON is a COCO instances JSON with three differences, handled here: an image names its file by `coco_url`
(e.g. 'http://images.cocodataset.org/val2017/000000397133.jpg') rather than `file_name`, and the LVIS val split
draws images from both COCO folders, so the file is the URL's last two parts under the COCO root ('val2017/
000000397133.jpg', detectron2's rule; a `file_name` when present wins); each image lists `not_exhaustive_category_ids`
and `neg_category_ids` (federated annotation); its categories carry `synonyms` and `frequency`.

Entry: `train_images` / `val_images` = the COCO root (the folder holding train2017/ and val2017/),
`train_annotations` / `val_annotations` = lvis_v1_train.json / lvis_v1_val.json. Everything else is coco_instances:
the masks are rasterised the same way, all classes are things, names come from the categories (underscores become
spaces when normalised: 'aerosol_can' -> 'aerosol can'). Trains 'instance' or 'box'; evaluates 'instance' with
COCOeval over every category: not LVIS's federated AP, which scores a category on an image only where the image's
`neg_category_ids` or annotations say it was looked for, so AP here is lower than the LVIS API's.
"""
from data_pipelines import readers
from data_pipelines.formats import coco_instances

NAME = "lvis"
LAYOUT = ("LVIS layout: <COCO root>/{train2017,val2017}/FILE.jpg and an LVIS JSON (COCO instances whose images "
          "name their file by 'coco_url' and list 'not_exhaustive_category_ids' and 'neg_category_ids')")
# What an instances JSON gives, decoding and evaluation are coco_instances' own; only reading the JSON differs.
TRAIN_TASKS = coco_instances.TRAIN_TASKS
EVAL_TASKS = coco_instances.EVAL_TASKS
INSTANCE_GT_IN_ANNOTATIONS = coco_instances.INSTANCE_GT_IN_ANNOTATIONS
VAL_PANOPTIC_ANNOTATIONS = coco_instances.VAL_PANOPTIC_ANNOTATIONS
TFDS_LABEL_CHANNELS = coco_instances.TFDS_LABEL_CHANNELS
SEGMENTS_ARE_CLASSES = coco_instances.SEGMENTS_ARE_CLASSES
decode = coco_instances.decode
val_task = coco_instances.val_task
ground_truth = coco_instances.ground_truth
check_example = coco_instances.check_example


def dataset_vocab(entry):
  """The JSON's categories sorted by id (renamed by the names file), all things."""
  return readers.coco_entry_vocab(entry, LAYOUT)


def read_index(entry, name: str, split: str, vocab, bad: readers.BadInput) -> readers.Index:
  """coco_instances' index of the split, read by `read`."""
  return coco_instances.read_index(entry, name, split, vocab, bad, reader=read)


def read(dataset, split, coco_root, json_path, bad: readers.BadInput, names=None) -> readers.Index:
  """An LVIS JSON -> boxes and annotation dicts per image, each image's file named by its `coco_url`."""
  data = readers.load_json(json_path, LAYOUT)
  for im in data["images"]:
    if isinstance(im, dict) and "file_name" not in im and isinstance(im.get("coco_url"), str):
      im["file_name"] = "/".join(im["coco_url"].split("/")[-2:])
  return readers.read_coco_boxes(dataset, split, coco_root, json_path, bad, names, fmt=NAME, layout=LAYOUT,
                                 keep_annotations=True, data=data)

