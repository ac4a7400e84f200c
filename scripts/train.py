"""Trains DataSeg; rerunning the same command resumes from the latest checkpoint in --workdir.

  python scripts/train.py --config configs/toy.py --workdir workdirs/toy
  python scripts/train.py --config configs/toy.py:toy_ade --workdir workdirs/toy_ade --config.total_steps=20

Any config key can be overridden as `--config.<key>=<value>`. TensorBoard events go to WORKDIR, checkpoints
to WORKDIR/checkpoints/<step>/. SIGTERM saves a checkpoint and exits; multi-host runs call
`jax.distributed.initialize()` when `--config.distributed=True` or the cluster environment says so.

Exit status: 0 finished, 75 (`cli.EXIT_PREEMPTED`, EX_TEMPFAIL) stopped early by SIGTERM or a preemption notice
with a checkpoint to resume from (rerun the same command), 1 failed (the message says why and what to do).
"""
import logging
import sys

from absl import flags
from ml_collections import config_flags

from dataseg_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from dataseg_jax.train import loop  # pylint: disable=g-import-not-at-top  # after the flags: --help stays fast

  logging.getLogger().setLevel(logging.INFO)
  try:
    result = loop.train(_CONFIG.value, _WORKDIR.value)
  except (loop.WorkdirError, loop.NonFiniteError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  scalars = {k: v for k, v in result.items() if k != "step"}
  if result["preempted"]:
    logging.warning("preempted at step %d: rerun the same command to resume (exit status %d): %s", result["step"],
                    cli.EXIT_PREEMPTED, scalars)
    sys.exit(cli.EXIT_PREEMPTED)
  logging.info("done at step %d: %s", result["step"], scalars)


if __name__ == "__main__":
  cli.run(main, __doc__, huge_pages=True)
