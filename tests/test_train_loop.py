"""The training loop end to end on CPU: loss falls, exact resume after SIGTERM, clear errors at start."""
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_train_step as tiny
from dataseg_jax import config as config_lib
from dataseg_jax import trees
from dataseg_jax.train import checkpointing, loop

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyIterator:
  """Deterministic stand-in for `mixture.TrainIterator`: global batch k depends only on (seed, k); process i
  of n yields rows [i * B / n, (i + 1) * B / n) of it."""

  def __init__(self, global_batch, index=0, count=1):
    self.position, self.global_batch, self.index, self.count = 0, global_batch, index, count

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([7, self.position])
    full = tiny.make_batch(rng, self.global_batch, self.position % 3)
    self.position += 1
    rows = slice(self.index * self.global_batch // self.count, (self.index + 1) * self.global_batch // self.count)
    return {k: v[rows] for k, v in full.items()}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


class SigtermAt:
  """Wraps a train iterator and sends this process SIGTERM (a preemption notice) when batch `at` is drawn."""

  def __init__(self, iterator, at):
    self.iterator, self.at, self.drawn = iterator, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.drawn == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    self.drawn += 1
    return next(self.iterator)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def preempted(components_, at):
  """The same components whose iterator delivers SIGTERM at the `at`-th batch of this run."""
  make = components_.make_iterator
  components_.make_iterator = lambda i, n: SigtermAt(make(i, n), at)
  return components_


def components(config, model=None, loss_fn=tiny.tiny_loss):
  vocab = types.SimpleNamespace(datasets=tiny.DATASETS, class_mask=tiny.CLASS_MASK)
  embeddings = np.random.default_rng(1).normal(size=(tiny.C, tiny.E)).astype(np.float32)
  return loop.Components(model or tiny.TinySeg(), loss_fn, vocab, embeddings,
                         make_iterator=lambda i, n: TinyIterator(config.data.batch_size, i, n))


def config(total=8):
  c = tiny.tiny_config()
  c.total_steps = total
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  c.eval_every_steps = -1
  return c


def logged_scalars(workdir, tag):
  """`[(step, value)]` of one scalar from the TensorBoard events in workdir."""
  import tensorflow as tf
  out = []
  for f in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(f)):
      out += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value if v.tag == tag]
  return sorted(out)


def test_tiny_loss_falls_and_every_term_is_logged_per_dataset(tmp_path):
  c = config(total=24)
  result = loop.train(c, str(tmp_path), components(c))
  assert result["step"] == 24 and not result["preempted"]
  losses = [v for _, v in logged_scalars(tmp_path, "loss")]
  assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
  for key in ("loss_ce/toy_ade", "loss_mask/toy_o365", "lr", "grad_norm", "images_per_s", "step_time_s",
              "tflops_per_s_per_device"):
    assert key in result, key
  assert not [k for k in result if "/task_" in k]  # each task is one dataset's: its series would repeat it
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == [16, 20, 24][-c.keep_checkpoints:]


def test_compiling_is_announced_with_the_time_the_last_compile_took(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  c = config(total=2)
  loop.train(c, str(tmp_path), components(c))
  first = [r.getMessage() for r in caplog.records if "the train step" in r.getMessage()]
  assert first[0].startswith("compiling the train step (no earlier compile recorded in"), first
  took = float(first[1].removeprefix("compiled the train step in ").removesuffix(" s"))
  recorded = json.loads((tmp_path / loop.COMPILE_RECORD).read_text())["train_step"]
  assert abs(recorded - took) <= 0.5
  caplog.clear()
  c.total_steps = 4  # the same command again with more steps: resumes and compiles again
  loop.train(c, str(tmp_path), components(c))
  again = [r.getMessage() for r in caplog.records if "the train step" in r.getMessage()]
  assert again[0] == f"compiling the train step (about {recorded:.0f} s on this machine, as the last time)...", again


def test_a_relative_workdir_checkpoints_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = config(total=2)
  loop.train(c, "runs/rel", components(c))
  c.total_steps = 4
  assert loop.train(c, "runs/rel", components(c))["step"] == 4
  assert checkpointing.make_manager("runs/rel").latest_step() == 4


def test_restore_variables_names_a_missing_checkpoint_and_the_steps_there(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"^no checkpoint under .*checkpoints \(found steps \[\]\); train first"):
    checkpointing.restore_variables(str(tmp_path / "empty"))
  c = config(total=2)
  loop.train(c, str(tmp_path / "run"), components(c))
  with pytest.raises(FileNotFoundError, match=r"^no checkpoint of step 5 under .* \(found steps \[1, 2\]\)"):
    checkpointing.restore_variables(str(tmp_path / "run"), 5)


def test_a_read_only_manager_warns_of_nothing(tmp_path, caplog):
  """Evaluation and export open the checkpoints read-only; orbax's notices about that are not warnings to show."""
  with caplog.at_level(logging.INFO):
    checkpointing.make_manager(str(tmp_path)).close()
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_step_flops_counts_a_matrix_product_per_device():
  m, k, n = 64, 48, 32
  fn = jax.jit(lambda a, b: a @ b)
  flops = loop.step_flops(fn, jnp.ones((m, k)), jnp.ones((k, n)))
  assert flops == pytest.approx(2 * m * k * n / jax.device_count(), rel=0.01)


def test_sigterm_then_restart_gives_bit_identical_params(tmp_path):
  c = config(total=8)
  straight = loop.train(c, str(tmp_path / "straight"), components(c))
  first = loop.train(c, str(tmp_path / "resumed"), preempted(components(c), at=4))
  assert first["preempted"] and 0 < first["step"] < 8
  assert checkpointing.make_manager(str(tmp_path / "resumed")).latest_step() == first["step"]
  second = loop.train(c, str(tmp_path / "resumed"), components(c))
  assert second["step"] == 8 and straight["loss"] == second["loss"]
  a = checkpointing.restore_variables(str(tmp_path / "straight"))
  b = checkpointing.restore_variables(str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_incompatible_checkpoint_stops_with_a_message(tmp_path):
  c = config(total=4)
  loop.train(c, str(tmp_path), components(c))
  c.total_steps = 8
  expected = r"(?s)different model or optimizer config.*params/backbone/kernel: checkpoint \(3, 3, 3, 8\) vs config "
  written = (tmp_path / "config.json").read_text()
  with pytest.raises(ValueError, match=expected + r"\(3, 3, 3, 4\).*new --workdir"):
    loop.train(c, str(tmp_path), components(c, model=tiny.TinySeg(features=4)))
  assert (tmp_path / "config.json").read_text() == written  # still the config that wrote the checkpoints


def test_nonfinite_streak_stops_and_keeps_last_checkpoint(tmp_path):
  loop.train(config(total=4), str(tmp_path), components(config(total=4)))
  c = config(total=12)
  c.optimizer.max_nonfinite_steps = 2

  def always_nan(outputs, batch, rng):
    loss, terms, stats = tiny.tiny_loss(outputs, batch, rng)
    return loss * jnp.nan, terms, stats

  with pytest.raises(loop.NonFiniteError, match=r"max_nonfinite_steps=2.*the latest checkpoint, step 4 under"):
    loop.train(c, str(tmp_path), components(c, loss_fn=always_nan))
  assert checkpointing.make_manager(str(tmp_path)).latest_step() == 4


def scored_config(total, mode="max"):
  """`config` evaluating every 4 steps, keeping the last checkpoint and the best on toy_ade/semantic/mIoU."""
  c = config(total)
  c.keep_checkpoints = 1
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 8  # evaluated steps in between are saved all the same
  c.data.datasets = {"toy_ade": config_lib.dataset_entry(format="semantic_png", task="semantic",
                                                        eval_tasks=("semantic",))}
  c.best_checkpoint_metric, c.best_checkpoint_mode = "toy_ade/semantic/mIoU", mode
  return c


def scripted_evaluation(monkeypatch, miou_at, calls=None):
  """Stands in for the evaluator: mIoU `miou_at[step]` (raises where that is an exception)."""
  def evaluate(config, components, state, workdir, step):
    if calls is not None:
      calls.append(step)
    if isinstance(miou_at[step], Exception):
      raise miou_at[step]
    return {"toy_ade/semantic/mIoU": miou_at[step], "toy_ade/semantic/pixel_acc": 90.0}
  monkeypatch.setattr(loop, "evaluate", evaluate)


@pytest.mark.parametrize("mode, kept", [("max", [8, 16]), ("min", [12, 16])])
def test_the_best_evaluated_checkpoint_is_kept_beside_the_latest(tmp_path, monkeypatch, mode, kept):
  scripted_evaluation(monkeypatch, {4: 50.0, 8: 80.0, 12: 30.0, 16: 40.0})
  c = scored_config(16, mode)
  loop.train(c, str(tmp_path), components(c))
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == kept
  assert checkpointing.resolve_step(str(tmp_path), "best", c) == kept[0]
  assert checkpointing.resolve_step(str(tmp_path), None, c) == 16
  evaluating = config(16)  # eval.py's config need not repeat the metric: WORKDIR/config.json has it
  assert checkpointing.resolve_step(str(tmp_path), "best", evaluating) == kept[0]


def test_the_best_checkpoint_survives_a_restart_and_nan_scores_rank_last(tmp_path, monkeypatch):
  scripted_evaluation(monkeypatch, {4: 50.0, 8: 80.0, 12: float("nan"), 16: 40.0, 20: 60.0, 24: float("nan")})
  c = scored_config(12)
  loop.train(c, str(tmp_path), components(c))
  c.total_steps = 24  # a new process: the manager reads the stored metrics back
  loop.train(c, str(tmp_path), components(c))
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == [8, 24]
  assert checkpointing.resolve_step(str(tmp_path), "best", c) == 8


def test_a_failing_evaluation_still_leaves_its_steps_checkpoint(tmp_path, monkeypatch):
  calls = []
  scripted_evaluation(monkeypatch, {4: 50.0, 8: RuntimeError("evaluator crashed")}, calls)
  c = scored_config(16)
  with pytest.raises(RuntimeError, match="evaluator crashed"):
    loop.train(c, str(tmp_path), components(c))
  assert calls == [4, 8] and checkpointing.make_manager(str(tmp_path)).all_steps() == [4, 8]


def test_step_best_needs_a_metric_and_evaluated_checkpoints(tmp_path):
  c = config(total=2)
  loop.train(c, str(tmp_path), components(c))
  with pytest.raises(ValueError, match="--step best needs the metric that ranks the checkpoints"):
    checkpointing.resolve_step(str(tmp_path), "best", c)
  scored = scored_config(2)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint under .* has an evaluation of 'toy_ade/semantic/mIoU' "
                                              r"\(steps \[1, 2\]\)"):
    checkpointing.resolve_step(str(tmp_path), "best", scored)
  with pytest.raises(ValueError, match="'last' is neither a checkpoint step nor 'best'"):
    checkpointing.resolve_step(str(tmp_path), "last", c)
  assert checkpointing.resolve_step(str(tmp_path), "1", c) == 1


@pytest.mark.parametrize("key, value, message", [
    ("best_checkpoint_metric", "ade/semantic/mIoU", r"best_checkpoint_metric: .*no dataset 'ade'.*\['toy_ade'\]"),
    ("best_checkpoint_metric", "toy_ade/panoptic/PQ",
     r"best_checkpoint_metric: .*toy_ade is evaluated on \('semantic',\), not 'panoptic'"),
    ("best_checkpoint_metric", "toy_ade/semantic/miou",
     r"best_checkpoint_metric: .*semantic evaluation reports .*'mIoU'.*not 'miou'"),
    ("best_checkpoint_mode", "higher", r"best_checkpoint_mode: must be 'max' or 'min'"),
    ("eval_every_steps", -1, r"best_checkpoint_metric: .*never measured: eval_every_steps < 0"),
])
def test_best_checkpoint_settings_are_checked_at_start(key, value, message):
  c = scored_config(8)
  c[key] = value
  with pytest.raises(ValueError, match="^config." + message):
    config_lib.validate(c)


def test_unwritable_workdir_is_reported(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(loop.WorkdirError, match="cannot be written.*pass a directory"):
    loop.train(config(), str(blocker / "run"), components(config()))


def test_unknown_config_key_is_reported_by_the_script(tmp_path):
  proc = subprocess.run([sys.executable, str(REPO / "scripts/train.py"), "--config", str(REPO / "configs/toy.py"),
                         "--workdir", str(tmp_path), "--config.optimizer.learning_rat=1"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode != 0
  assert "unknown config key" in proc.stderr and "learning_rate" in proc.stderr, proc.stderr[-2000:]


PROCESS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import test_train_loop as t
from dataseg_jax.train import loop
c = t.config(total=6)
c.log_every_steps = 1
c.distributed = True
loop.train(c, sys.argv[2], t.components(c))
"""


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one_process(tmp_path):
  """Per-step losses and final params agree to rtol 1e-5 (the gradient all-reduce sums in another order)."""
  c = config(total=6)
  c.log_every_steps = 1
  loop.train(c, str(tmp_path / "one"), components(c))
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, "-c", PROCESS_SCRIPT, str(REPO / "tests"), str(tmp_path / "two")],
      env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
  one, two = logged_scalars(tmp_path / "one", "loss"), logged_scalars(tmp_path / "two", "loss")
  assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 7))
  np.testing.assert_allclose([v for _, v in two], [v for _, v in one], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               checkpointing.restore_variables(str(tmp_path / "two")),
               checkpointing.restore_variables(str(tmp_path / "one")))


@pytest.mark.parametrize("command", [
    ["scripts/eval.py", "--config", "configs/toy.py", "--workdir", "w", "--config.data.batchsize=2"],
    ["scripts/check_dataset.py", "--config", "configs/nope.py"],
    ["scripts/prepare_tfds.py", "--config", "configs/toy.py", "--dataset", "toy_cty", "--out", "o"],
])
def test_scripts_report_config_mistakes_in_one_line(command, tmp_path):
  proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert any(line.startswith("error: ") for line in proc.stderr.splitlines()), proc.stderr[-2000:]


def test_backbone_init_from_a_converted_npz_replaces_the_random_init(tmp_path):
  from dataseg_jax.models import checkpoint_io
  c = config(total=2)
  c.optimizer.backbone_multiplier = 0.0  # the backbone after any step is its initial state
  fresh = loop.train(c, str(tmp_path / "fresh"), components(c))
  assert fresh["step"] == 2
  backbone = trees.unflatten(
      {k: v + 1.0 for k, v in trees.flatten(
          checkpointing.restore_variables(str(tmp_path / "fresh"))["params"]["backbone"]).items()})
  partial = dict(trees.flatten(backbone))
  kept = next(k for k in sorted(partial) if np.any(partial[k] != 1.0))  # lacking in the file: keeps its init
  del partial[kept]
  checkpoint_io.save_params_npz(tmp_path / "backbone.npz", trees.unflatten(partial))
  c.total_steps = 1
  with c.unlocked():
    c.model.backbone.init_from = str(tmp_path / "backbone.npz")
  loop.train(c, str(tmp_path / "pretrained"), components(c))
  got = trees.flatten(checkpointing.restore_variables(str(tmp_path / "pretrained"))["params"]["backbone"])
  for k, v in partial.items():
    np.testing.assert_array_equal(got[k], v)
  init = trees.flatten(backbone)[kept] - 1.0
  assert np.any(init != 0), kept
  np.testing.assert_allclose(got[kept], init, atol=1e-6)  # init + 1 - 1 in float32
  with c.unlocked():
    c.model.backbone.init_from = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="init_from"):
    loop.train(c, str(tmp_path / "bad"), components(c))


def test_a_run_starts_from_the_parts_of_another_run_that_convert_weights_takes(tmp_path):
  """`convert_weights.py --from dataseg` writes the chosen top-level parts of a run's parameters (its EMA when it
  kept one); a run with `config.model.init_from` on that file starts from them."""
  import runpy
  from dataseg_jax.models import checkpoint_io
  convert = runpy.run_path(str(REPO / "scripts" / "convert_weights.py"))["convert"]
  c = config(total=2)
  c.optimizer.ema_decay = 0.5
  loop.train(c, str(tmp_path / "source"), components(c))
  source = checkpointing.restore_variables(str(tmp_path / "source"))["params"]
  what = convert("dataseg", tmp_path / "source", tmp_path / "parts.npz", parts=("backbone",))
  assert "backbone" in what and "classifier" not in what
  written = checkpoint_io.load_params_npz(tmp_path / "parts.npz")
  assert list(written) == ["backbone"]
  assert trees.flatten(written).keys() == trees.flatten({"backbone": source["backbone"]}).keys()
  for k, v in trees.flatten(written).items():
    np.testing.assert_array_equal(v, trees.flatten(source)[k])

  c.total_steps = 1
  c.optimizer.backbone_multiplier = 0.0  # the backbone after the step is the one it started from
  with c.unlocked():
    c.model.init_from = str(tmp_path / "parts.npz")
  loop.train(c, str(tmp_path / "started"), components(c))
  started = checkpointing.restore_variables(str(tmp_path / "started"))["params"]
  for k, v in trees.flatten(source["backbone"]).items():
    np.testing.assert_array_equal(trees.flatten(started["backbone"])[k], v)
  assert not np.array_equal(trees.flatten(started["classifier"])["kernel"],
                            trees.flatten(source["classifier"])["kernel"])  # not in the file: its own init

  with pytest.raises(ValueError, match="expected some of backbone,classifier,query_embed"):
    convert("dataseg", tmp_path / "source", tmp_path / "bad.npz", parts=("pixel_decoder",))
  with pytest.raises(ValueError, match="no checkpoint of step 99"):
    convert("dataseg", tmp_path / "source", tmp_path / "bad.npz", step=99)
  with pytest.raises(ValueError, match="not a directory"):
    convert("dataseg", tmp_path / "nowhere", tmp_path / "bad.npz")
  assert not (tmp_path / "bad.npz").exists()
