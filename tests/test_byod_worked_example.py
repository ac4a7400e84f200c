"""docs/datasets.md's worked example as a test: a fourth dataset added by config trains with the other three
and every dataset is evaluated on its tasks; shared names share one union row."""
import collections
import json
import logging
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import mixture
from data_pipelines import registry
from dataseg_jax import contract
from dataseg_jax.train import loop
from dataseg_jax.vocab import embeddings
from dataseg_jax.vocab import names as names_lib

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
  c.data.batch_size, c.data.eval_batch_size, c.data.prefetch = 4, 2, 1
  c.loss.num_points = c.matcher.num_points = 256
  c.vocab.encoder = "hash"
  return c


def test_union_vocabulary_shares_rows_by_name_not_by_synonym(toy, caplog):
  caplog.set_level(logging.INFO)
  vocab = registry.build_vocab(toy4_config(toy))
  assert "union vocabulary: 27 classes from 5 datasets" in caplog.text  # what train.py logs at start
  assert "toy_city: 4 classes (4 things): vehicle, pedestrian, puppy, boat" in caplog.text
  assert vocab.datasets == ["toy_ade", "toy_city", "toy_coco", "toy_o365", "toy_heldout"]  # eval-only last
  d = {name: i for i, name in enumerate(vocab.datasets)}
  boat = vocab.names.index("boat")
  assert vocab.class_mask[d["toy_city"], boat] and vocab.class_mask[d["toy_o365"], boat]
  assert vocab.names.count("boat") == 1
  sky = vocab.names.index("sky")  # toy_coco's 'sky-other-merged' normalises to toy_ade's 'sky'
  assert vocab.local_to_union[d["toy_coco"]][vocab.local_names[d["toy_coco"]].index("sky-other-merged")] == sky
  for synonym, other in (("vehicle", "car"), ("pedestrian", "person"), ("puppy", "dog")):
    assert synonym in vocab.names and other in vocab.names and synonym != other


def test_same_name_shares_the_embedding_and_synonyms_are_nearest(toy):
  """Each dataset's classifier is the union embeddings gathered by its local_to_union: 'boat' of toy_city and
  of toy_o365 is the same vector; MiniLM puts each synonym's nearest other row on its synonyms."""
  vocab = registry.build_vocab(toy4_config(toy))
  emb = embeddings.embed_names(vocab.names, encoder="minilm")
  per_dataset = {n: emb[vocab.local_to_union[i]] for i, n in enumerate(vocab.datasets)}
  city, o365 = (vocab.local_names[vocab.dataset_index(n)] for n in ("toy_city", "toy_o365"))
  np.testing.assert_array_equal(per_dataset["toy_city"][city.index("boat")], per_dataset["toy_o365"][o365.index("boat")])
  sim = emb @ emb.T
  np.fill_diagonal(sim, -1)
  for name, synonyms in (("vehicle", {"car", "automobile"}), ("pedestrian", {"person", "human"}),
                         ("puppy", {"dog"}), ("automobile", {"car", "vehicle"}), ("human", {"person", "pedestrian"})):
    assert vocab.names[int(np.argmax(sim[vocab.names.index(name)]))] in synonyms, name


def test_train_iterator_draws_all_four_training_datasets_never_the_heldout(toy):
  c = toy4_config(toy)
  vocab = registry.build_vocab(c)
  it = mixture.TrainIterator(c, vocab)
  seen = collections.Counter()
  heldout_rows = [vocab.names.index(n) for n in names_lib.read_names(toy / "heldout_names.txt")]
  first = mixture.dataset_choices(c, 64)[:, 0]  # the draws: enough steps for each dataset to come up once
  steps = 1 + max(int(np.argmax(first == k)) for k in range(4))
  assert len(set(first.tolist())) == 4 and steps <= 24
  for _ in range(steps):
    batch = next(it)
    did = int(batch["dataset_id"][0])
    assert (batch["dataset_id"] == did).all()  # per_batch: one dataset per step
    seen[vocab.datasets[did]] += 1
    classes = batch["seg_class"][batch["seg_valid"]]
    assert vocab.class_mask[did, classes].all() and not np.isin(classes, heldout_rows).any()
    if vocab.datasets[did] == "toy_city":
      assert (batch["task"] == contract.Task.INSTANCE).all() and batch["seg_has_mask"][batch["seg_valid"]].all()
  assert set(seen) == {"toy_ade", "toy_city", "toy_coco", "toy_o365"}, seen


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
