"""orbax checkpoints of the train state and the data iterator position, under `WORKDIR/checkpoints/<step>/`.

Each checkpoint holds two items: `state` (the `TrainState` as a state dict: params, optimizer state, step, RNG,
EMA, non-finite counters; orbax `StandardSave`, async) and `data` (JSON: the data iterator position of every
process, `{"<process index>": iterator.get_state()}`). Saves happen every `config.checkpoint_every_steps`
steps and on request (end of training, SIGTERM); the last `config.keep_checkpoints` are kept. With
`config.best_checkpoint_metric` set, every evaluation during training saves its step's checkpoint together with the
evaluation's metrics, and the checkpoint that scored best on that metric is kept as well (orbax `BestN`), so
`scripts/eval.py --step best` and `scripts/export.py --step best` find it after any restart.

A restart restores the latest checkpoint before training (big_vision's auto-resume). Restoring checks the
stored array shapes against the current config first, so a checkpoint written by another model config stops
with a message naming the first mismatching parameter instead of an orbax traceback.
"""
import functools
import json
import logging
import math
import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class _DropOrbaxInfo(logging.Filter):
  """Drops orbax's INFO records (dozens per save) and its warning that a manager opened read-only is read-only;
  its other warnings and errors still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    message = record.getMessage()
    return record.levelno >= logging.WARNING and not message.startswith(_EXPECTED_WARNINGS)


_EXPECTED_WARNINGS = (
    "Given directory is read only",  # evaluation and export open the checkpoints read-only on purpose
    "Requested `tracked_metric`; did not provide metrics",  # checkpoints between evaluations have no metrics
)


_ORBAX_FILTER = _DropOrbaxInfo()


def quiet_orbax_logs() -> None:
  """Installs `_DropOrbaxInfo` on the absl logger (orbax logs through absl) once."""
  logger = logging.getLogger("absl")
  if _ORBAX_FILTER not in logger.filters:
    logger.addFilter(_ORBAX_FILTER)


def _handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, made absolute for a local workdir (orbax refuses relative paths)."""
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  return os.path.join(workdir, "checkpoints")


def score(metrics: dict | None, metric: str, mode: str) -> float:
  """The rank of an evaluated checkpoint, larger is better: `metrics[metric]`, negated for mode 'min'; -inf
  where the checkpoint has no metrics, lacks the metric or scored NaN."""
  value = float((metrics or {}).get(metric, math.nan))
  if math.isnan(value):
    return -math.inf
  return value if mode == "max" else -value


def make_manager(workdir: str, config=None) -> ocp.CheckpointManager:
  """An async `CheckpointManager` keeping the last `config.keep_checkpoints` and, with
  `config.best_checkpoint_metric`, the best evaluated one; read-only when `config` is None."""
  quiet_orbax_logs()
  if config is None:
    return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=_handlers(),
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                     save_interval_steps=0))
  kept = {"max_to_keep": config.keep_checkpoints}
  if config.best_checkpoint_metric:
    rank = functools.partial(score, metric=config.best_checkpoint_metric, mode=config.best_checkpoint_mode)
    policies = ocp.checkpoint_managers
    kept = {"best_fn": rank, "best_mode": "max", "preservation_policy": policies.AnyPreservationPolicy([
        policies.LatestN(n=config.keep_checkpoints),
        policies.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False)])}
  options = ocp.CheckpointManagerOptions(save_interval_steps=config.checkpoint_every_steps,
                                         enable_async_checkpointing=True, create=True, **kept)
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=_handlers(), options=options)


def _gather_process_states(data_state) -> dict:
  """`{"<process index>": state}` for every process (an all-gather of JSON bytes; a no-op with one process)."""
  if jax.process_count() == 1:
    return {"0": data_state}
  raw = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
  length = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
  padded = np.zeros(length, np.uint8)
  padded[:raw.size] = raw
  gathered = multihost_utils.process_allgather(padded)
  return {str(i): json.loads(bytes(row).rstrip(b"\0").decode()) for i, row in enumerate(gathered)}


def save(manager: ocp.CheckpointManager, step: int, state, data_state, force: bool = False,
         metrics: dict | None = None) -> bool:
  """Starts an async save of `state` and this process's `data_state` at `step` (if due, or `force`), with the
  evaluation `metrics` of this step when there are some (stored where the manager tracks the best)."""
  if not force and not manager.should_save(step):
    return False
  data = _gather_process_states(data_state)
  return manager.save(step, force=force, metrics=metrics, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), data=ocp.args.JsonSave(data)))


def _flat_shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat}


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state, workdir: str) -> None:
  """Raises ValueError when the checkpoint's arrays differ from the current config's train state."""
  stored = _flat_shapes(manager.item_metadata(step)["state"].tree)
  wanted = _flat_shapes(flax.serialization.to_state_dict(abstract_state))
  problems = [f"{k}: checkpoint {stored[k]} vs config {wanted[k]}" for k in wanted
              if k in stored and stored[k] != wanted[k]]
  problems += [f"{k}: in the config, not in the checkpoint" for k in wanted if k not in stored]
  problems += [f"{k}: in the checkpoint, not in the config" for k in stored if k not in wanted]
  problems.sort(key=lambda p: not p.startswith("params/"))  # parameters first: they name the model part
  if problems:
    shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
    raise ValueError(
        f"the checkpoint {checkpoint_dir(workdir)}/{step} was written by a different model or optimizer "
        f"config ({len(problems)} mismatching arrays):\n  {shown}\n"
        f"Resume with the config that wrote it, or train this config in a new --workdir.")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, workdir: str):
  """`(state, this process's data iterator state)` from checkpoint `step`, placed as `abstract_state` says.

  `abstract_state` is a `TrainState` of `jax.ShapeDtypeStruct` with shardings (from `jax.eval_shape`).
  """
  check_compatible(manager, step, abstract_state, workdir)
  target = flax.serialization.to_state_dict(abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  data = restored["data"]
  key = str(jax.process_index())
  if len(data) != jax.process_count():
    raise ValueError(f"the checkpoint {checkpoint_dir(workdir)}/{step} holds the data position of {len(data)} "
                     f"processes but this run has {jax.process_count()}; resume with the same process count")
  return flax.serialization.from_state_dict(abstract_state, restored["state"]), data[key]


def _workdir_config(workdir: str) -> dict:
  """WORKDIR/config.json, which training writes (empty when absent)."""
  path = os.path.join(workdir, "config.json")
  if "://" in workdir or not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def resolve_step(workdir: str, step: str | int | None, config) -> int | None:
  """The checkpoint step that `step` names: None -> the latest (None when there is none), 'best' -> the one
  that scored best on `config.best_checkpoint_metric` (else the one training ranked by, from WORKDIR/config.json)
  in the evaluations during training, else int(step)."""
  if step is None:
    manager = make_manager(workdir)
    latest = manager.latest_step()
    manager.close()
    return latest
  if str(step) != "best":
    if not str(step).isdigit():
      raise ValueError(f"--step: {step!r} is neither a checkpoint step nor 'best'")
    return int(step)
  metric, mode = config.best_checkpoint_metric, config.best_checkpoint_mode
  if not metric:  # the metric training kept the best by
    trained = _workdir_config(workdir)
    metric, mode = trained.get("best_checkpoint_metric", ""), trained.get("best_checkpoint_mode", "max")
  if not metric:
    raise ValueError("--step best needs the metric that ranks the checkpoints: train with "
                     "--config.best_checkpoint_metric=<dataset>/<task>/<metric> (or pass it here)")
  manager = make_manager(workdir)
  ranks = {s: score(manager.metrics(s), metric, mode) for s in manager.all_steps()}
  manager.close()
  scored = {s: r for s, r in ranks.items() if r > -math.inf}
  if not scored:
    raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)} has an evaluation of {metric!r} "
                            f"(steps {sorted(ranks)}): training did not rank by it (--config.best_checkpoint_metric "
                            "with eval_every_steps > 0) or its evaluations did not report it (mIoU_unseen needs "
                            "classes of no training dataset); pass a step")
  return max(scored, key=lambda s: (scored[s], s))


def restore_variables(workdir: str, step: int | None = None) -> dict:
  """Model variables `{'params': ...}` of checkpoint `step` (default: the latest) for evaluation and export.

  Returns the EMA parameters when the run kept an EMA (`optimizer.ema_decay > 0`), the raw ones otherwise.
  Arrays come back whole on the first local device, whatever mesh or process count wrote them; no config is
  needed.
  """
  manager = make_manager(workdir)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    which = "no checkpoint" if step is None else f"no checkpoint of step {step}"
    raise FileNotFoundError(f"{which} under {checkpoint_dir(workdir)} (found steps {list(manager.all_steps())}); "
                            "train first or pass an existing step")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"].tree)
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  manager.close()
  return {"params": state["ema"] if state.get("ema") is not None else state["params"]}
