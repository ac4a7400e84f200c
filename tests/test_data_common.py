"""Shared helpers of the data tests (no tests here): a small toy benchmark and its config."""
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import toy  # noqa: E402
from scripts import make_toy_data  # noqa: E402


def write_toy(out, train=24, val=8, size=64, seed=0):
  make_toy_data.main(["--out", str(out), "--train", str(train), "--val", str(val), "--size", str(size),
                      "--seed", str(seed)])
  return pathlib.Path(out)


def toy_config(data_dir, size=64, batch=4, mode="per_batch", max_segments=24):
  c = toy.get_config()
  c.data_dir = str(data_dir)
  c.data.image_size = size
  c.data.eval_size = size
  c.data.batch_size = batch
  c.data.eval_batch_size = batch
  c.data.mixture_mode = mode
  c.data.max_segments = max_segments
  c.model.num_queries = max(c.model.num_queries, max_segments)
  return c
