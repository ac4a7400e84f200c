"""One dataset's tf.data stream: deterministic order, decode, augmentation and target packing.

Order [default: a deterministic skip-to-step position]: the k-th example that process p draws from
a dataset is global position g = k * P + p of an endless stream (exactly `dataset.shard(P, p)` of
it); g = epoch * R + i reads image `index_shuffle(i, seed=(seed_d, epoch), R - 1)`, a stateless
permutation per epoch. The augmentation of g is keyed by (seed_d, g), so an example's pixels do
not depend on the number of processes, on prefetching or on where the run was resumed. Every
element carries `_pos` = k, so the consumer knows its exact position even when bad examples are
skipped (`ignore_errors` leaves a gap in `_pos` that the consumer counts).

Decoding and packing (see `augment` and `packing`): an example becomes `image`, an id map
(`[h, w]` int32 segment row, -1 void) and per-segment tables (its format module's `decode`, `data_pipelines.formats`),
then the batch contract. Images are decoded to RGB whatever their colour mode (grayscale replicated, alpha dropped,
CMYK converted, as PIL's `convert('RGB')` in detectron2).

With `on_bad_example='skip'` a training stream in which `MAX_CONSECUTIVE_BAD` examples in a row fail
(every file of the dataset broken) ends instead of spinning forever; `mixture.TrainIterator` turns
that end into an error naming the dataset and the first failure (`first_error`).
"""
import os

import numpy as np
import tensorflow as tf

from data_pipelines import augment
from data_pipelines import formats
from data_pipelines import packing
from data_pipelines import readers
from dataseg_jax import contract

# Examples in a row that may fail to decode before a training stream gives up (on_bad_example='skip').
MAX_CONSECUTIVE_BAD = 256


def stream_seed(seed: int, dataset_id: int) -> int:
  """Per-dataset 63-bit seed from the config seed and the dataset's index [default]."""
  return int(np.random.SeedSequence([seed, dataset_id]).generate_state(1, np.uint64)[0] >> 1)


def _decode_image(data):
  """Bytes of a JPEG/PNG/BMP/GIF -> uint8 RGB [h, w, 3]: grayscale is replicated to three channels,
  alpha dropped and CMYK converted, as detectron2/Mask2Former read images (PIL `convert('RGB')`)."""
  return tf.io.decode_image(data, channels=3, expand_animations=False)


class Tables:
  """The index as tensors, gathered per example inside the tf.data map (native files).

  `fetch(r)` is the one interface the decoding uses; `tfds_builders.TfdsTables` serves the same
  rows from prepared TFDS data, so everything after it is one code path.
  """

  def __init__(self, index: readers.Index):
    self.n = len(index)
    self.image_paths = tf.constant(index.image_paths)
    self.label_paths = tf.constant(index.label_paths)
    self.has_labels = any(index.label_paths)
    self.image_ids = tf.constant(index.image_ids, tf.int64)
    self.seg_splits = tf.constant(index.seg_splits, tf.int64)
    self.seg_ids = tf.constant(index.seg_ids, tf.int32)
    self.seg_class = tf.constant(index.seg_class, tf.int32)
    self.seg_crowd = tf.constant(index.seg_crowd, tf.bool)
    self.boxes = tf.constant(index.boxes, tf.float32)

  def segments(self, r):
    lo, hi = self.seg_splits[r], self.seg_splits[r + 1]
    return (self.seg_ids[lo:hi], self.seg_class[lo:hi], self.seg_crowd[lo:hi], self.boxes[lo:hi])

  def fetch(self, r) -> dict:
    """Row r -> encoded image and label bytes, their names for messages, image_id, segment table."""
    ids, cls, crowd, boxes = self.segments(r)
    return dict(image=tf.io.read_file(self.image_paths[r]), image_path=self.image_paths[r],
                label=tf.io.read_file(self.label_paths[r]) if self.has_labels else tf.constant(b""),
                label_path=self.label_paths[r], image_id=self.image_ids[r], ids=ids, cls=cls,
                crowd=crowd, boxes=boxes)


def decode_example(index: readers.Index, tables: Tables, r, reduce_zero_label: bool, masks: bool = True):
  """Image row r -> dict(image [h, w, 3] uint8, idmap [h, w] int32 or None, seg_class [M] local,
  seg_crowd [M], boxes [M, 4] pixel x0 y0 x1 y1, has_mask), decoded by the index's format module.

  `masks=False` (an entry trained with task 'box') keeps only the boxes: idmap None and has_mask False, so the
  box-only losses apply."""
  row = tables.fetch(r)
  image = _decode_image(row["image"])
  return formats.get(index.format).decode(index, row, image, r, reduce_zero_label, masks)


def make_example_fn(index: readers.Index, cfg, dataset_id: int, vocab_union, *, train: bool,
                    out_size: int, pad_to: int, seed: int, reduce_zero_label: bool, task: int,
                    tables: Tables = None):
  """(k, g, r) -> one example in the batch contract (plus `_pos`, `_dropped`; eval: ids, sizes).

  `tables` serves the rows of `index` (default: its native files; `tfds_builders.TfdsTables` for
  prepared TFDS data)."""
  tables = tables or Tables(index)
  local_to_union = tf.constant(vocab_union.local_to_union[dataset_id], tf.int32)
  is_thing = tf.constant(np.asarray(index.vocab.is_thing, bool))
  seed_d = stream_seed(seed, dataset_id)
  masks = keeps_masks(task)
  per_class = task == int(contract.Task.SEMANTIC) and not formats.get(index.format).SEGMENTS_ARE_CLASSES

  def fn(k, g, r):
    ex = decode_example(index, tables, r, reduce_zero_label, masks=masks)
    if per_class:
      ex = packing.one_segment_per_class(ex)
    h, w = tf.shape(ex["image"])[0], tf.shape(ex["image"])[1]
    if train:
      key = tf.stack([tf.constant(seed_d, tf.int64), g])
      ex = augment.large_scale_jitter(ex, key, out_size, cfg.min_scale, cfg.max_scale)
    else:
      ex = augment.resize_longer_side(ex, out_size)
    ex = augment.pad_to(ex, pad_to)
    out, dropped = packing.pack(ex, cfg.max_segments, cfg.label_stride, local_to_union, is_thing)
    out["dataset_id"] = tf.constant(dataset_id, tf.int32)
    out["task"] = tf.constant(task, tf.int32)
    out["_pos"] = tf.cast(k, tf.int64)
    out["_dropped"] = dropped
    if not train:
      out["image_id"] = tables.image_ids[r]
      out["orig_size"] = tf.stack([h, w])
    return out
  return fn


def order(k, process_index: int, process_count: int, n: int, seed_d: int):
  """Stream position k of a process -> (global position g, image row r) [module docstring]."""
  g = k * process_count + process_index
  epoch, i = g // n, g % n
  r = tf.random.experimental.index_shuffle(i, tf.stack([tf.constant(seed_d, tf.int64), epoch]), n - 1)
  return g, r


def train_stream(index: readers.Index, cfg, dataset_id: int, vocab_union, *, start: int,
                 process_index: int, process_count: int, seed: int, out_size: int, pad_to: int,
                 reduce_zero_label: bool, task: int, batch: int = 0,
                 tables: Tables = None) -> tf.data.Dataset:
  """Endless stream of this process's examples from position `start`, batched when `batch` > 0."""
  n, seed_d = len(index), stream_seed(seed, dataset_id)
  fn = make_example_fn(index, cfg, dataset_id, vocab_union, train=True, out_size=out_size,
                       pad_to=pad_to, seed=seed, reduce_zero_label=reduce_zero_label, task=task,
                       tables=tables)

  def load(k):
    g, r = order(k, process_index, process_count, n, seed_d)
    return fn(k, g, r)

  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  if cfg.on_bad_example == "skip":
    ds = _skip_bad(ds, load, batch)
  else:
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch:
      ds = ds.batch(batch, drop_remainder=True)
  return ds.prefetch(max(cfg.prefetch, 1))


def _skip_bad(positions: tf.data.Dataset, load, batch: int) -> tf.data.Dataset:
  """`positions.map(load)` without the examples that fail (batched when `batch` > 0), ending after
  `MAX_CONSECUTIVE_BAD` failures in a row (plus what is in flight) instead of hanging when every example fails.

  The cost is a counter of the positions started since the last element came through: one variable update
  per position and one per element (example or batch)."""
  since_ok = tf.Variable(0, dtype=tf.int64, trainable=False)
  # in flight: at most one example per core in the parallel map, and a batch being filled
  limit = MAX_CONSECUTIVE_BAD + (os.cpu_count() or 1) + batch

  def came_through(ex):
    with tf.control_dependencies([since_ok.assign(0)]):
      return dict(ex, _pos=tf.identity(ex["_pos"]))

  ds = positions.take_while(lambda k: since_ok.assign_add(1) <= limit)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
  if batch:
    ds = ds.batch(batch, drop_remainder=True)
  return ds.map(came_through)


def keeps_masks(task: int) -> bool:
  """Whether examples of `task` carry their masks: box-only supervision has segment_map all void (batch contract)."""
  return task != int(contract.Task.BOX)


def failing_file(index: readers.Index, r: int) -> str:
  """The file of image row r to blame for a failed `decode_example`: its label file (label PNG, panoptic PNG) when
  the image itself decodes, else the image."""
  image, label = index.image_paths[r], index.label_paths[r]
  if not label:
    return image
  try:
    _decode_image(tf.io.read_file(image))
  except tf.errors.OpError:
    return image
  return label


def first_error(index: readers.Index, tables: Tables, reduce_zero_label: bool, task: int, rows):
  """'<file>: <error>' of the first of image `rows` whose decoding fails, decoded again eagerly to name the file
  behind a failure inside tf.data (which does not say which example failed: `failing_file`); None if none fails."""
  tables = tables or Tables(index)
  for r in rows:
    try:
      decode_example(index, tables, tf.constant(int(r), tf.int64), reduce_zero_label,
                     masks=keeps_masks(task))
    except tf.errors.OpError as e:
      msg = " ".join(e.message.split()).split("Summarized data: ")[-1]  # an assertion: its message and file
      return f"{failing_file(index, int(r))}: {msg[:600]}"
    except Exception as e:  # pylint: disable=broad-except  # a Python error raised eagerly
      return f"{index.image_paths[r]}: {type(e).__name__}: {e}"[:800]
  return None


def stream_rows(n: int, start: int, count: int, process_index: int, process_count: int, seed: int,
                dataset_id: int) -> list:
  """Image rows of stream positions start..start+count-1 of a process (`order`), as Python ints."""
  seed_d = stream_seed(seed, dataset_id)
  return [int(order(tf.constant(k, tf.int64), process_index, process_count, n, seed_d)[1])
          for k in range(start, start + count)]


def eval_stream(index: readers.Index, cfg, dataset_id: int, vocab_union, *, size: int,
                reduce_zero_label: bool, task: int, process_index: int = 0,
                process_count: int = 1, tables: Tables = None, skip_bad: bool = False) -> tf.data.Dataset:
  """The split in index order (this process's share), resized (longer side) and padded; unbatched. `_pos` is the
  image row. An example that fails to decode stops the stream with its error, or with `skip_bad` is left out (a gap
  in `_pos` that `mixture.eval_batches` reports)."""
  fn = make_example_fn(index, cfg, dataset_id, vocab_union, train=False, out_size=size, pad_to=size,
                       seed=0, reduce_zero_label=reduce_zero_label, task=task, tables=tables)
  ds = tf.data.Dataset.range(len(index)).shard(process_count, process_index)
  ds = ds.map(lambda r: fn(r, r, r), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if skip_bad:
    ds = ds.ignore_errors(log_warning=True)
  return ds
