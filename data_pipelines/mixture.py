"""The training mixture and evaluation batches (docs/contracts.md, "Data").

Dataset choice [paper: each step samples one dataset by ratio; the draw itself: default]:
- `per_batch`: step t draws dataset d_t with probability ratio_d / sum(ratio); the draw depends only
  on (config.seed, t), so every process draws the same dataset and the whole global batch comes
  from it.
- `per_example`: slot b of step t (global example j = t B + b) draws its own dataset from
  (config.seed, j); process p fills slots [p B/P, (p+1) B/P).
Draws are stratified in blocks of 64 [default]: block b takes u_i = (i + U_i) / 64 for i < 64,
U ~ U(0, 1), in a random order, all from `numpy.random.default_rng([seed, 0xC401CE, b])`, and maps
u to a dataset through the ratios' CDF. Every block then holds each dataset in proportion to its
ratio (within one draw), so realised proportions track the ratios closely at any horizon while
the order stays random.

Position: `get_state()` is {step, consumed[d]}: the step count and, per dataset, how many positions
of this process's stream (see `pipeline`) have been consumed. `set_state` rebuilds the streams at
those positions, so a restored iterator yields exactly the batches an uninterrupted one would.
Bad examples skipped inside tf.data show up as gaps in the stream positions and are counted
(`bad_counts`), as are index-time skips and segments over `max_segments`. Every skipped item is also named, with
its reason, in the skip log (`SkipLog`, WORKDIR/skipped.tsv during training).

Evaluation (`eval_batches`): an example that fails to decode is an error naming its file
(`config.eval.on_bad_example='error'`, the default), or with 'skip' left out, logged and handed to the caller,
which scores its ground truth as missed.
"""
import collections
import os

from absl import logging
import numpy as np
import tensorflow as tf

from data_pipelines import formats
from data_pipelines import pipeline
from data_pipelines import registry
from dataseg_jax import contract

_BLOCK = 64
_CHOICE_SALT = 0xC401CE


def skip_log_path(workdir: str, process_index: int = 0) -> str:
  """The training skip log of a process: WORKDIR/skipped.tsv (process 0), WORKDIR/skipped.p<k>.tsv (process k)."""
  return os.path.join(workdir, "skipped.tsv" if process_index == 0 else f"skipped.p{process_index}.tsv")


def _log_line(*fields) -> str:
  return "\t".join(" ".join(str(v).split()) for v in fields) + "\n"


class SkipLog:
  """The skip log: a header, then one tab-separated line `step dataset reason message` per skipped item, the
  message naming the file (or the JSON and the image or annotation id) and the fix.

  Items skipped while indexing have step 'index'; an example the input pipeline skipped has the step whose batch it
  would have joined. `start(step)` (at 0, or at the step a run resumes from) keeps the lines of earlier steps and
  drops the rest, so a resumed run lists every skip once.
  """
  HEADER = "step\tdataset\treason\tmessage\n"

  def __init__(self, path: str):
    self.path = path

  def start(self, step: int, index_skips: list) -> None:
    """Rewrites the log at `step` with `index_skips` [(dataset, reason, message)]."""
    kept = []
    if tf.io.gfile.exists(self.path):
      with tf.io.gfile.GFile(self.path) as f:
        kept = [line for line in f.readlines()[1:] if line.split("\t", 1)[0].isdigit()
                and int(line.split("\t", 1)[0]) <= step]
    with tf.io.gfile.GFile(self.path, "w") as f:
      f.write(self.HEADER + "".join(_log_line("index", *item) for item in index_skips) + "".join(kept))

  def add(self, step: int, dataset: str, reason: str, message: str) -> None:
    with tf.io.gfile.GFile(self.path, "a") as f:
      f.write(_log_line(step, dataset, reason, message))


def choice_probabilities(config) -> tuple:
  """(training dataset names, probabilities): entries with ratio > 0, in config order."""
  names = [n for n in config.data.datasets if config.data.datasets[n].ratio > 0]
  if not names:
    raise ValueError("no dataset has ratio > 0 in config.data.datasets; give at least one a ratio")
  ratios = np.array([config.data.datasets[n].ratio for n in names], np.float64)
  return names, ratios / ratios.sum()


def draws(seed: int, probabilities, start: int, count: int) -> np.ndarray:
  """Dataset choices for draws start..start+count-1 (steps or global examples), int64 [count]."""
  cdf = np.cumsum(probabilities)
  cdf[-1] = 1.0
  out = []
  first, last = start // _BLOCK, (start + count - 1) // _BLOCK
  for block in range(first, last + 1):
    rng = np.random.default_rng([seed, _CHOICE_SALT, block])
    u = rng.permutation((np.arange(_BLOCK) + rng.random(_BLOCK)) / _BLOCK)
    out.append(np.searchsorted(cdf, u, side="right"))
  flat = np.concatenate(out)
  off = start - first * _BLOCK
  return flat[off:off + count]


def dataset_choices(config, steps: int, start_step: int = 0) -> np.ndarray:
  """Training-dataset position per example for `steps` steps: int64 [steps, batch_size] (fast path).

  per_batch rows are constant (one dataset per step); per_example rows mix datasets.
  """
  _, p = choice_probabilities(config)
  b = config.data.batch_size
  if config.data.mixture_mode == "per_batch":
    return np.repeat(draws(config.seed, p, start_step, steps)[:, None], b, axis=1)
  return draws(config.seed, p, start_step * b, steps * b).reshape(steps, b)


def split_source(config, name: str, split: str, vocab) -> tuple:
  """(Index, Tables or None) of split 'train'/'val' of entry `name`: native files, or its prepared TFDS
  data when the entry sets `tfds_dir` (relative to `config.data_dir`). A val split read from
  `val_instances` (masks in the JSON) always comes from the native files."""
  e = registry.resolve_entry(config, name)
  if not e.get("tfds_dir") or (split == "val" and e.val_instances):
    return registry.build_index(config, name, split, vocab), None
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  tfds_dir = os.path.join(os.path.expanduser(config.data_dir or "."), os.path.expanduser(e.tfds_dir))
  return tfds_builders.load_split(tfds_dir, name, split, vocab)


def _entry_size(config, entry) -> int:
  return int(entry.image_size or config.data.image_size)


class TrainIterator:
  """Yields this process's share of each global batch (numpy dicts in the batch contract); with `skip_log` (a
  path, `skip_log_path`) every skipped item is named there (`SkipLog`)."""

  def __init__(self, config, vocab, process_index: int = 0, process_count: int = 1, skip_log: str = ""):
    d = config.data
    if d.batch_size % process_count:
      raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by {process_count} processes")
    self._config, self._vocab = config, vocab
    self._pi, self._pc = process_index, process_count
    self._local = d.batch_size // process_count
    self.names, self._p = choice_probabilities(config)
    self._entries = {n: registry.resolve_entry(config, n) for n in self.names}
    self._sizes = {n: _entry_size(config, e) for n, e in self._entries.items()}
    self._pad = max(self._sizes.values())
    self._indexes, self._tables = {}, {}
    for n in self.names:
      did = vocab.dataset_index(n)
      local_vocab = registry.dataset_vocab(self._entries[n])
      if list(local_vocab.names) != list(vocab.local_names[did]):
        raise ValueError(f"dataset {n!r}: its names differ from the vocabulary's; rebuild the vocabulary")
      self._indexes[n], self._tables[n] = split_source(config, n, "train", local_vocab)
    self.bad_counts = {n: collections.Counter(self._indexes[n].skipped) for n in self.names}
    self._step = 0
    self._consumed = {n: 0 for n in self.names}
    self._iters = {}
    self._skip_log = SkipLog(skip_log) if skip_log else None
    self._log_started = False

  # ------------------------------------------------------------------ position
  def get_state(self) -> dict:
    """JSON-serialisable position: step, per-dataset consumed positions, and what they depend on."""
    return {"step": self._step, "consumed": dict(self._consumed), "seed": int(self._config.seed),
            "mode": self._config.data.mixture_mode, "process": [self._pi, self._pc]}

  def set_state(self, state: dict) -> None:
    """Restores a position from `get_state()`; the next batch is the one that followed it."""
    for key, mine in (("seed", int(self._config.seed)), ("mode", self._config.data.mixture_mode),
                      ("process", [self._pi, self._pc])):
      if list(np.atleast_1d(state[key])) != list(np.atleast_1d(mine)):
        raise ValueError(f"iterator state has {key}={state[key]!r} but this run has {mine!r}; "
                         "restore with the same config and process layout")
    if set(state["consumed"]) != set(self.names):
      raise ValueError(f"iterator state covers datasets {sorted(state['consumed'])} but the mixture "
                       f"has {sorted(self.names)}")
    self._step = int(state["step"])
    self._consumed = {n: int(state["consumed"][n]) for n in self.names}
    self._iters = {}
    self._log_started = False

  def close(self) -> None:
    """Drops the tf.data streams (the next batch opens them again at the same position). Call it before an
    exception leaves the iterator alive in a traceback: a stream whose Python callbacks (`tf.numpy_function`:
    instance masks, palette labels, TFDS records) are still in flight at interpreter exit hangs the process."""
    self._iters = {}

  # ------------------------------------------------------------------ streams
  def _stream(self, name: str):
    if name not in self._iters:
      e, cfg = self._entries[name], self._config
      batch = self._local if cfg.data.mixture_mode == "per_batch" else 0
      pad = self._sizes[name] if batch else self._pad
      ds = pipeline.train_stream(
          self._indexes[name], cfg.data, self._vocab.dataset_index(name), self._vocab,
          start=self._consumed[name], process_index=self._pi, process_count=self._pc, seed=cfg.seed,
          out_size=self._sizes[name], pad_to=pad, reduce_zero_label=e.reduce_zero_label,
          task=int(contract.task_from_name(e.task)), batch=batch, tables=self._tables[name])
      self._iters[name] = iter(ds.as_numpy_iterator())
    return self._iters[name]

  def _next_from(self, name: str) -> dict:
    try:
      ex = next(self._stream(name))
    except tf.errors.OpError as e:
      detail = self._first_failure(name, self._local) or e.message
      raise ValueError(f"dataset {name!r}: bad example: {detail}. Fix or remove the file, or set "
                       "config.data.on_bad_example='skip' to count and skip bad examples") from None
    except StopIteration:  # the endless stream ended: every example failed (pipeline._skip_bad)
      raise ValueError(
          f"dataset {name!r}: over {pipeline.MAX_CONSECUTIVE_BAD} examples in a row failed to decode "
          "(on_bad_example='skip' skipped them all), so it has no usable example; first error: "
          f"{self._first_failure(name, 8) or 'none when decoded again; see the warnings logged above'}. "
          f"Fix its files (scripts/check_dataset.py --dataset {name} lists every problem) or remove it "
          "from config.data.datasets.") from None
    pos = np.atleast_1d(ex.pop("_pos"))
    dropped = int(np.sum(ex.pop("_dropped")))
    gaps = sorted(set(range(self._consumed[name], int(pos[-1]) + 1)) - set(pos.tolist()))
    if gaps:
      self.bad_counts[name]["undecodable_or_invalid"] += len(gaps)
      named = [self._failure_at(name, k) for k in gaps]
      if self._skip_log:
        for message in named:
          self._skip_log.add(self._step + 1, name, "undecodable_or_invalid", message)
      logging.warning("%s: skipped %d bad example(s): %s; counts so far: %s", name, len(gaps), "; ".join(named[:3]),
                      dict(self.bad_counts[name]))
    if dropped:
      self.bad_counts[name]["segments_over_max"] += dropped
    self._consumed[name] = int(pos[-1]) + 1
    return ex

  def _failure_at(self, name: str, position: int) -> str:
    """'<file>: <error>' of the example at stream `position` of `name`, which the input pipeline skipped."""
    index = self._indexes[name]
    row = pipeline.stream_rows(len(index), position, 1, self._pi, self._pc, self._config.seed,
                               self._vocab.dataset_index(name))[0]
    e = self._entries[name]
    return (pipeline.first_error(index, self._tables[name], e.reduce_zero_label, int(contract.task_from_name(e.task)),
                                 [row]) or f"{index.image_paths[row]}: failed in the input pipeline, decodes when read "
                                           "again (a transient read error?)")

  def _first_failure(self, name: str, count: int):
    """'<file>: <error>' of the first of the next `count` examples of `name`'s stream that fails to decode
    (decoded again eagerly, only after a failure), or None."""
    index, e = self._indexes[name], self._entries[name]
    rows = pipeline.stream_rows(len(index), self._consumed[name], count, self._pi, self._pc,
                                self._config.seed, self._vocab.dataset_index(name))
    return pipeline.first_error(index, self._tables[name], e.reduce_zero_label,
                                int(contract.task_from_name(e.task)), rows)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._skip_log and not self._log_started:
      self._skip_log.start(self._step, [(n, reason, message) for n in self.names
                                        for reason, message in self._indexes[n].skip_messages])
      self._log_started = True
    choices = dataset_choices(self._config, 1, self._step)[0]
    if self._config.data.mixture_mode == "per_batch":
      batch = self._next_from(self.names[choices[0]])
    else:
      mine = choices[self._pi * self._local:(self._pi + 1) * self._local]
      examples = [self._next_from(self.names[c]) for c in mine]
      batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
    self._step += 1
    return batch


def eval_batches(config, vocab, name: str, process_index: int = 0, process_count: int = 1, on_skip=None):
  """Batches of the val split of `name` (val_instances when set), resized to data.eval_size and padded.

  Adds `image_id` int64 [B], `orig_size` int32 [B, 2], `example_valid` bool [B]; the last batch is
  padded with zero examples marked invalid. An example that fails to decode is a ValueError naming its file, or with
  `config.eval.on_bad_example='skip'` is left out, logged and passed to `on_skip(image_id, message)`.
  """
  e = registry.resolve_entry(config, name)
  did = vocab.dataset_index(name)
  local_vocab = registry.dataset_vocab(e)
  index, tables = split_source(config, name, "val", local_vocab)
  task = int(contract.task_from_name(formats.get(e.format).val_task(e)))
  size = int(config.data.eval_size)
  ds = pipeline.eval_stream(index, config.data, did, vocab, size=size, reduce_zero_label=e.reduce_zero_label,
                            task=task, process_index=process_index, process_count=process_count, tables=tables,
                            skip_bad=config.eval.on_bad_example == "skip")
  bs = int(config.data.eval_batch_size)
  ds = ds.batch(bs).prefetch(max(config.data.prefetch, 1))
  rows = list(range(process_index, len(index), process_count))  # this process's rows, in the stream's order
  done = 0  # rows of `rows` yielded or skipped

  def failure(rows_to_try) -> str:
    return (pipeline.first_error(index, tables, e.reduce_zero_label, task, rows_to_try)
            or f"{name}/val: an example failed in the input pipeline but decodes when read again")

  def skip_until(row) -> int:
    """Reports the rows of `rows` from `done` up to `row` (excluded) as skipped; returns the new `done`."""
    k = done
    while k < len(rows) and rows[k] != row:
      message = failure([rows[k]])
      logging.warning("%s: val image skipped (config.eval.on_bad_example='skip'; its ground truth is scored as "
                      "missed): %s", name, message)
      if on_skip:
        on_skip(int(index.image_ids[rows[k]]), message)
      k += 1
    return k

  batches, error = ds.as_numpy_iterator(), None
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      break
    except tf.errors.OpError:  # the failing example is among the next batches in flight
      error = (f"{name}/val: an example does not decode: {failure(rows[done:done + bs * (config.data.prefetch + 2)])}."
               " Fix or remove the file, or set config.eval.on_bad_example='skip' to count it and score its ground "
               "truth as missed")
      break
    for row in batch.pop("_pos").tolist():
      done = skip_until(row) + 1
    batch.pop("_dropped")
    n = len(batch["image_id"])
    batch["example_valid"] = np.arange(bs) < n
    if n < bs:
      batch = {k: (v if k == "example_valid" else
                   np.concatenate([v, np.zeros((bs - n,) + v.shape[1:], v.dtype)])) for k, v in batch.items()}
      batch["segment_map"][n:] = contract.VOID
    yield batch
  batches = None  # no tf.data stream left alive in a traceback: callbacks in flight at exit would hang the process
  if error:
    raise ValueError(error)
  skip_until(None)
