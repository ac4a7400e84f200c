"""The commands' one convention (dataseg_jax/cli.py; the user commands of scripts/ and benchmarks/reproduce_toy.py):
absl flags, each documented, and a `--help` that exits 0 at once, before JAX, TensorFlow or torch are imported."""
import os
import pathlib
import re
import resource
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = [["scripts/train.py"], ["scripts/eval.py"], ["scripts/export.py"], ["scripts/predict.py"],
            ["scripts/evaluate_predictions.py"], ["scripts/check_dataset.py"], ["scripts/embed_vocab.py"],
            ["scripts/convert_weights.py"], ["scripts/prepare_tfds.py"], ["scripts/demo.py"],
            ["scripts/make_toy_data.py"], ["benchmarks/reproduce_toy.py"], ["scripts/prepare_transfer.py"]]
HEAVY = ("jax", "jaxlib", "tensorflow", "flax", "torch", "optax", "orbax", "clu")


def _run_help(command):
  """(process, CPU seconds it took, top-level modules it imported) of `python -X importtime <command> --help`."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # as a fresh shell: no re-exec either
  proc = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
  imported = {m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s+(\S+)$", proc.stderr, re.M)}
  return proc, cpu, imported


@pytest.mark.parametrize("command", COMMANDS, ids=[c[-1] for c in COMMANDS])
def test_help_is_fast_documents_every_flag_and_exits_0(command):
  proc, cpu, imported = _run_help(command)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert cpu < 2.0, f"--help took {cpu:.1f} s of CPU"
  assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
  doc, _, listing = proc.stdout.partition("\nflags:\n")
  assert doc.strip() and listing.strip(), proc.stdout
  named = re.findall(r"^\s+--(\w+):(.*)$", listing, re.M)
  assert named, listing
  assert all(text.strip() and "(no help available)" not in text for _, text in named), listing


def test_a_command_with_an_undocumented_flag_does_not_start(tmp_path):
  script = tmp_path / "undocumented.py"
  script.write_text(
      '"""A command.\n\n  python undocumented.py --a A\n"""\nfrom absl import flags\nfrom dataseg_jax import cli\n'
      'flags.DEFINE_string("a", None, "Documented.")\nflags.DEFINE_integer("b", 1, "")\nflags.DEFINE_enum("c", "x", ["x", "y"], None)\n'
      'if __name__ == "__main__":\n  cli.run(lambda argv: print("ran"), __doc__)\n')
  proc = subprocess.run([sys.executable, str(script), "--a", "x"], capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 1 and "ran" not in proc.stdout
  assert "declares flags without a help string: ['b', 'c']" in proc.stderr, proc.stderr
