"""The training loop, top to bottom: setup, auto-resume, the jitted step, logging, checkpoints, preemption.

  train(config, workdir)

1. `jax.distributed` when asked (mesh.maybe_initialize_distributed), a writable workdir, the mesh.
2. Vocabulary, frozen text embeddings, model, criterion and the data iterator (`build_components`).
3. The train state, fresh or restored from the latest checkpoint in `WORKDIR/checkpoints/` together with the
   data iterator position (big_vision's auto-resume: rerunning the same command continues).
4. The step, compiled once ahead of time (its FLOPs give the HFU estimate), fed by batches that are already
   global device arrays, prefetched `config.data.prefetch` deep.
5. Every `log_every_steps`: the only host sync; CLU writers get each loss term per dataset and per task,
   learning rate, gradient norm, step time, images/s, HFU. Every `checkpoint_every_steps`: an async orbax
   save. SIGTERM (or a cluster preemption notice): save, then return. Too many non-finite steps in a row:
   stop with `NonFiniteError`, leaving the last checkpoint as it was.

Checkpoints are only written from good states (`CheckpointGuard`): a save point writes its checkpoint only when
every step since the previous save point had a finite loss and gradient norm, and so had the next step, whose loss is
that of the saved weights (a finite but huge update poisons them: `learning_rate=1e6` did at the first step). So the
checkpoint of a save point is written after the next step, from a copy of the state kept on the device for that one
step; the last step, a preemption or an error end the run first, and are saved on their interval alone. Weights gone
bad, and the non-finite streak that follows, never replace the last good checkpoint: after a `NonFiniteError` the
latest checkpoint is the last good state, and a resumed run starts its streak count at 0. A last step that cannot be
saved stops with `NonFiniteError` too.

`config.eval_every_steps`: > 0 evaluates every K steps and at the end, 0 only at the end, < 0 never. A step that
is evaluated is checkpointed after its evaluation, with the metrics; with `config.best_checkpoint_metric` every
evaluated step is checkpointed, and the best of them is kept beside the last `keep_checkpoints` (checkpointing.py).
"""
import dataclasses
import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from dataseg_jax import config as config_lib
from dataseg_jax import contract
from dataseg_jax import hardware
from dataseg_jax import trees
from dataseg_jax.models import checkpoint_io
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.train import checkpointing, optimizer as optimizer_lib, state as state_lib
from dataseg_jax.train import step as step_lib

PROFILE_STEPS = 5


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient norm."""


class WorkdirError(OSError):
  """The workdir cannot be created or written."""


@dataclasses.dataclass
class Components:
  """What the loop trains: a Flax model, its loss, the vocabulary tables and the data.

  model: `apply({'params': p}, images, class_embeddings, class_mask, train=True, rngs=...)` -> outputs.
  loss_fn: `(outputs, batch, rng) -> (loss [], {term: [B]}, {stat: [L]})` (criterion.criterion).
  vocab: has `datasets` (names, config order) and `class_mask` bool [D, C].
  class_embeddings: float32 [C, E], frozen.
  make_iterator: `(process_index, process_count) -> iterator` of this process's batches (numpy, batch
    contract) with `get_state()` / `set_state(state)`, and `close()` if it holds threads to stop.
  """
  model: Any
  loss_fn: Callable
  vocab: Any
  class_embeddings: np.ndarray
  make_iterator: Callable


def build_components(config, workdir: str) -> Components:
  """The real pieces: registry vocabulary, text embeddings (cached), DataSeg, the DaTaSeg criterion, mixture (which
  names every skipped item in WORKDIR/skipped.tsv)."""
  from data_pipelines import mixture, registry
  from dataseg_jax.losses import criterion
  from dataseg_jax.models import dataseg
  from dataseg_jax.vocab import embeddings

  vocab = registry.build_vocab(config)
  class_embeddings = embeddings.embed_for_config(vocab.names, config, workdir)
  return Components(
      model=dataseg.DataSeg(config.model),
      loss_fn=lambda outputs, batch, rng: criterion.criterion(outputs, batch, config, rng),
      vocab=vocab, class_embeddings=np.asarray(class_embeddings, np.float32),
      make_iterator=lambda index, count: mixture.TrainIterator(
          config, vocab, process_index=index, process_count=count,
          skip_log=mixture.skip_log_path(workdir, index)))


def check_workdir(workdir: str) -> epath.Path:
  """Creates `workdir` and proves it writable, or raises WorkdirError saying what to do."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{jax.process_index()}_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} cannot be written ({type(e).__name__}: {e}); pass a directory "
                       f"you can create and write to") from None
  return path


def peak_flops_per_device() -> float | None:
  return hardware.peak_flops(jax.devices()[0].device_kind)


def step_flops(jitted, *args) -> float | None:
  """FLOPs of one call per device: XLA's cost analysis of `jitted` lowered for the CPU, over the device count.

  The CPU lowering is the global HLO before any backend rewrites it; a GPU's own cost analysis leaves out
  the matrix products it hands to cuBLAS/cuDNN (on an H200 it counted 4.3 of ViT-B's 24 forward TFLOPs).
  """
  try:
    cost = jitted.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis()
  except Exception as e:  # an estimate for the logs must never stop a run
    logging.warning("no FLOP count, so no MFU in the logs: lowering for the CPU failed (%s: %s)",
                    type(e).__name__, e)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) / jax.device_count() if flops and flops > 0 else None


class _SigtermFlag:
  """Remembers a SIGTERM so the loop can save and leave at the next step boundary (single process only;
  with `jax.distributed` the preemption sync point of orbax's manager does this across processes)."""

  def __init__(self):
    self.raised = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
    self.raised = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def init_state(config, components: Components, mesh, tx, image_shape):
  """`(abstract state, shardings, init fn)`; the init fn builds a fresh state directly in its shardings."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  images = jnp.zeros((1, *image_shape), jnp.uint8)
  example_mask = jnp.asarray(components.vocab.class_mask[:1])
  embeddings = jnp.asarray(components.class_embeddings)
  ema_decay = float(config.optimizer.ema_decay)

  def init_params():
    """The model's parameters, each with its logical axis names (`nn.with_logical_partitioning`)."""
    return components.model.init({"params": init_rng, "dropout": init_rng}, images, embeddings, example_mask,
                                 train=False)["params"]

  def create(pretrained=None):
    """A fresh state; `pretrained` (converted weights, a params subtree, see `pretrained_params`) replaces the
    initialisation of every parameter it holds; the others keep theirs."""
    params = flax.core.meta.unbox(init_params())
    if pretrained is not None:
      params = checkpoint_io.merge_into(params, pretrained)
    return state_lib.create(params, tx, train_rng, ema_decay)

  boxed = jax.eval_shape(init_params)
  abstract = jax.eval_shape(lambda p: state_lib.create(p, tx, train_rng, ema_decay), flax.core.meta.unbox(boxed))
  shardings = state_lib.shardings(abstract, sharding_lib.param_shardings(boxed, mesh, config.mesh.param_sharding),
                                  tx, sharding_lib.replicated(mesh))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings, jax.jit(create, out_shardings=shardings)


def _converted_npz(path: str, key: str) -> dict | None:
  """The params tree of a scripts/convert_weights.py .npz named by config key `key`, or None when `path` is ''."""
  if not path:
    return None
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{key}={path!r} does not exist; write it with scripts/convert_weights.py or leave the "
                            f"key empty to start from random weights")
  logging.info("%s: initialising from %s", key, path)
  return checkpoint_io.load_params_npz(path)


def pretrained_backbone(config, abstract_state):
  """The backbone params of `config.model.backbone.init_from` (a scripts/convert_weights.py .npz, all of the
  backbone or part of it), or None when unset; a key or shape the model lacks stops at start."""
  loaded = _converted_npz(config.model.backbone.get("init_from", ""), "config.model.backbone.init_from")
  if loaded is not None:
    checkpoint_io.merge_into(abstract_state.params["backbone"], loaded, "backbone")  # keys and shapes, at start
  return loaded


def pretrained_params(config, abstract_state):
  """The converted weights a fresh run starts from, a subtree of the params, or None when there are none:
  `config.model.init_from` (a whole-model .npz, e.g. `convert_weights.py --from hf_mask2former` or `--from dataseg`:
  whichever parts it holds, the others keep their initialisation) with `config.model.backbone.init_from` over its
  backbone. A key or shape the model lacks stops at start."""
  loaded = _converted_npz(config.model.get("init_from", ""), "config.model.init_from")
  flat = trees.flatten(loaded or {})
  backbone = pretrained_backbone(config, abstract_state)
  flat.update(trees.flatten({"backbone": backbone} if backbone is not None else {}))
  if not flat:
    return None
  pretrained = trees.unflatten(flat)
  checkpoint_io.merge_into(abstract_state.params, pretrained)  # keys and shapes, at start
  return pretrained


class CheckpointGuard:
  """Writes the checkpoint of a save point only from a good state (module docstring): `save_point` checks that every
  step since the previous save point was finite (`TrainState.nonfinite_total` unchanged) and keeps a copy of the
  state until `after_step` has seen the next step's loss, the loss of its weights; logs what it refuses."""

  def __init__(self, manager, state):
    self._manager = manager
    self._total = int(jax.device_get(state.nonfinite_total))
    self._pending = None  # (step, state copy, data iterator state, metrics) of a save point awaiting its next step
    self.last_refused = False  # whether the latest save point was refused

  def _interval_finite(self, state, step: int) -> bool:
    total = int(jax.device_get(state.nonfinite_total))
    bad, self._total = total - self._total, total
    if bad:
      logging.warning("step %d is not checkpointed: %d step(s) since the previous save point had a non-finite loss "
                      "or gradient norm, so its weights may be bad; the latest checkpoint stays the last good state",
                      step, bad)
    return not bad

  def save_point(self, step: int, state, data_state, metrics, now: bool) -> None:
    """A save point at `step`: refused when a step since the previous one was not finite, else written `now` (the
    run ends: nothing follows to confirm it) or kept until the next step (`after_step`)."""
    self.last_refused = not self._interval_finite(state, step)
    if self.last_refused:
      return
    if now:
      checkpointing.save(self._manager, step, state, data_state, metrics=metrics, force=True)
    else:  # the next step donates `state`
      copy = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), state)
      self._pending = (step, copy, data_state, metrics)

  def after_step(self, step: int, metrics: dict) -> None:
    """Writes the pending save point's checkpoint when `step`, the next one, had a finite loss and gradient norm;
    drops it otherwise."""
    if self._pending is None:
      return
    saved, state, data_state, scores = self._pending
    self._pending = None
    if bool(jax.device_get(metrics["finite"])):
      checkpointing.save(self._manager, saved, state, data_state, metrics=scores, force=True)
      return
    logging.warning("step %d is not checkpointed: the loss of its weights (step %d) is not finite, so an update "
                    "poisoned them; the latest checkpoint stays the last good state", saved, step)


def nonfinite_advice(config, latest: int | None, checkpoints: str) -> str:
  """What to change after non-finite steps: the key and a suggested value, and where a rerun resumes."""
  lr = float(config.optimizer.learning_rate)
  resume = (f"the latest checkpoint, step {latest} under {checkpoints}, is the last good state: rerunning the same "
            "command resumes from it" if latest is not None else
            f"no good checkpoint was written under {checkpoints}: rerunning the same command starts afresh")
  clip = ("" if config.optimizer.clip_norm > 0 else
          " or clip the gradients with --config.optimizer.clip_norm=0.01 (Mask2Former's value)")
  return (f"{resume}, with a count of non-finite steps starting at 0. Lower the learning rate, e.g. "
          f"--config.optimizer.learning_rate={lr / 10:g} (a tenth of {lr:g}; lower it again if the run stops "
          f"again){clip}; if the loss is non-finite from the first step, check the data with scripts/check_dataset.py.")


COMPILE_RECORD = "compile_seconds.json"  # in the workdir: how long the last compile of the train step took


def compile_notice(workdir: epath.Path) -> str:
  """The line logged before the train step compiles: the time the last compile took in this workdir (recorded by
  `record_compile_seconds`), or that none is recorded yet."""
  try:
    seconds = float(json.loads((workdir / COMPILE_RECORD).read_text())["train_step"])
  except (OSError, ValueError, KeyError, TypeError):
    return (f"compiling the train step (no earlier compile recorded in {workdir}; the toy config took about 1 min "
            "on 2 CPU cores, larger models take minutes)...")
  return f"compiling the train step (about {seconds:.0f} s on this machine, as the last time)..."


def record_compile_seconds(workdir: epath.Path, seconds: float) -> None:
  """Keeps how long compiling the train step took, for the next run's `compile_notice`."""
  (workdir / COMPILE_RECORD).write_text(json.dumps({"train_step": round(seconds, 1)}))


def longest_streak_exceeded(history: list[dict], limit: int) -> int:
  """The largest `nonfinite_streak` seen in the fetched per-step metrics when it reaches `limit`, else 0."""
  worst = max((int(m["nonfinite_streak"]) for m in history), default=0)
  return worst if worst >= limit else 0


def summarize(history: list[dict], dataset_names, global_batch: int) -> dict:
  """Scalars for the writers from the per-step metrics (numpy) of one logging interval.

  `loss`, `grad_norm`: means over finite steps; `lr`: the last; `nonfinite_steps`: the skipped steps, when there
  are any; `<term>/<dataset>` and `<term>/task_<task>`:
  the term's value on a batch made only of that dataset / task, sum_steps sum_b t_b / sum_steps n * B. Left out: a
  term that is 0 on every example of the group in the interval (one its task does not have: loss_proj of mask
  data, the mask terms of box-only data), and a task whose examples all came from one dataset (its series would
  repeat that dataset's). `merge/<stat>/layer_<l>`: the criterion's MERGE instrument of decoder layer l
  (criterion.MERGE_STATS), its mean over the finite steps where it is defined (`merge_group_size_max`: the
  largest); left out when undefined at every step (no batch of a merging task).
  """
  finite = [m for m in history if bool(m["finite"])]
  out = {"lr": float(history[-1]["lr"])}
  if len(finite) < len(history):  # logged when it happens, not as a series of zeros
    out["nonfinite_steps"] = float(len(history) - len(finite))
  if finite:
    out["loss"] = float(np.mean([m["loss"] for m in finite]))
    out["grad_norm"] = float(np.mean([m["grad_norm"] for m in finite]))
    for name in finite[-1].get("stats", {}):
      per_layer = np.stack([m["stats"][name] for m in finite])  # [steps, L], NaN where a step had no groups
      defined = ~np.all(np.isnan(per_layer), axis=0)
      reduce = np.nanmax if name.endswith("_max") else np.nanmean
      out.update({f"merge/{name.removeprefix('merge_')}/layer_{l}": float(reduce(per_layer[:, l]))
                  for l in np.flatnonzero(defined)})
  terms = list(history[-1]["by_dataset"])
  counts = {g: np.sum([m[f"count_{g}"] for m in history], axis=0) for g in ("dataset", "task")}
  sums = {g: {t: np.sum([m[f"by_{g}"][t] for m in history], axis=0) for t in terms} for g in ("dataset", "task")}

  def repeats_a_dataset(task: int) -> bool:
    return any(counts["task"][task] == counts["dataset"][d] and
               all(sums["task"][t][task] == sums["dataset"][t][d] for t in terms) for d in range(len(dataset_names)))

  task_names = [t.name.lower() for t in contract.Task]
  for group, names, prefix in (("dataset", dataset_names, ""), ("task", task_names, "task_")):
    for i, name in enumerate(names):
      if counts[group][i] == 0 or (group == "task" and repeats_a_dataset(i)):
        continue
      for term in terms:
        if sums[group][term][i] != 0:
          out[f"{term}/{prefix}{name}"] = float(sums[group][term][i] / counts[group][i] * global_batch)
  return out


def train(config, workdir: str, components: Components | None = None) -> dict:
  """Trains to `config.total_steps` (resuming from `workdir` when it has checkpoints).

  Returns the last logged scalars plus `step` and `preempted`. Raises WorkdirError, ValueError (bad config or
  an incompatible checkpoint) and NonFiniteError, each with a message saying what to do.
  """
  config_lib.validate(config)
  sharding_lib.maybe_initialize_distributed(config)
  hardware.use_compilation_cache(config.get("compilation_cache_dir", ""))
  path = check_workdir(workdir)
  mesh = sharding_lib.make_mesh(config)
  sharding_lib.check_batch_size(config.data.batch_size, mesh)
  components = components or build_components(config, workdir)

  tx = optimizer_lib.make_optimizer(config)
  schedule = optimizer_lib.learning_rate_schedule(config)
  size = config.data.image_size
  abstract, shardings, create = init_state(config, components, mesh, tx, (size, size, 3))

  manager = checkpointing.make_manager(workdir, config)
  iterator = components.make_iterator(jax.process_index(), jax.process_count())
  latest = manager.latest_step()
  if latest is None:
    state = create(pretrained_params(config, abstract))
  else:
    state, data_state = checkpointing.restore(manager, latest, abstract, workdir)
    state = state.replace(nonfinite_streak=state.nonfinite_streak * 0)  # a resumed run counts its own streak
    iterator.set_state(data_state)
    logging.info("resumed from %s/%d", checkpointing.checkpoint_dir(workdir), latest)
  if jax.process_index() == 0:  # after the checkpoint was found compatible: a refused resume leaves it as it was
    (path / "config.json").write_text(config.to_json_best_effort(indent=2))
  del create  # its compiled initialiser (0.2 GiB of host memory for R50) would otherwise live through training
  start = int(state.step)
  guard = CheckpointGuard(manager, state)

  replicated = sharding_lib.replicated(mesh)
  embeddings = jax.device_put(jnp.asarray(components.class_embeddings), replicated)
  class_mask = jax.device_put(jnp.asarray(components.vocab.class_mask), replicated)
  step_fn = functools.partial(
      step_lib.train_step, model=components.model, loss_fn=components.loss_fn, tx=tx, schedule=schedule,
      ema_decay=float(config.optimizer.ema_decay), num_datasets=len(components.vocab.datasets))
  jitted = step_lib.jit_train_step(step_fn, mesh, shardings, sharding_lib.batch_sharding(mesh))
  batches = sharding_lib.prefetch_to_mesh(iterator, mesh, config.data.prefetch)

  from clu import metric_writers, periodic_actions  # their TensorBoard writer imports TensorFlow

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(flatten_config(config))
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every_steps)]
  if config.profile_at_step > 0 and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=PROFILE_STEPS,
                                          first_profile=config.profile_at_step, every_secs=None))
  sigterm = _SigtermFlag() if jax.process_count() == 1 else None
  global_batch = config.data.batch_size
  peak = peak_flops_per_device()
  history, summary, data_state = [], {}, None
  interval_start, interval_steps, interval_flops = time.perf_counter(), 0, 0.0
  step = start
  try:
    executables = {}  # (executable, FLOPs per device) per distinct batch shape (datasets may set their image_size)
    while step < config.total_steps:
      batch, data_state = next(batches)
      shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
      if shapes not in executables:
        logging.info("%s", compile_notice(path))
        compile_start = time.perf_counter()
        executables[shapes] = (jitted.lower(state, batch, embeddings, class_mask).compile(),
                               step_flops(jitted, state, batch, embeddings, class_mask))
        compile_seconds = time.perf_counter() - compile_start
        logging.info("compiled the train step in %.0f s", compile_seconds)
        if jax.process_index() == 0:
          record_compile_seconds(path, compile_seconds)
        hardware.release_freed_host_memory()
        interval_start, interval_steps, interval_flops = time.perf_counter(), 0, 0.0  # compiling is not stepping
      compiled, flops = executables[shapes]
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        state, metrics = compiled(state, batch, embeddings, class_mask)
      step += 1
      guard.after_step(step, metrics)
      interval_steps += 1
      interval_flops = interval_flops + flops if flops and interval_flops is not None else None
      history.append(metrics)
      for hook in hooks:
        hook(step)

      last = step == config.total_steps
      preempted = (sigterm.raised if sigterm else manager.reached_preemption(step))
      if step % config.log_every_steps == 0 or last or preempted or manager.should_save(step):
        history = jax.device_get(history)
        worst = longest_streak_exceeded(history, config.optimizer.max_nonfinite_steps)
        if worst:
          manager.wait_until_finished()
          raise NonFiniteError(
              f"stopping at step {step}: {worst} consecutive steps had a non-finite loss or gradient norm "
              f"(limit config.optimizer.max_nonfinite_steps={config.optimizer.max_nonfinite_steps}); "
              + nonfinite_advice(config, manager.latest_step(), checkpointing.checkpoint_dir(workdir)))
      if step % config.log_every_steps == 0 or last:
        elapsed = time.perf_counter() - interval_start
        summary = summarize(history, components.vocab.datasets, global_batch)
        summary.update(step_time_s=elapsed / interval_steps, images_per_s=global_batch * interval_steps / elapsed)
        if interval_flops:  # every FLOP of the compiled steps run, rematerialisation included: HFU, not MFU
          summary["tflops_per_s_per_device"] = interval_flops / elapsed / 1e12
          if peak:
            summary["hfu"] = interval_flops / elapsed / peak
        writer.write_scalars(step, summary)
        history, interval_start, interval_steps, interval_flops = [], time.perf_counter(), 0, 0.0
      scores, failed = None, True
      try:
        if not preempted and evaluation_due(config, step):
          eval_start = time.perf_counter()
          scores = evaluate(config, components, state, workdir, step)
          interval_start += time.perf_counter() - eval_start  # evaluating is not stepping
        failed = False
      finally:  # after the evaluation, so that the checkpoint holds its metrics; saved even if it failed
        forced = last or preempted or (scores is not None and bool(config.best_checkpoint_metric))
        if forced or manager.should_save(step):
          guard.save_point(step, state, data_state, scores, now=last or preempted or failed)
      if scores is not None:
        writer.write_scalars(step, scores)
      if last and guard.last_refused:
        manager.wait_until_finished()
        raise NonFiniteError(
            f"training reached its last step {step}, but steps since the previous save point had a non-finite loss "
            f"or gradient norm, so its state is not saved; "
            + nonfinite_advice(config, manager.latest_step(), checkpointing.checkpoint_dir(workdir)))
      if preempted:
        logging.warning("preempted at step %d: %s, exiting", step,
                        f"not checkpointed, a rerun resumes from step {manager.latest_step()}"
                        if guard.last_refused else "checkpoint saved")
        break
  finally:
    batches.close()
    if hasattr(iterator, "close"):  # tf.data callbacks still in flight at exit would hang the process
      iterator.close()
    if sigterm:
      sigterm.restore()
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return dict(summary, step=step, preempted=step < config.total_steps)


def evaluation_due(config, step: int) -> bool:
  """Whether training evaluates after `step`: every `eval_every_steps` (> 0) and at the last step (>= 0)."""
  every = config.eval_every_steps
  return every >= 0 and ((every > 0 and step % every == 0) or step == config.total_steps)


def evaluate(config, components: Components, state: state_lib.TrainState, workdir: str, step: int) -> dict:
  """Metrics of the evaluation issue's evaluator on the current (EMA when kept) parameters."""
  from dataseg_jax.evaluation import evaluator
  variables = {"params": state.ema if state.ema is not None else state.params}
  return evaluator.evaluate(config, variables, components.vocab, components.class_embeddings, workdir, step)


def flatten_config(config) -> dict:
  """`{'optimizer.learning_rate': 1e-4, ...}` with non-scalar values as JSON strings (for write_hparams)."""
  return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
          for k, v in trees.flatten(config, sep=".").items()}
