"""Trains DataSeg; rerunning the same command resumes from the latest checkpoint in --workdir.

  python scripts/train.py --config configs/toy.py --workdir workdirs/toy
  python scripts/train.py --config configs/toy.py:toy_ade --workdir workdirs/toy_ade --config.total_steps=20

Any config key can be overridden as `--config.<key>=<value>`. TensorBoard events go to WORKDIR, checkpoints
to WORKDIR/checkpoints/<step>/. SIGTERM saves a checkpoint and exits; multi-host runs call
`jax.distributed.initialize()` when `--config.distributed=True` or the cluster environment says so.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from dataseg_jax import hardware
from dataseg_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl flag parsing that turns a `--config.<key>` typo into one clear line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config does not have
    detail = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").strip('"').split())
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config key ({detail}); flags given: {given}. Every --config.<key> must name a key "
             f"of the config file (see dataseg_jax/config.py base_config() for all keys).")
  except flags.Error as e:
    sys.exit(f"error: {e}\nUsage: {__doc__.strip().splitlines()[2].strip()}")


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    result = loop.train(_CONFIG.value, _WORKDIR.value)
  except (loop.WorkdirError, loop.NonFiniteError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  state = "preempted, checkpoint saved" if result["preempted"] else "done"
  logging.info("%s at step %d: %s", state, result["step"], {k: v for k, v in result.items() if k != "step"})


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  app.run(main, flags_parser=parse_flags)
