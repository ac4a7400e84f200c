"""What a measurement depends on beyond its command, recorded by reproduce_toy.py per run and bench.py per part."""
import importlib.metadata
import pathlib
import subprocess
import time

from dataseg_jax import hardware

REPO = pathlib.Path(__file__).resolve().parents[1]
CODE = ("dataseg_jax", "data_pipelines", "configs", "scripts", "benchmarks")  # what the numbers depend on


def provenance() -> dict:
  """The commit ('+dirty' when CODE has uncommitted changes), the time, the CPU model and vector extensions, the
  CPUs this process may use (XLA-CPU's thread count) and jax's version. Runs repeat bit for bit, and timings
  compare, only where all of these agree (README, Reproducibility)."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  if git("status", "--porcelain", "--untracked-files=no", "--", *CODE):
    commit += "+dirty"
  return {"commit": commit, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **hardware.cpu_model(),
          "cpus": hardware.host_cores(), "jax": importlib.metadata.version("jax")}
