"""Dataset entries of a config -> vocabularies and indexes. Nothing is registered by side effect.

Each entry of `config.data.datasets` (see `dataseg_jax.config.dataset_entry`) is a folder in one of
the formats of `readers.FORMATS`, a task, names, and a sampling `ratio` (0: evaluation only, not in
the training mixture). The union vocabulary holds the training entries (ratio > 0) in config order, then
the evaluation-only entries (ratio 0 with `eval_tasks`); a ratio-0 entry without `eval_tasks` is unused and
left out. So the union rows and class masks of the training datasets do not depend on evaluation-only
entries, and names that only those have (held-out, open-vocabulary classes) are in no training
dataset's `class_mask`: their rows are masked out of every training example.

Panoptic ground truth of a semantic-only dataset (weak transfer): `val_panoptic_annotations` (COCO
panoptic JSON) and `val_panoptic_dir` (its PNGs) on a `semantic_png` entry attach it to the val index
(`readers.Index.panoptic_gt`, matched by file stem).

Names: `entry.names` is a names file (one class per line in label order; `dataseg_jax.vocab.names` gives the
rule), or '' to take them from the annotation JSON (COCO formats) or, for `semantic_png`, from
`objectInfo150.txt`/`names.txt` in the dataset root (the parent of `images/`), falling back to the built-in
ADE-150 list. Thing flags: COCO panoptic JSON `isthing`; detection and instance formats are all things;
`semantic_png` takes `entry.thing_classes` (a names file), else the built-in ADE-150 flags when the names are
ADE's, else all stuff.
"""
import os
import pathlib

from absl import logging
import ml_collections

from data_pipelines import readers
from dataseg_jax import contract
from dataseg_jax.vocab import names as names_lib
from dataseg_jax.vocab import vocabulary

_PATH_KEYS = ("train_images", "train_annotations", "train_panoptic_dir", "val_images",
              "val_annotations", "val_panoptic_dir", "val_instances", "val_panoptic_annotations", "names",
              "thing_classes")
TASKS_BY_FORMAT = {
    "semantic_png": ("semantic",),
    "coco_panoptic": ("panoptic", "semantic", "instance"),
    "coco_detection": ("box",),
    "coco_instances": ("instance", "box"),
}


def resolve_entry(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of entry `name` with its paths joined to `config.data_dir`, after checking its fields."""
  if name not in config.data.datasets:
    raise ValueError(f"unknown dataset {name!r}; config.data.datasets has {list(config.data.datasets)}")
  e = ml_collections.ConfigDict(config.data.datasets[name].to_dict())
  where = f"config.data.datasets.{name}"
  if e.format not in readers.FORMATS:
    raise ValueError(f"{where}.format: {e.format!r} is not one of {readers.FORMATS}")
  contract.task_from_name(e.task)
  if e.task not in TASKS_BY_FORMAT[e.format]:
    raise ValueError(f"{where}.task: {e.task!r} cannot be trained from {e.format}; "
                     f"expected one of {TASKS_BY_FORMAT[e.format]}")
  if e.ratio < 0:
    raise ValueError(f"{where}.ratio: must be >= 0 (0 = evaluation only), got {e.ratio}")
  if "val_panoptic_annotations" not in e:
    e.val_panoptic_annotations = ""
  if e.val_panoptic_annotations and e.format != "semantic_png":
    raise ValueError(f"{where}.val_panoptic_annotations is for semantic_png entries; a {e.format} entry "
                     "takes its val ground truth from val_annotations")
  if e.val_panoptic_annotations and not e.val_panoptic_dir:
    raise ValueError(f"{where}.val_panoptic_dir is empty; set it to the folder of the PNGs of "
                     f"val_panoptic_annotations={e.val_panoptic_annotations!r}")
  root = pathlib.Path(os.path.expanduser(config.data_dir or "."))
  for key in _PATH_KEYS:
    if e.get(key):
      e[key] = str(root / os.path.expanduser(e[key]))
  return e


def _semantic_names(e) -> list:
  if e.names:
    return names_lib.read_names(e.names)
  root = pathlib.Path(e.train_images or e.val_images).parent.parent
  for candidate in ("objectInfo150.txt", "names.txt"):
    if (root / candidate).is_file():
      return names_lib.read_names(root / candidate)
  logging.info("no names file for %s; using the built-in ADE-150 names", root)
  return list(vocabulary.load_builtin("ade150")[0].names)


def _semantic_things(e, names) -> tuple:
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


def _json_categories(path) -> dict:
  readers.require_file(path, "annotation", "coco_detection")
  data = readers.read_json(path)
  if not isinstance(data.get("categories"), list):
    raise ValueError(f"{path} has no 'categories' list; expected a COCO-format JSON")
  return {"images": [], "annotations": [], "categories": data["categories"]}


def dataset_vocab(entry) -> vocabulary.DatasetVocab:
  """The local vocabulary of a resolved entry (names in label order, thing flags)."""
  if entry.format == "semantic_png":
    names = _semantic_names(entry)
    return vocabulary.DatasetVocab(tuple(names), _semantic_things(entry, names))
  json_path = entry.train_annotations or entry.val_annotations or entry.val_instances
  names = names_lib.read_names(entry.names) if entry.names else None
  vocab, _ = readers.coco_vocab(_json_categories(json_path), entry.format, names, json_path)
  return vocab


def vocab_datasets(config: ml_collections.ConfigDict) -> tuple:
  """(training entries: ratio > 0, evaluation-only entries: ratio 0 with eval_tasks), each in config order."""
  ds = config.data.datasets
  train = [n for n in ds if ds[n].ratio > 0]
  eval_only = [n for n in ds if ds[n].ratio == 0 and tuple(ds[n].eval_tasks)]
  unused = [n for n in ds if ds[n].ratio == 0 and not tuple(ds[n].eval_tasks)]
  if unused:
    logging.warning("datasets %s have ratio 0 and no eval_tasks: left out of the vocabulary", unused)
  return train, eval_only


def build_vocab(config: ml_collections.ConfigDict) -> vocabulary.UnionVocab:
  """UnionVocab over the training then the evaluation-only entries (see the module docstring); logs it."""
  if not config.data.datasets:
    raise ValueError("config.data.datasets is empty; add at least one dataset entry")
  train, eval_only = vocab_datasets(config)
  if not train + eval_only:
    raise ValueError("no dataset entry has ratio > 0 or eval_tasks; give an entry a ratio to train on it")
  vocabs = {name: dataset_vocab(resolve_entry(config, name)) for name in train + eval_only}
  union = vocabulary.UnionVocab.from_datasets(vocabs, eval_only=eval_only)
  logging.info("%s", union.summary())
  return union


def build_index(config: ml_collections.ConfigDict, name: str, split: str,
                vocab: vocabulary.DatasetVocab = None, bad: readers.BadInput = None) -> readers.Index:
  """Index of split 'train' or 'val' of dataset `name` (for 'val' with `val_instances`: those masks).

  Bad input follows `config.data.on_bad_example` for 'train' and `config.eval.on_bad_example` for 'val'; `bad`
  overrides it (check_dataset.py passes a 'skip' one and reads its messages)."""
  e = resolve_entry(config, name)
  if split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")
  images = e[f"{split}_images"]
  if not images:
    raise ValueError(f"config.data.datasets.{name}.{split}_images is empty; set the {split} image folder")
  readers.require_dir(images, f"{name} {split} images", e.format)
  vocab = vocab or dataset_vocab(e)
  section = "data" if split == "train" else "eval"
  bad = bad or readers.BadInput(config[section].on_bad_example, f"{name}/{split}", f"config.{section}.on_bad_example")
  names = list(vocab.names) if e.names else None
  if e.format == "semantic_png":
    panoptic = None
    if split == "val" and e.val_panoptic_annotations:
      panoptic = (e.val_panoptic_annotations, e.val_panoptic_dir)
    return readers.read_semantic_png(name, split, images, e[f"{split}_annotations"], vocab, bad, panoptic)
  if e.format == "coco_panoptic":
    return readers.read_coco_panoptic(name, split, images, e[f"{split}_annotations"],
                                      e[f"{split}_panoptic_dir"], bad, names)
  if split == "val" and e.val_instances:
    return readers.read_coco_boxes(name, split, images, e.val_instances, bad, names, "coco_instances")
  return readers.read_coco_boxes(name, split, images, e[f"{split}_annotations"], bad, names, e.format)
