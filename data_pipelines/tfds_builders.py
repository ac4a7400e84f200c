"""TFDS builders (manual_dir) for the training formats: prepare records once from the native files.

  python scripts/prepare_tfds.py --config configs/dataseg_r50.py --config.data_dir=/datasets \
      --dataset coco --out ~/tensorflow_datasets

`config.data_dir` is the manual_dir: the builder reads the entry's native files through the same
readers as the direct path (its format module, with the same bad-input policy) and writes `train` and
`validation` splits. Features: `image` (encoded as on disk), `label` (the per-image label PNG as on disk, with the
format's `TFDS_LABEL_CHANNELS`: semantic_png's uint8 PNG, so a palette PNG keeps its indices; coco_panoptic's RGB-id
PNG; absent for the JSON-only formats), `image_id`, and `segments` (per segment: panoptic `id`, dataset-local
`class`, `crowd`, `box` pixel x0 y0 x1 y1). Builders are built from a config entry and skip TFDS's global registration
(nothing registered by side effect).

Records are written unshuffled in the native index's row order, as ArrayRecord (random access), so
row r of the prepared split is row r of the native index. An entry with `tfds_dir` set trains and
evaluates from them (`load_split` + `TfdsTables`): the pipeline's order, augmentation, sharding
and restore are keyed by row and position exactly as for native files, so the batches are the same.
"""
import collections
import os
import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from data_pipelines import formats
from data_pipelines import pipeline
from data_pipelines import readers
from data_pipelines import registry

_SPLITS = {"train": "train", "validation": "val"}


class NativeFormatBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One dataset entry of a config -> a TFDS dataset named after the entry."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: image, label PNG, segments table."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the dataset in its native layout under config.data_dir "
                                  "(see data_pipelines/formats/) and pass that as manual_dir.")

  def __init__(self, *, config, dataset: str, **kwargs):
    self._cfg, self._dataset = config, dataset
    self._entry = registry.resolve_entry(config, dataset)
    self.name = dataset
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "image_id": np.int64,
        "segments": tfds.features.Sequence({
            "id": np.int32, "class": np.int32, "crowd": np.bool_,
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32)}),
    }
    channels = formats.get(self._entry.format).TFDS_LABEL_CHANNELS
    if channels:
      features["label"] = tfds.features.Image(shape=(None, None, channels), encoding_format="png")
    vocab = registry.dataset_vocab(self._entry)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=list(vocab.names), is_thing=list(vocab.is_thing),
                                        format=self._entry.format, task=self._entry.task,
                                        formats={}, skipped={}, image_ids={}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {tfds_split: self._generate_examples(split) for tfds_split, split in _SPLITS.items()
            if self._entry[f"{split}_images"]}

  def _generate_examples(self, split):
    index = registry.build_index(self._cfg, self._dataset, split)
    self.info.metadata["formats"][split] = index.format
    self.info.metadata["skipped"][split] = dict(index.skipped)
    self.info.metadata["image_ids"][split] = [int(i) for i in index.image_ids]
    for r in range(len(index)):
      lo, hi = index.seg_splits[r], index.seg_splits[r + 1]
      ex = {
          "image": index.image_paths[r],
          "image_id": index.image_ids[r],
          "segments": {"id": index.seg_ids[lo:hi], "class": index.seg_class[lo:hi],
                       "crowd": index.seg_crowd[lo:hi], "box": index.boxes[lo:hi]},
      }
      if index.label_paths[r]:
        ex["label"] = index.label_paths[r]
      yield r, ex


def _prepared_dir(tfds_dir: str, dataset: str) -> str:
  """`tfds_dir` (the --out of this module) -> the newest prepared version folder of `dataset`."""
  root = pathlib.Path(os.path.expanduser(tfds_dir)) / dataset
  versions = sorted(root.glob("*.*.*/dataset_info.json")) if root.is_dir() else []
  if not versions:
    raise ValueError(f"no prepared TFDS data for {dataset!r} under {root} (expected {root}/<version>/"
                     "dataset_info.json); prepare it with python scripts/prepare_tfds.py "
                     f"--config CONFIG --dataset {dataset} --out {tfds_dir}")
  return str(versions[-1].parent)


def load_split(tfds_dir: str, dataset: str, split: str, vocab) -> tuple:
  """Prepared split 'train'/'val' of `dataset` -> (readers.Index without file paths, TfdsTables).

  The Index carries what the pipeline needs besides the rows (length, format, vocab, image ids,
  index-time skip counts); the rows come from the records through `TfdsTables.fetch`.
  """
  builder = tfds.builder_from_directory(_prepared_dir(tfds_dir, dataset))
  meta, tfds_split = builder.info.metadata, {v: k for k, v in _SPLITS.items()}[split]
  if tfds_split not in builder.info.splits:
    raise ValueError(f"prepared TFDS data of {dataset!r} at {builder.data_dir} has no {tfds_split!r} split; "
                     f"set the entry's {split}_images and prepare it again")
  if not builder.info.disable_shuffling or "image_ids" not in meta:
    raise ValueError(f"prepared TFDS data of {dataset!r} at {builder.data_dir} was not written in row order by "
                     "this version of data_pipelines.tfds_builders; prepare it again")
  if list(meta["class_names"]) != list(vocab.names):
    raise ValueError(f"prepared TFDS data of {dataset!r} at {builder.data_dir} has other class names than the "
                     "config entry; prepare it again from this config")
  source = builder.as_data_source(split=tfds_split, decoders={
      k: tfds.decode.SkipDecoding() for k in ("image", "label") if k in builder.info.features})
  n = len(source)
  if len(meta["image_ids"][split]) != n:
    raise ValueError(f"prepared TFDS data of {dataset!r} at {builder.data_dir}: {n} records but "
                     f"{len(meta['image_ids'][split])} image ids in its metadata; prepare it again")
  where = [f"{builder.data_dir}[{tfds_split}][{r}]" for r in range(n)]
  tables = TfdsTables(source, np.array(meta["image_ids"][split], np.int64), where,
                      "label" in builder.info.features)
  zeros = np.zeros([0], np.int32)
  index = readers.Index(
      dataset=dataset, format=meta["formats"][split], split=split, vocab=vocab, image_paths=where,
      label_paths=where if tables.has_labels else [""] * n, image_ids=tables.image_ids_np,
      sizes=np.full((n, 2), -1, np.int32), seg_splits=np.zeros([n + 1], np.int64), seg_ids=zeros,
      seg_class=zeros, seg_crowd=zeros.astype(bool), boxes=np.zeros([0, 4], np.float32),
      instance_anns=[[] for _ in range(n)], skipped=collections.Counter(meta["skipped"][split]))
  return index, tables


class TfdsTables(pipeline.Tables):
  """Rows of a prepared split served by random access (same `fetch` as the native tables)."""

  def __init__(self, source, image_ids: np.ndarray, where: list, has_labels: bool):  # pylint: disable=super-init-not-called
    self._source, self.n, self.has_labels = source, len(image_ids), has_labels
    self.image_ids_np = image_ids
    self.image_ids = tf.constant(image_ids, tf.int64)
    self.where = tf.constant(where)

  def _read(self, r):
    ex = self._source[int(r)]
    seg = ex["segments"]
    return (ex["image"], ex.get("label", b""), np.asarray(seg["id"], np.int32),  # empty: a list
            np.asarray(seg["class"], np.int32), np.asarray(seg["crowd"], bool),
            np.asarray(seg["box"], np.float32).reshape(-1, 4))

  def fetch(self, r) -> dict:
    image, label, ids, cls, crowd, boxes = tf.numpy_function(
        self._read, [r], [tf.string, tf.string, tf.int32, tf.int32, tf.bool, tf.float32], stateful=False)
    return dict(image=tf.ensure_shape(image, []), image_path=self.where[r], label=tf.ensure_shape(label, []),
                label_path=self.where[r], image_id=self.image_ids[r], ids=tf.ensure_shape(ids, [None]),
                cls=tf.ensure_shape(cls, [None]), crowd=tf.ensure_shape(crowd, [None]),
                boxes=tf.ensure_shape(boxes, [None, 4]))


def build(config, dataset: str, out_dir: str) -> NativeFormatBuilder:
  """Prepares dataset `dataset` of `config` under `out_dir` and returns the builder (TFDS reuses a version already
  prepared there: refused when the entry's native files now hold other images, see `_refuse_stale`)."""
  _refuse_stale(config, dataset, out_dir)
  builder = NativeFormatBuilder(config=config, dataset=dataset, data_dir=out_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.data_dir))
  return builder


def _refuse_stale(config, dataset: str, out_dir: str) -> None:
  """ValueError when `out_dir` already holds a prepared `dataset` whose images (ids, in row order) differ from
  those of the entry's native files now: TFDS would reuse it and train on the old data."""
  try:
    path = _prepared_dir(out_dir, dataset)
  except ValueError:
    return  # nothing prepared yet
  stored = tfds.builder_from_directory(path).info.metadata.get("image_ids", {})
  entry = registry.resolve_entry(config, dataset)
  for split in _SPLITS.values():
    if not entry[f"{split}_images"]:
      continue
    now = [int(i) for i in registry.build_index(config, dataset, split).image_ids]
    if list(stored.get(split, [])) != now:
      raise ValueError(f"{path} was prepared from other {split} images ({len(stored.get(split, []))} then, "
                       f"{len(now)} now); delete {os.path.dirname(path)} and prepare again")

