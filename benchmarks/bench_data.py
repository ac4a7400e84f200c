"""Input-pipeline throughput: training images/s per dataset at the toy size and at 512x512.

  python benchmarks/bench_data.py [--quick] [--data_dir DIR]

Writes a small toy benchmark (or reads --data_dir), then times each dataset's training stream
alone (per_batch mode, one process, the machine's cores) after a warm-up batch. `run(quick)` is the
entry point `benchmarks/bench.py` gathers.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # configs/ and scripts/ are folders of the repository, not installed packages

from configs import toy  # noqa: E402
from data_pipelines import mixture  # noqa: E402
from data_pipelines import registry  # noqa: E402
from dataseg_jax import hardware  # noqa: E402


def _throughput(config, name, batches):
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.datasets = {name: config.data.datasets[name]}
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  next(it)
  start, n = time.perf_counter(), 0
  for _ in range(batches):
    n += len(next(it)["image"])
  return n / (time.perf_counter() - start)


def run(quick: bool = True, data_dir: str = "") -> dict:
  """{'<dataset>/<size>px_img_per_s': float} for sizes 128 (toy) and 512 (the R50 recipe's crop)."""
  from scripts import make_toy_data  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    if not data_dir:
      data_dir = tmp
      make_toy_data.write(tmp, train=32 if quick else 200, val=4)
    out = {}
    for size in (128, 512):
      config = toy.get_config()
      config.data_dir = data_dir
      config.data.image_size = size
      config.data.batch_size = 8
      for name in [n for n, e in config.data.datasets.items() if e.ratio > 0]:  # training streams only
        out[f"{name}/{size}px_img_per_s"] = round(_throughput(config, name, 4 if quick else 25), 1)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--data_dir", default="")
  args = p.parse_args()
  print(json.dumps(run(args.quick, args.data_dir), indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
