"""Command-line plumbing shared by the scripts: absl flag parsing whose mistakes read as one line."""
import sys
from typing import Callable

from absl import flags

# Exit status of a run that stopped early with a checkpoint to resume from (SIGTERM, a preemption notice): sysexits.h
# EX_TEMPFAIL, "a temporary failure ... the user is invited to retry later"; rerunning the same command resumes.
# Finished runs exit 0, failed ones 1.
EXIT_PREEMPTED = 75


def flags_parser(doc: str) -> Callable:
  """An `app.run(..., flags_parser=)` that turns a `--config.<key>` typo, a missing config file or a bad flag into
  one clear line (and exit status 1) instead of a traceback; `doc` is the script's docstring (its usage line)."""
  usage = next((line.strip() for line in doc.strip().splitlines()[1:] if line.strip()), "")

  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
      if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
        flags.FLAGS["config"].value.keys()  # ml_collections defers a load failure to the first use
      return rest
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config does not have
      detail = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").strip('"').split())
      given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
      sys.exit(f"error: unknown config key ({detail}); flags given: {given}. Every --config.<key> must name a key "
               f"of the config file (see dataseg_jax/config.py base_config() for all keys).")
    except OSError as e:  # ml_collections: the --config file is missing or does not load
      sys.exit(f"error: {' '.join(str(e).split())}")
    except flags.Error as e:  # a config file that raised while loading carries its traceback: keep the error
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      message = lines[-1] if any(line.startswith("Traceback") for line in lines) else str(e)
      sys.exit(f"error: {message}\nUsage: {usage}")

  return parse


def checkpoint_mismatch(workdir: str, error: Exception) -> str:
  """The one-line error of eval/export when the model of --config is not the one that wrote the checkpoint (flax
  raises on the first parameter of another shape)."""
  first = str(error).splitlines()[0]
  return (f"error: the checkpoint under {workdir} does not fit the model of this config ({first}); pass the config "
          f"that trained it (its values: {workdir}/config.json)")
