"""docs/datasets.md's worked example as a test: a fourth dataset added by config trains with the other three
and every dataset is evaluated on its tasks; shared names share one union row."""
import json
import pathlib
import runpy
import subprocess
import sys

import pytest

from data_pipelines import registry
from dataseg_jax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy4")
  subprocess.run([sys.executable, str(REPO / "scripts/make_toy_data.py"), "--out", str(out), "--train", "6",
                  "--val", "2", "--size", "64"], check=True, capture_output=True, cwd=REPO, timeout=120)
  return out


def toy4_config(data_dir):
  c = runpy.run_path(str(REPO / "configs/toy4.py"))["get_config"]()
  c.data_dir, c.total_steps, c.eval_every_steps = str(data_dir), 4, -1
  c.log_every_steps = c.checkpoint_every_steps = 4
  c.data.image_size = c.data.eval_size = 64
  c.data.batch_size, c.data.eval_batch_size, c.data.shuffle_buffer, c.data.prefetch = 4, 2, 8, 1
  c.loss.num_points = c.matcher.num_points = 256
  c.vocab.encoder = "hash"
  return c


def test_union_vocabulary_shares_rows_by_name_not_by_synonym(toy):
  vocab = registry.build_vocab(toy4_config(toy))
  d = {name: i for i, name in enumerate(vocab.datasets)}
  boat = vocab.names.index("boat")
  assert vocab.class_mask[d["toy_city"], boat] and vocab.class_mask[d["toy_o365"], boat]
  assert vocab.names.count("boat") == 1
  for synonym, other in (("vehicle", "car"), ("pedestrian", "person"), ("puppy", "dog")):
    assert synonym in vocab.names and other in vocab.names and synonym != other


@pytest.mark.slow
def test_four_datasets_train_together_and_each_is_evaluated(toy, tmp_path):
  c = toy4_config(toy)
  result = loop.train(c, str(tmp_path), loop.build_components(c, str(tmp_path)))
  assert result["step"] == 4
  metrics = runpy.run_path(str(REPO / "scripts/eval.py"))["run"](c, str(tmp_path))
  for key in ("toy_ade/semantic/mIoU", "toy_ade/panoptic/PQ", "toy_coco/panoptic/PQ", "toy_o365/instance/AP",
              "toy_city/instance/AP", "toy_heldout/semantic/mIoU"):
    assert key in metrics, sorted(metrics)
  saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
  assert saved["toy_city/instance/AP"] == metrics["toy_city/instance/AP"]
