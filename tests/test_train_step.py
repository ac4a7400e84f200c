"""The jitted train step: one compilation for every dataset, the non-finite guard, per-dataset/task metrics.

A tiny stand-in model and loss (below) keep these tests about the step, not about DataSeg; they follow the
model and criterion contracts of docs/contracts.md (outputs `[L, B, Q, ...]`, per-example terms `[B]`).
"""
import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dataseg_jax import config as config_lib
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.models.layers import dense
from dataseg_jax.models.resnet import conv_kernel_init
from dataseg_jax.train import loop, optimizer as optimizer_lib, step as step_lib

SIZE, N, C, E, Q = 32, 4, 6, 8, 5
DATASETS = ("toy_ade", "toy_coco", "toy_o365")
TASK_OF = (0, 1, 3)  # semantic, panoptic, box
CLASS_MASK = np.array([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], bool)


class TinySeg(nn.Module):
  """Stand-in for DataSeg: `backbone` conv, query features, cosine-free class logits, mask logits at 1/4; its
  parameters carry logical axis names as DataSeg's do (models/dataseg.py)."""
  features: int = 8
  queries: int = Q

  @nn.compact
  def __call__(self, images, class_embeddings, class_mask, train=False):
    x = images.astype(jnp.float32) / 255.0
    feats = nn.relu(nn.Conv(self.features, (3, 3), strides=(4, 4), name="backbone",
                            kernel_init=conv_kernel_init())(x))  # [B, H/4, W/4, F]
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("queries", "embed"))
    queries = self.param("query_embed", init, (self.queries, self.features))
    pooled = feats.mean((1, 2))  # [B, F]
    q = dense(E, ("embed", "vocab_embed"), name="classifier")(queries[None] + pooled[:, None])  # [B, Q, E]
    logits = jnp.einsum("bqe,ce->bqc", q, class_embeddings)
    logits = jnp.where(class_mask[:, None], logits, -1e9)
    logits = jnp.concatenate([logits, jnp.zeros_like(logits[..., :1])], -1)
    masks = jnp.einsum("bhwd,qd->bqhw", feats, queries)
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


def tiny_loss(outputs, batch, rng):
  """Per-example terms: CE of query k against segment k's class, BCE of mask k against segment k."""
  del rng
  logits, masks = outputs["pred_logits"][-1][:, :N], outputs["pred_masks"][-1][:, :N]  # [B, N, C+1], [B, N, h, w]
  valid = batch["seg_valid"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["seg_class"])
  target = (batch["segment_map"][:, None, ::4, ::4] == jnp.arange(N)[None, :, None, None]).astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(masks, target).mean((2, 3))
  b = logits.shape[0]
  terms = {"loss_ce": (ce * valid).sum(1) / b, "loss_mask": (bce * valid).sum(1) / b}
  return sum(t.sum() for t in terms.values()), terms, {}


def make_batch(rng: np.random.Generator, batch: int, dataset: int) -> dict:
  """A random batch of one dataset in the batch contract."""
  classes = np.flatnonzero(CLASS_MASK[dataset])
  seg = rng.integers(-1, N, (batch, SIZE, SIZE)).astype(np.int32)
  return {
      "image": rng.integers(0, 255, (batch, SIZE, SIZE, 3)).astype(np.uint8),
      "valid": np.ones((batch, SIZE, SIZE), bool),
      "dataset_id": np.full((batch,), dataset, np.int32),
      "task": np.full((batch,), TASK_OF[dataset], np.int32),
      "segment_map": seg,
      "seg_class": rng.choice(classes, (batch, N)).astype(np.int32),
      "seg_is_thing": np.ones((batch, N), bool),
      "seg_box": np.tile(np.array([0, 0, 1, 1], np.float32), (batch, N, 1)),
      "seg_valid": rng.random((batch, N)) < 0.8,
      "seg_has_mask": np.ones((batch, N), bool),
  }


def tiny_config() -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.total_steps = 20
  c.model.num_queries = Q
  c.data.max_segments = N
  c.data.image_size = SIZE
  c.data.batch_size = 4
  c.optimizer.warmup_steps = 2
  c.optimizer.learning_rate = 1e-2
  c.optimizer.clip_norm = 1.0
  return c


def setup(config, loss_fn=tiny_loss, devices=None):
  """Mesh, jitted step, a fresh state and the replicated vocabulary tables."""
  mesh = sharding_lib.make_mesh(config, devices)
  vocab = types.SimpleNamespace(datasets=DATASETS, class_mask=CLASS_MASK)
  embeddings = np.random.default_rng(1).normal(size=(C, E)).astype(np.float32)
  components = loop.Components(TinySeg(), loss_fn, vocab, embeddings, make_iterator=None)
  tx = optimizer_lib.make_optimizer(config)
  _, shardings, create = loop.init_state(config, components, mesh, tx, (SIZE, SIZE, 3))
  fn = functools.partial(step_lib.train_step, model=components.model, loss_fn=loss_fn, tx=tx,
                         schedule=optimizer_lib.learning_rate_schedule(config),
                         ema_decay=float(config.optimizer.ema_decay), num_datasets=len(DATASETS))
  jitted = step_lib.jit_train_step(fn, mesh, shardings, sharding_lib.batch_sharding(mesh))
  tables = (jnp.asarray(embeddings), jnp.asarray(CLASS_MASK))
  return mesh, jitted, create(), tables


def test_step_compiles_once_for_all_three_datasets_and_tasks():
  config = tiny_config()
  mesh, jitted, state, tables = setup(config)
  rng = np.random.default_rng(0)
  for i in range(6):
    state, metrics = jitted(state, sharding_lib.global_batch(make_batch(rng, 4, i % 3), mesh), *tables)
  assert bool(metrics["finite"])
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 6


def test_per_dataset_and_per_task_sums_match_numpy():
  terms = {"loss_ce": jnp.array([1.0, 2.0, 3.0, 4.0]), "loss_mask": jnp.array([0.5, 0.0, 1.5, 2.0])}
  dataset = jnp.array([0, 2, 0, 1])
  sums, counts = step_lib.grouped_sums(terms, dataset, 3, jnp.array(True))
  np.testing.assert_allclose(sums["loss_ce"], [4.0, 4.0, 2.0])
  np.testing.assert_allclose(sums["loss_mask"], [2.0, 2.0, 0.0])
  np.testing.assert_allclose(counts, [2, 1, 1])
  sums, counts = step_lib.grouped_sums(terms, dataset, 3, jnp.array(False))
  assert float(counts.sum()) == 0 and float(sums["loss_ce"].sum()) == 0


def test_summary_reports_term_per_dataset_as_a_whole_batch_of_it():
  history = [{"finite": True, "loss": 3.0, "grad_norm": 1.0, "lr": 0.1, "nonfinite_streak": 0,
              "by_dataset": {"loss_ce": np.array([1.0, 0.0, 0.5])}, "count_dataset": np.array([2.0, 0.0, 2.0]),
              "by_task": {"loss_ce": np.array([1.0, 0.0, 0.0, 0.5])}, "count_task": np.array([2.0, 0, 0, 2.0])}]
  s = loop.summarize(history, DATASETS, global_batch=4)
  assert s["loss_ce/toy_ade"] == 2.0 and s["loss_ce/toy_o365"] == 1.0 and "loss_ce/toy_coco" not in s


def test_summary_leaves_out_terms_a_group_never_has_and_task_series_that_repeat_a_dataset():
  """Each task from one dataset: no per-task series (they would repeat the per-dataset ones), no loss_proj for
  the mask dataset (always 0), and no count of skipped steps when none was skipped. Two datasets labelled semantic: the semantic series is their mix, and is kept."""
  one_each = {"finite": True, "loss": 3.0, "grad_norm": 1.0, "lr": 0.1, "nonfinite_streak": 0,
              "by_dataset": {"loss_ce": np.array([1.0, 0.0, 0.5]), "loss_proj": np.array([0.0, 0.0, 0.25])},
              "count_dataset": np.array([2.0, 0.0, 2.0]),
              "by_task": {"loss_ce": np.array([1.0, 0.0, 0.0, 0.5]), "loss_proj": np.array([0.0, 0.0, 0.0, 0.25])},
              "count_task": np.array([2.0, 0.0, 0.0, 2.0])}
  s = loop.summarize([one_each], DATASETS, global_batch=4)
  assert sorted(k for k in s if "/" in k) == ["loss_ce/toy_ade", "loss_ce/toy_o365", "loss_proj/toy_o365"]
  assert "nonfinite_steps" not in s  # no step skipped: nothing to log
  assert loop.summarize([one_each, dict(one_each, finite=False)], DATASETS, global_batch=4)["nonfinite_steps"] == 1
  shared = dict(one_each, by_dataset={"loss_ce": np.array([1.0, 3.0, 0.0]), "loss_proj": np.zeros(3)},
                count_dataset=np.array([2.0, 2.0, 0.0]), by_task={"loss_ce": np.array([4.0, 0, 0, 0]),
                                                                  "loss_proj": np.zeros(4)},
                count_task=np.array([4.0, 0, 0, 0]))
  s = loop.summarize([shared], DATASETS, global_batch=4)
  assert sorted(k for k in s if "/" in k) == ["loss_ce/task_semantic", "loss_ce/toy_ade", "loss_ce/toy_coco"]
  assert s["loss_ce/task_semantic"] == 4.0


def test_summary_reports_merge_statistics_per_layer_over_the_steps_that_define_them():
  """Step 2 is a box-only batch (no merging groups: NaN); skipped (non-finite) steps do not count."""
  base = {"loss": 3.0, "grad_norm": 1.0, "lr": 0.1, "nonfinite_streak": 0, "by_dataset": {}, "by_task": {},
          "count_dataset": np.zeros(3), "count_task": np.zeros(4)}
  nan = np.nan
  steps = [(True, [0.5, 0.1], [4.0, 2.0], [1.0, 0.0]), (True, [nan, nan], [nan, nan], [0.0, 0.0]),
           (True, [0.3, 0.0], [6.0, 3.0], [3.0, 0.0]), (False, [0.9, 0.9], [9.0, 9.0], [9.0, 9.0])]
  history = [dict(base, finite=f, stats={"merge_zero_grad_frac": np.array(z), "merge_group_size_max": np.array(g),
                                         "segments_without_loss": np.array(w)}) for f, z, g, w in steps]
  s = loop.summarize(history, DATASETS, global_batch=4)
  assert s["merge/zero_grad_frac/layer_0"] == pytest.approx(0.4) and s["merge/zero_grad_frac/layer_1"] == 0.05
  assert s["merge/group_size_max/layer_0"] == 6.0 and s["merge/group_size_max/layer_1"] == 3.0
  assert s["merge/segments_without_loss/layer_0"] == pytest.approx(4 / 3)
  only_boxes = loop.summarize(history[1:2], DATASETS, global_batch=4)
  assert "merge/zero_grad_frac/layer_0" not in only_boxes and only_boxes["merge/segments_without_loss/layer_0"] == 0


def _nan_loss(outputs, batch, rng):
  loss, terms, stats = tiny_loss(outputs, batch, rng)
  return jnp.where(batch["image"][0, 0, 0, 0] == 255, jnp.nan, loss), terms, stats


def _nan_gradient(outputs, batch, rng):
  """A finite loss whose gradient is NaN on the marked batches: sqrt at 0 (infinite slope) times 0."""
  loss, terms, stats = tiny_loss(outputs, batch, rng)
  zero = 0.0 * jnp.sum(outputs["pred_masks"])
  s = jnp.where(batch["image"][0, 0, 0, 0] == 255, zero, 1.0 + zero)
  return loss + jnp.sqrt(s), terms, stats


@pytest.mark.parametrize("poisoned", [_nan_loss, _nan_gradient])
def test_nonfinite_loss_or_gradient_skips_update_and_counts_streak(poisoned):

  config = tiny_config()
  config.optimizer.ema_decay = 0.9
  mesh, jitted, state, tables = setup(config, poisoned)
  rng = np.random.default_rng(0)
  state, _ = jitted(state, sharding_lib.global_batch(make_batch(rng, 4, 0), mesh), *tables)
  before = jax.device_get((state.params, state.opt_state, state.ema))
  for i in range(2):
    bad = make_batch(rng, 4, i)
    bad["image"][0, 0, 0, 0] = 255
    state, metrics = jitted(state, sharding_lib.global_batch(bad, mesh), *tables)
  after = jax.device_get((state.params, state.opt_state, state.ema))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert not bool(metrics["finite"]) and int(metrics["nonfinite_streak"]) == 2
  assert int(state.step) == 3 and int(state.nonfinite_total) == 2
  assert float(metrics["count_dataset"].sum()) == 0  # a skipped step does not enter the averages
  state, metrics = jitted(state, sharding_lib.global_batch(make_batch(rng, 4, 2), mesh), *tables)
  assert int(state.nonfinite_streak) == 0 and int(state.nonfinite_total) == 2
  np.testing.assert_allclose(float(metrics["lr"]), float(optimizer_lib.learning_rate_schedule(config)(1)))
