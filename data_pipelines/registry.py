"""Dataset entries of a config -> vocabularies and indexes. Nothing is registered by side effect.

Each entry of `config.data.datasets` (see `dataseg_jax.config.dataset_entry`) is a folder in one of
the formats of `data_pipelines.formats` (its module reads, decodes and checks it), a task, names, and a sampling
`ratio` (0: evaluation only, not in
the training mixture). The union vocabulary holds the training entries (ratio > 0) in config order, then
the evaluation-only entries (ratio 0 with `eval_tasks`); a ratio-0 entry without `eval_tasks` is unused and
left out. So the union rows and class masks of the training datasets do not depend on evaluation-only
entries, and names that only those have (held-out, open-vocabulary classes) are in no training
dataset's `class_mask`: their rows are masked out of every training example.

Panoptic ground truth of a semantic-only dataset (weak transfer): `val_panoptic_annotations` (COCO
panoptic JSON) and `val_panoptic_dir` (its PNGs) on an entry of a format that takes them (semantic_png) attach it
to the val index (`readers.Index.panoptic_gt`, matched by file stem).

Names: `entry.names` is a names file (one class per line in label order; `dataseg_jax.vocab.names` gives the
rule), or '' to take them where the format says (the annotation JSON's categories, or a names file next to the
images); thing flags likewise (each format module's `dataset_vocab`).
"""
import os
import pathlib

from absl import logging
import ml_collections

from data_pipelines import formats
from data_pipelines import readers
from dataseg_jax.vocab import vocabulary

_PATH_KEYS = ("train_images", "train_annotations", "train_panoptic_dir", "val_images",
              "val_annotations", "val_panoptic_dir", "val_instances", "val_panoptic_annotations", "names",
              "thing_classes")


def resolve_entry(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of entry `name` with its paths joined to `config.data_dir` (its fields are checked by config.validate)."""
  if name not in config.data.datasets:
    raise ValueError(f"unknown dataset {name!r}; config.data.datasets has {list(config.data.datasets)}")
  e = ml_collections.ConfigDict(config.data.datasets[name].to_dict())
  if "val_panoptic_annotations" not in e:
    e.val_panoptic_annotations = ""
  root = pathlib.Path(os.path.expanduser(config.data_dir or "."))
  for key in _PATH_KEYS:
    if e.get(key):
      e[key] = str(root / os.path.expanduser(e[key]))
  return e


def dataset_vocab(entry) -> vocabulary.DatasetVocab:
  """The local vocabulary of a resolved entry (names in label order, thing flags), as its format reads it."""
  return formats.get(entry.format).dataset_vocab(entry)


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
  """UnionVocab over the training then the evaluation-only entries (see the module docstring); logs it.

  Raises ValueError when no entry trains or evaluates (config.validate admits that: a run may feed its own batches
  and vocabulary instead of dataset entries)."""
  train, eval_only = vocab_datasets(config)
  if not train + eval_only:
    raise ValueError(f"config.data.datasets: no entry has ratio > 0 or eval_tasks (entries: "
                     f"{list(config.data.datasets)}); add a dataset entry with a ratio to train on it or eval_tasks "
                     "to evaluate it")
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
  fmt = formats.get(e.format)
  readers.require_dir(images, f"{name} {split} images", fmt.LAYOUT)
  vocab = vocab or dataset_vocab(e)
  section = "data" if split == "train" else "eval"
  bad = bad or readers.BadInput(config[section].on_bad_example, f"{name}/{split}", f"config.{section}.on_bad_example")
  return fmt.read_index(e, name, split, vocab, bad)
