"""The one command-line convention of the user commands, and absl flag parsing whose mistakes read as one line.

Every user command (scripts/train.py, eval.py, export.py, predict.py, evaluate_predictions.py, check_dataset.py,
embed_vocab.py, convert_weights.py, prepare_tfds.py, prepare_transfer.py, make_toy_data.py and demo.py) starts through
`run(main, __doc__)`:
- absl flags, each with a help string: a command with an undocumented flag does not start (`undocumented`);
- `--help` (also -h, -?, --helpshort, --helpfull) prints the command's docstring and flags and exits 0 before
  anything heavy is imported: commands import JAX, TensorFlow and the library inside `main`, after the flags;
- a bad flag, a `--config.<key>` typo or a config file that does not load ends in one line `error: ...` and exit
  status 1 (`flags_parser`).
"""
import sys
from typing import Callable

from absl import app, flags

HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")

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
      config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
      if hasattr(config, "keys"):  # a config file flag (demo.py's --config is a path): ml_collections defers a
        config.keys()  # load failure to the first use
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


def command_flags(module_name: str) -> list:
  """The flags a command declares (absl's key flags of its module: its own and those it adopted)."""
  return flags.FLAGS.get_key_flags_for_module(module_name)


NO_HELP = "(no help available)"  # what absl puts in place of an empty help string


def undocumented(module_name: str) -> list:
  """Names of the command's flags defined without a help string."""
  return sorted(f.name for f in command_flags(module_name) if not (f.help or "").strip() or NO_HELP in f.help)


def usage(doc: str, module_name: str, full: bool = False) -> str:
  """The docstring, then every flag of the command with its help and default (`full`: absl's flags too)."""
  listing = flags.FLAGS.get_help() if full else flags.FLAGS.module_help(module_name)
  return f"{doc.strip()}\n\nflags:\n{listing}\n"


def run(main: Callable, doc: str, huge_pages: bool = False) -> None:
  """Starts a user command the one way (module docstring): refuses undocumented flags, answers `--help` at once
  with exit status 0, else (after `hardware.use_huge_pages_for_host_buffers` when `huge_pages`) parses the flags
  with `flags_parser` and calls `main(argv)` through absl's `app.run`."""
  module_name = sys.argv[0]  # absl files the flags of `__main__` under the script's path
  missing = undocumented(module_name)
  if missing:
    raise SystemExit(f"error: {module_name} declares flags without a help string: {missing}; give each one")
  asked = [a for a in sys.argv[1:] if a in HELP_ARGS]
  if asked:
    print(usage(doc, module_name, full="--helpfull" in asked), end="")
    sys.exit(0)
  if huge_pages:
    from dataseg_jax import hardware  # pylint: disable=g-import-not-at-top
    hardware.use_huge_pages_for_host_buffers()
  app.run(main, flags_parser=flags_parser(doc))


def checkpoint_mismatch(workdir: str, error: Exception) -> str:
  """The one-line error of eval/export when the model of --config is not the one that wrote the checkpoint (flax
  raises on the first parameter of another shape)."""
  first = str(error).splitlines()[0]
  return (f"error: the checkpoint under {workdir} does not fit the model of this config ({first}); pass the config "
          f"that trained it (its values: {workdir}/config.json)")
