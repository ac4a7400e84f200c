"""The dense criterion (config.loss.sampling='dense') against a brute-force numpy transcription, point sampling
against the dense grid, and the claim that its compiled criterion holds no gather or scatter."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dataseg_jax.contract import Task
from dataseg_jax.losses import criterion as criterion_lib
from dataseg_jax.losses import mask_losses
from test_losses_terms import (LEFTOVER_PENALTY, TOL, VARIANTS, np_bce, np_dice, np_groups, np_log_softmax,
                               np_merged_grid, np_proj_loss, np_sigmoid, random_batch, small_config)


def np_pool(grid, stride):
  """Mean over stride x stride cells, by loops."""
  h, w = grid.shape
  out = np.zeros((h // stride, w // stride))
  for i in range(h // stride):
    for j in range(w // stride):
      out[i, j] = grid[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].mean()
  return out.reshape(-1)


def np_dense_targets(segment_map, n, grid):
  """Fraction of each cell's label pixels that belong to segment k, by loops."""
  gh, gw = grid
  h, w = segment_map.shape
  kh, kw = h // gh, w // gw
  out = np.zeros((n, gh * gw))
  for k in range(n):
    for i in range(gh):
      for j in range(gw):
        out[k, i * gw + j] = (segment_map[i * kh:(i + 1) * kh, j * kw:(j + 1) * kw] == k).mean()
  return out


def np_dense_layer(logits, masks, ex, cfg):
  """Unnormalised sums (ce_num, ce_den, mask, dice, proj) of one example at one layer, dense."""
  logits, masks = logits.astype(np.float64), masks.astype(np.float64)
  q, c1 = logits.shape
  n = len(ex["seg_class"])
  h, w = masks.shape[1:]
  lc, stride = cfg.loss, cfg.loss.dense_stride
  logp = np_log_softmax(logits)
  leader, merges, weight = np_groups(logp, int(ex["task"]), ex, lc.merge, lc.merge_background)
  active = leader == np.arange(q)
  members = {j: np.nonzero(leader == j)[0] if active[j] else np.array([j]) for j in range(q)}
  single = {j: not active[j] or (len(members[j]) == 1 and (lc.merge == "hard" or not merges[j])) for j in range(q)}
  mlogp = {j: np.log(np.exp(logp[members[j]]).mean(0)) for j in range(q)}
  targets = np_dense_targets(ex["segment_map"], n, (h // stride, w // stride))

  def predicted(j):
    """(logit, prob, is_logit) of slot j on the dense grid."""
    grid, is_logit = (masks[j], True) if single[j] else np_merged_grid(masks, weight[j], members[j], lc.merge_mask)
    pooled = np_pool(grid, stride)
    return pooled, np_sigmoid(pooled) if is_logit else pooled, is_logit

  valid = np.nonzero(ex["seg_valid"])[0]
  rows = [j for j in range(q) if active[j] or lc.match_leftover]
  cost = np.zeros((len(rows), len(valid)))
  for a, j in enumerate(rows):
    logit_j, prob_j, is_logit = predicted(j)
    for b, k in enumerate(valid):
      c = -cfg.matcher.class_cost * np.exp(mlogp[j][ex["seg_class"][k]])
      if ex["seg_has_mask"][k]:
        c += (cfg.matcher.mask_cost * np_bce(logit_j, prob_j, is_logit, targets[k])
              + cfg.matcher.dice_cost * np_dice(prob_j, targets[k]))
      else:
        c += cfg.matcher.projection_cost * np_proj_loss(masks[j], ex["seg_box"][k])
      cost[a, b] = c + (0.0 if active[j] else LEFTOVER_PENALTY)
  r, c = linear_sum_assignment(cost) if cost.size else ([], [])
  pairs = {rows[i]: valid[k] for i, k in zip(r, c)}
  out = dict(ce_num=0.0, ce_den=0.0, mask=0.0, dice=0.0, proj=0.0)
  for j in range(q):
    k = pairs.get(j)
    if k is None and not active[j]:
      continue
    wt = lc.no_object_weight if k is None else 1.0
    out["ce_num"] += -wt * mlogp[j][c1 - 1 if k is None else ex["seg_class"][k]]
    out["ce_den"] += wt
  for j, k in pairs.items():
    if ex["seg_has_mask"][k]:
      logit, prob, is_logit = predicted(j)
      out["mask"] += np_bce(logit, prob, is_logit, targets[k])
      out["dice"] += np_dice(prob, targets[k])
    else:
      out["proj"] += np_proj_loss(masks[j], ex["seg_box"][k])
  return out


def np_dense_criterion(outputs, batch, cfg):
  logits, masks = np.asarray(outputs["pred_logits"]), np.asarray(outputs["pred_masks"])
  num_layers, b = logits.shape[:2]
  keys = ("task", "segment_map", "seg_class", "seg_is_thing", "seg_box", "seg_valid", "seg_has_mask")
  sums = [[np_dense_layer(logits[l, i], masks[l, i], {k: np.asarray(batch[k][i]) for k in keys}, cfg)
           for i in range(b)] for l in range(num_layers)]
  num_masks = max(1.0, float(np.sum(batch["seg_valid"] & batch["seg_has_mask"])))
  num_boxes = max(1.0, float(np.sum(batch["seg_valid"] & ~batch["seg_has_mask"])))
  lc = cfg.loss
  terms = {name: np.zeros(b) for name in criterion_lib.TERMS}
  for l in range(num_layers):
    den = sum(s["ce_den"] for s in sums[l])
    for i, s in enumerate(sums[l]):
      terms["loss_ce"][i] += lc.class_weight * s["ce_num"] / den
      terms["loss_mask"][i] += lc.mask_weight * s["mask"] / num_masks
      terms["loss_dice"][i] += lc.dice_weight * s["dice"] / num_masks
      terms["loss_proj"][i] += lc.projection_weight * s["proj"] / num_boxes
  return terms


def dense_config(variant=VARIANTS[0], stride=1):
  cfg = small_config(variant[0], merge_mask=variant[1], merge_background=variant[2], match_leftover=variant[3])
  cfg.loss.sampling = "dense"
  cfg.loss.dense_stride = stride
  return cfg


def test_dense_targets_are_the_covered_fraction_of_each_cell(rng):
  seg = rng.integers(-1, 5, size=(24, 32)).astype(np.int32)
  for grid in ((24, 32), (6, 8), (3, 4)):
    got = np.asarray(mask_losses.dense_targets(jnp.asarray(seg), 5, grid))
    np.testing.assert_allclose(got, np_dense_targets(seg, 5, grid), **TOL)


def test_pool_grid_is_the_mean_of_each_cell(rng):
  maps = rng.normal(size=(3, 8, 12)).astype(np.float32)
  got = np.asarray(mask_losses.pool_grid(jnp.asarray(maps), 4))
  for r in range(3):
    np.testing.assert_allclose(got[r], np_pool(maps[r], 4), **TOL)


@pytest.mark.parametrize("variant,stride", [(VARIANTS[0], 1), (VARIANTS[0], 2), (VARIANTS[1], 1),
                                            (VARIANTS[3], 2), (VARIANTS[5], 1)])
def test_dense_criterion_terms_equal_numpy_transcription_on_a_mixed_task_batch(variant, stride, rng):
  """Every task in one batch (semantic, panoptic, instance, box); MERGE variants; the mask grid and a pooled one."""
  cfg = dense_config(variant, stride)
  outputs, batch = random_batch(rng, c=4, n=4)
  outputs["pred_logits"][..., -1] += 1.0
  loss, terms, _ = jax.jit(lambda o, b: criterion_lib.criterion(o, b, cfg, jax.random.key(0)))(outputs, batch)
  ref = np_dense_criterion(outputs, batch, cfg)
  for name in criterion_lib.TERMS:
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=name, **TOL)
  np.testing.assert_allclose(float(loss), sum(v.sum() for v in ref.values()), rtol=1e-5)
  assert all(np.asarray(terms[k]).sum() > 0 for k in criterion_lib.TERMS)


def test_dense_gradient_equals_finite_differences_of_the_numpy_transcription():
  rng = np.random.default_rng(2)
  cfg = dense_config(stride=2)
  outputs, batch = random_batch(rng, b=4, q=8, c=4, n=4, layers=2)
  grads = jax.jit(jax.grad(lambda o: criterion_lib.criterion(o, batch, cfg, jax.random.key(0))[0]))(outputs)
  wide = jax.tree.map(lambda x: np.asarray(x, np.float64), outputs)
  total = lambda o: sum(v.sum() for v in np_dense_criterion(o, batch, cfg).values())  # noqa: E731
  eps = 1e-6
  for _ in range(2):
    d = jax.tree.map(lambda x: rng.normal(size=x.shape), wide)
    fd = (total(jax.tree.map(lambda x, y: x + eps * y, wide, d))
          - total(jax.tree.map(lambda x, y: x - eps * y, wide, d))) / (2 * eps)
    assert sum(float((np.asarray(grads[k], np.float64) * d[k]).sum()) for k in d) == pytest.approx(fd, rel=1e-3)


def test_uniform_point_sampling_averages_to_the_dense_bce_and_dice():
  """BCE and dice of a smooth logit map against a blocky segment, at uniform points (bilinear samples of both,
  as the point-sampled criterion reads them) vs on every cell of the grid (the dense criterion): the mean over
  200 draws of 1024 points agrees with the dense value within 2 % (the bilinear interpolation of the map and of the
  label's edges against cell averages; the statistical error of the mean is about 0.1 %)."""
  rng = np.random.default_rng(0)
  h, w = 32, 48
  yy, xx = np.mgrid[0:h, 0:w] / 8.0
  logits = (3 * np.sin(yy) * np.cos(xx * 0.7) + 0.5).astype(np.float32)[None]
  seg = np.full((4 * h, 4 * w), -1, np.int32)
  seg[20:90, 30:150] = 0
  seg[60:120, 100:170] = 1
  targets = mask_losses.dense_targets(jnp.asarray(seg), 2, (h, w))[:1]
  dense_logit = mask_losses.pool_grid(jnp.asarray(logits), 1)
  is_logit = jnp.array([True])
  dense_bce = float(mask_losses.sigmoid_bce(dense_logit, jax.nn.sigmoid(dense_logit), is_logit, targets)[0])
  dense_dice = float(mask_losses.dice(jax.nn.sigmoid(dense_logit), targets)[0])

  @jax.jit
  def sampled(key):
    pts = jax.random.uniform(key, (1, 1024, 2))
    logit = jax.vmap(mask_losses.point_sample)(jnp.asarray(logits), pts)
    labels = mask_losses.sample_segment_masks(jnp.asarray(seg), jnp.array([0]), pts)
    return (mask_losses.sigmoid_bce(logit, jax.nn.sigmoid(logit), is_logit, labels)[0],
            mask_losses.dice(jax.nn.sigmoid(logit), labels)[0])

  draws = np.array([sampled(k) for k in jax.random.split(jax.random.key(0), 200)])
  mean, sem = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
  assert (sem < 0.002 * mean).all()
  np.testing.assert_allclose(mean, [dense_bce, dense_dice], rtol=0.02)


def _gathers_and_scatters(fn, *args) -> int:
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return len(re.findall(r"= \S+ (gather|scatter)\(", hlo))


def test_the_dense_criterion_compiles_to_no_gather_or_scatter_and_points_do(rng):
  """Outside the Hungarian solver (a scipy callback on the CPU), which tests/test_losses_matching.py covers."""
  outputs, batch = random_batch(rng, c=4, n=4)
  counts = {}
  for sampling in ("dense", "points"):
    cfg = dense_config()
    cfg.loss.sampling = sampling
    counts[sampling] = _gathers_and_scatters(
        jax.grad(lambda o, b, c=cfg: criterion_lib.criterion(o, b, c, jax.random.key(0))[0]), outputs, batch)
  assert counts["dense"] == 0 and counts["points"] > 0, counts
