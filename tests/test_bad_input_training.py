"""Bad training settings and runs never cost a checkpoint, and the exit status tells a scheduler what happened.

The runs use the training-loop tests' tiny model (tests/test_train_loop.py); the data cases are in
tests/test_bad_input_data.py.
"""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_train_loop as loop_tests
import test_train_step as tiny
from test_bad_input_config import set_key
from dataseg_jax import cli
from dataseg_jax.train import checkpointing, loop

REPO = pathlib.Path(__file__).resolve().parents[1]


class Poisoned:
  """A tiny iterator whose batches carry `poison` float32 [B]: NaN at the stream positions `at`, else 0."""

  def __init__(self, iterator, at):
    self.iterator, self.at = iterator, set(at)

  def __iter__(self):
    return self

  def __next__(self):
    position = self.iterator.position
    batch = next(self.iterator)
    batch["poison"] = np.full(len(batch["image"]), np.nan if position in self.at else 0.0, np.float32)
    return batch

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def poisoned_components(c, at):
  """The tiny components whose loss is non-finite on the batches of stream positions `at` (steps `at` + 1)."""
  def loss(outputs, batch, rng):
    value, terms, stats = tiny.tiny_loss(outputs, batch, rng)
    return value + jnp.sum(batch["poison"]), terms, stats

  comps = loop_tests.components(c, loss_fn=loss)
  make = comps.make_iterator
  comps.make_iterator = lambda i, n: Poisoned(make(i, n), at)
  return comps


def max_abs_param(workdir, step=None) -> float:
  return max(float(np.abs(x).max()) for x in jax.tree.leaves(checkpointing.restore_variables(str(workdir), step)))


def test_a_huge_learning_rate_never_replaces_the_last_good_checkpoint_and_its_advice_resumes(tmp_path):
  """Issue 24: with learning_rate=1e6 on configs/toy.py the first update poisoned the weights and checkpoints 3, 6, 9
  were written during the non-finite streak (max |w| ~24 000 against 4.1), so rerunning with a lower rate resumed
  from bad weights and failed again. Here step 5's update (learning_rate=1e20) is finite but poisons the weights and
  step 5 is a save point: its checkpoint waits for step 6, whose loss (that of its weights) is not finite, and is
  dropped; the save points inside the streak are refused. The latest checkpoint stays step 4, and the message's
  advice (a lower rate, rerun) finishes the run."""
  c = loop_tests.config(total=4)
  loop.train(c, str(tmp_path), loop_tests.components(c))
  good = checkpointing.restore_variables(str(tmp_path), 4)
  c = loop_tests.config(total=16)
  c.checkpoint_every_steps, c.optimizer.max_nonfinite_steps, c.optimizer.learning_rate = 5, 4, 1e20
  with pytest.raises(loop.NonFiniteError) as error:
    loop.train(c, str(tmp_path), loop_tests.components(c))
  assert str(error.value) == (
      "stopping at step 10: 5 consecutive steps had a non-finite loss or gradient norm (limit "
      f"config.optimizer.max_nonfinite_steps=4); the latest checkpoint, step 4 under {tmp_path}/checkpoints, is the "
      "last good state: rerunning the same command resumes from it, with a count of non-finite steps starting at 0. "
      "Lower the learning rate, e.g. --config.optimizer.learning_rate=1e+19 (a tenth of 1e+20; lower it again if the "
      "run stops again); if the loss is non-finite from the first step, check the data with scripts/check_dataset.py.")
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == [1, 4]
  jax.tree.map(np.testing.assert_array_equal, checkpointing.restore_variables(str(tmp_path)), good)
  c.optimizer.learning_rate = 1e-2
  assert loop.train(c, str(tmp_path), loop_tests.components(c))["step"] == 16
  assert checkpointing.make_manager(str(tmp_path)).latest_step() == 16 and max_abs_param(tmp_path) < 10


def test_weights_poisoned_by_the_first_update_are_never_saved(tmp_path):
  """The toy case of issue 24 itself: the first update poisons the weights and the first step is a save point (orbax
  saves the first step); its loss was finite, the next is not, so nothing is written and a rerun starts afresh."""
  c = loop_tests.config(total=16)
  c.optimizer.max_nonfinite_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps = 4, 1e20, 0
  with pytest.raises(loop.NonFiniteError, match=r"; no good checkpoint was written under .*: rerunning the same "
                                                r"command starts afresh, with a count of non-finite steps starting"):
    loop.train(c, str(tmp_path), loop_tests.components(c))
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == []


def test_the_nonfinite_streak_restarts_at_zero_on_resume(tmp_path, monkeypatch):
  """A checkpoint written during a streak (as before issue 24) used to bring the streak back: one more non-finite
  step after resuming then stopped the run. Now the resumed run counts its own streak; the save point of the
  interval with the non-finite step (8) is refused and the next (12) written."""
  c = loop_tests.config(total=4)
  c.optimizer.max_nonfinite_steps = 3

  def save_whatever(self, step, state, data_state, metrics, now):  # the rule before issue 24
    del now
    checkpointing.save(self._manager, step, state, data_state, metrics=metrics, force=True)

  with monkeypatch.context() as m:
    m.setattr(loop.CheckpointGuard, "save_point", save_whatever)
    loop.train(c, str(tmp_path), poisoned_components(c, at=[2, 3]))  # steps 3 and 4: a streak of 2 is saved
  c.total_steps = 12
  result = loop.train(c, str(tmp_path), poisoned_components(c, at=[4]))  # step 5: a streak of 1, not 3
  assert result["step"] == 12 and "nonfinite_steps" not in result  # logged only when a step was skipped
  assert checkpointing.make_manager(str(tmp_path)).all_steps()[-2:] == [4, 12]


def test_a_last_step_after_nonfinite_steps_is_not_saved_and_says_what_to_change(tmp_path):
  c = loop_tests.config(total=8)
  with pytest.raises(loop.NonFiniteError, match=r"^training reached its last step 8, but steps since the previous save "
                     r"point had a non-finite loss or gradient norm, so its state is not saved; the latest checkpoint, "
                     r"step 4 under .* --config.optimizer.learning_rate=0.001 \(a tenth of 0.01"):
    loop.train(c, str(tmp_path), poisoned_components(c, at=[6]))
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == [1, 4]


@pytest.mark.parametrize("key,value,message", [
    ("keep_checkpoints", 0, r"config.keep_checkpoints: must be >= 1 .*0 would delete every one"),
    ("optimizer.learning_rate", -1e-3, r"config.optimizer.learning_rate: must be a finite number > 0, got -0.001"),
    ("data.batch_size", 0, r"config.data.batch_size: must be >= 1"),
])
def test_a_bad_retention_or_schedule_key_stops_before_touching_the_checkpoints(tmp_path, key, value, message):
  """Issue 24: keep_checkpoints=0 deleted every checkpoint and exited 0; a negative rate trained (loss 26.8 -> 301);
  batch_size=0 failed with an IndexError in the mixture."""
  c = loop_tests.config(total=4)
  loop.train(c, str(tmp_path), loop_tests.components(c))
  c.total_steps = 8
  set_key(c, key, value)
  with pytest.raises(ValueError, match="^" + message):
    loop.train(c, str(tmp_path), loop_tests.components(c))
  assert checkpointing.make_manager(str(tmp_path)).all_steps() == [1, 4]


STUBBED_TRAIN = """
import runpy, sys
from dataseg_jax.train import loop
preempted = sys.argv[1] == "preempted"
loop.train = lambda config, workdir: {"step": 3, "preempted": preempted, "loss": 1.0}
sys.argv = ["scripts/train.py", "--config", "configs/toy.py", "--workdir", sys.argv[2]]
runpy.run_path("scripts/train.py", run_name="__main__")
"""


@pytest.mark.parametrize("outcome,status", [("finished", 0), ("preempted", cli.EXIT_PREEMPTED)])
def test_train_script_exit_status_tells_a_preempted_run_from_a_finished_one(tmp_path, outcome, status):
  """Issue 24: a SIGTERM-preempted run exited 0, like a finished one. Now 75 (EX_TEMPFAIL: rerun to resume)."""
  proc = subprocess.run([sys.executable, "-c", STUBBED_TRAIN, outcome, str(tmp_path)], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, DATASEG_NO_REEXEC="1"))
  assert proc.returncode == status, proc.stderr[-2000:]
  if outcome == "preempted":
    assert "preempted at step 3: rerun the same command to resume (exit status 75)" in proc.stderr


def test_a_failed_run_exits_1_with_its_message(tmp_path):
  proc = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/toy.py", "--workdir", str(tmp_path),
                         "--config.keep_checkpoints=0"], cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, DATASEG_NO_REEXEC="1"))
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "error: config.keep_checkpoints: must be >= 1" in proc.stderr
