"""Every loss term against a numpy transcription of its formula, on identical inputs and fixed points."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dataseg_jax import config as config_lib
from dataseg_jax.contract import Task
from dataseg_jax.losses import box_projection
from dataseg_jax.losses import criterion as criterion_lib
from dataseg_jax.losses import mask_losses
from dataseg_jax.losses import matching

TOL = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ numpy transcriptions

def np_point_sample(grid, coords):
  """Bilinear, align_corners=False, zero padding, as a tent-weighted sum over every pixel: [P, 2] -> [P]."""
  h, w = grid.shape
  px = coords[:, 0] * w - 0.5
  py = coords[:, 1] * h - 0.5
  wx = np.maximum(0.0, 1.0 - np.abs(px[:, None] - np.arange(w)[None]))  # [P, w]
  wy = np.maximum(0.0, 1.0 - np.abs(py[:, None] - np.arange(h)[None]))  # [P, h]
  return np.einsum("ph,pw,hw->p", wy, wx, grid.astype(np.float64))


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_bce(logit, prob, raw, y):
  if raw:
    log_p, log_q = -np.logaddexp(0, -logit), -np.logaddexp(0, logit)
  else:
    log_p, log_q = np.log(np.clip(prob, 1e-30, 1)), np.log(np.clip(1 - prob, 1e-6, 1))
  return -np.mean(y * log_p + (1 - y) * log_q)


def np_dice(p, y):
  return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)


def np_box_proj(box, h, w):
  y0, x0, y1, x1 = box
  mask = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      if y0 * h <= i + 0.5 < y1 * h and x0 * w <= j + 0.5 < x1 * w:
        mask[i, j] = 1
  return mask.max(1), mask.max(0)


def np_proj_loss(m_logits, box):
  h, w = m_logits.shape
  prob = np_sigmoid(m_logits)
  by, bx = np_box_proj(box, h, w)

  def d(a, g):
    return 1 - 2 * (a * g).sum() / ((a * a).sum() + (g * g).sum() + 1e-5)

  return d(prob.max(1), by) + d(prob.max(0), bx)


def np_groups(logp, task, ex, mode):
  """Leaders, whether each proposal merges, and the mask weights w[j, i] of proposal i in slot j's merged mask:
  1 for the members of j's group; soft, for a merging slot j: p_i(c_j) for every proposal i."""
  q, c1 = logp.shape
  cls = logp[:, :c1 - 1].argmax(-1)
  stuff = {int(c) for c, v, t in zip(ex["seg_class"], ex["seg_valid"], ex["seg_is_thing"]) if v and not t}
  merges = [task == Task.SEMANTIC or (task == Task.PANOPTIC and int(cls[i]) in stuff) for i in range(q)]
  key = [("c", int(cls[i])) if merges[i] else ("q", i) for i in range(q)]
  leader = np.array([key.index(key[i]) for i in range(q)])
  weight = np.array([[np.exp(logp[i, cls[j]]) if (mode == "soft" and merges[j]) else float(leader[i] == j)
                      for i in range(q)] for j in range(q)])
  return leader, np.array(merges), weight


def np_layer(logits, masks, ex, pts, cfg):
  """Unnormalised sums (ce_num, ce_den, mask, dice, proj) of one example at one layer."""
  match_pts, over, tail = (np.asarray(p, np.float64) for p in pts)
  logits = logits.astype(np.float64)
  masks = masks.astype(np.float64)
  q, c1 = logits.shape
  n = len(ex["seg_class"])
  h, w = masks.shape[1:]
  mode = cfg.loss.merge
  logp = np_log_softmax(logits)
  leader, merges, weight = np_groups(logp, int(ex["task"]), ex, mode)
  active = leader == np.arange(q)
  members = {j: np.nonzero(leader == j)[0] for j in np.nonzero(active)[0]}
  raw = {j: len(m) == 1 and (mode == "hard" or not merges[j]) for j, m in members.items()}
  mlogp = {j: np.log(np.exp(logp[m]).mean(0)) for j, m in members.items()}
  seg_masks = [(ex["segment_map"] == k).astype(np.float64) for k in range(n)]

  def merged_at(j, coords):
    """(logit, prob) of slot j at the points: a raw slot's sampled logit, else its merged mask on the grid
    clip(sum_i w[j, i] sigmoid(m_i)), sampled (its 'logit' is then unused)."""
    if raw[j]:
      logit = np_point_sample(masks[j], coords)
      return logit, np_sigmoid(logit)
    grid = np.clip((weight[j][:, None, None] * np_sigmoid(masks)).sum(0), 0, 1)
    prob = np_point_sample(grid, coords)
    return prob, prob

  # matching on the (active x valid) submatrix
  valid = np.nonzero(ex["seg_valid"])[0]
  act = sorted(members)
  cost = np.zeros((len(act), len(valid)))
  for a, j in enumerate(act):
    logit_j, prob_j = merged_at(j, match_pts)
    for b, k in enumerate(valid):
      c = -cfg.matcher.class_cost * np.exp(mlogp[j][ex["seg_class"][k]])
      if ex["seg_has_mask"][k]:
        y = np_point_sample(seg_masks[k], match_pts)
        c += cfg.matcher.mask_cost * np_bce(logit_j, prob_j, raw[j], y) + cfg.matcher.dice_cost * np_dice(prob_j, y)
      else:
        c += cfg.matcher.projection_cost * np_proj_loss(masks[j], ex["seg_box"][k])
      cost[a, b] = c
  rows, cols = linear_sum_assignment(cost) if cost.size else ([], [])
  pairs = {act[r]: valid[c] for r, c in zip(rows, cols)}

  out = dict(ce_num=0.0, ce_den=0.0, mask=0.0, dice=0.0, proj=0.0)
  for j in act:
    k = pairs.get(j)
    target = c1 - 1 if k is None else ex["seg_class"][k]
    wt = cfg.loss.no_object_weight if k is None else 1.0
    out["ce_num"] += -wt * mlogp[j][target]
    out["ce_den"] += wt
  num_unc = int(cfg.loss.importance_sample_ratio * cfg.loss.num_points)
  for j, k in pairs.items():
    if ex["seg_has_mask"][k]:
      l_over, p_over = merged_at(j, over[k])
      unc = -np.abs(l_over) if raw[j] else -np.abs(p_over - 0.5)
      idx = np.argsort(-unc, kind="stable")[:num_unc]
      coords = np.concatenate([over[k][idx], tail[k]])
      logit, prob = merged_at(j, coords)
      y = np_point_sample(seg_masks[k], coords)
      out["mask"] += np_bce(logit, prob, raw[j], y)
      out["dice"] += np_dice(prob, y)
    else:
      out["proj"] += np_proj_loss(masks[j], ex["seg_box"][k])
  return out


def np_criterion(outputs, batch, cfg, points):
  logits = np.asarray(outputs["pred_logits"], np.float64)
  masks = np.asarray(outputs["pred_masks"], np.float64)
  num_layers, b = logits.shape[:2]
  keys = ("task", "segment_map", "seg_class", "seg_is_thing", "seg_box", "seg_valid", "seg_has_mask")
  sums = [[np_layer(logits[l, i], masks[l, i], {k: np.asarray(batch[k][i]) for k in keys},
                    (points.match[l, i], points.over[l, i], points.tail[l, i]), cfg) for i in range(b)]
          for l in range(num_layers)]
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


# ------------------------------------------------------------------ fixtures

def small_config(merge="hard", num_points=24):
  c = config_lib.base_config()
  c.loss.num_points = num_points
  c.matcher.num_points = 20
  c.loss.merge = merge
  return c


def random_batch(rng, b=4, q=8, c=5, n=5, hw=(12, 16), stride_hw=(24, 32), layers=2,
                 tasks=(Task.SEMANTIC, Task.PANOPTIC, Task.INSTANCE, Task.BOX)):
  """Random outputs and a batch in the contract, one task per example (cycled)."""
  h, w = hw
  hs, ws = stride_hw
  outputs = {"pred_logits": rng.normal(size=(layers, b, q, c + 1)).astype(np.float32) * 2,
             "pred_masks": rng.normal(size=(layers, b, q, h, w)).astype(np.float32) * 3}
  task = np.array([tasks[i % len(tasks)] for i in range(b)], np.int32)
  seg_map = rng.integers(-1, n, size=(b, hs, ws)).astype(np.int32)
  # blocky maps so that masks have interiors and edges
  seg_map = np.repeat(np.repeat(seg_map[:, ::4, ::4], 4, 1), 4, 2)
  y = np.sort(rng.random((b, n, 2)), -1)
  x = np.sort(rng.random((b, n, 2)), -1)
  boxes = np.stack([y[..., 0], x[..., 0], y[..., 1], x[..., 1]], -1).astype(np.float32)
  seg_valid = rng.random((b, n)) < 0.85
  seg_valid[:, 0] = True
  is_box = task == Task.BOX
  seg_map[is_box] = -1
  seg_class = rng.integers(0, c, (b, n)).astype(np.int32)
  sem = task == Task.SEMANTIC
  if sem.any() and n <= c:  # semantic ground truth: one segment per class
    seg_class[sem] = np.stack([rng.permutation(c)[:n] for _ in range(sem.sum())])
  batch = {"task": task, "segment_map": seg_map, "seg_class": seg_class,
           "seg_is_thing": rng.random((b, n)) < 0.5, "seg_box": boxes, "seg_valid": seg_valid,
           "seg_has_mask": np.broadcast_to(~is_box[:, None], (b, n)).copy()}
  return outputs, batch


# ------------------------------------------------------------------ unit terms

def test_point_sample_equals_tent_weighted_numpy(rng):
  grid = rng.normal(size=(7, 9)).astype(np.float32)
  coords = rng.uniform(-0.1, 1.1, size=(50, 2)).astype(np.float32)
  got = np.asarray(mask_losses.point_sample(jnp.asarray(grid), jnp.asarray(coords)))
  np.testing.assert_allclose(got, np_point_sample(grid, coords), **TOL)
  grids = rng.normal(size=(3, 7, 9)).astype(np.float32)
  coords = rng.uniform(-0.3, 1.3, size=(80, 2)).astype(np.float32)  # some points fully outside
  shared = np.asarray(mask_losses.point_sample_shared(jnp.asarray(grids), jnp.asarray(coords)))
  for r in range(3):
    np.testing.assert_allclose(shared[r], np_point_sample(grids[r], coords), **TOL)


def test_point_sample_equals_torch_grid_sample(rng):
  torch = pytest.importorskip("torch")
  grid = rng.normal(size=(7, 9)).astype(np.float32)
  coords = rng.uniform(0, 1, size=(50, 2)).astype(np.float32)
  ref = torch.nn.functional.grid_sample(torch.from_numpy(grid)[None, None],
                                        2 * torch.from_numpy(coords)[None, :, None] - 1, align_corners=False)
  got = np.asarray(mask_losses.point_sample(jnp.asarray(grid), jnp.asarray(coords)))
  np.testing.assert_allclose(got, ref.numpy().reshape(-1), **TOL)


def test_segment_masks_sampled_without_dense_masks_equal_dense_bilinear(rng):
  seg = rng.integers(-1, 4, size=(10, 14)).astype(np.int32)
  coords = rng.uniform(0, 1, size=(4, 30, 2)).astype(np.float32)
  got = np.asarray(mask_losses.sample_segment_masks(jnp.asarray(seg), jnp.arange(4), jnp.asarray(coords)))
  shared = np.asarray(mask_losses.sample_segment_masks_shared(jnp.asarray(seg), 4, jnp.asarray(coords[0])))
  for k in range(4):
    dense = (seg == k).astype(np.float64)
    np.testing.assert_allclose(got[k], np_point_sample(dense, coords[k]), **TOL)
    np.testing.assert_allclose(shared[k], np_point_sample(dense, coords[0]), **TOL)


def test_bce_dice_and_pairwise_equal_numpy(rng):
  logit = rng.normal(size=(3, 40)).astype(np.float32) * 4
  prob = np.clip(np_sigmoid(logit) * 1.5, 0, 1).astype(np.float32)
  raw = np.array([True, False, True])
  y = rng.random((2, 40)).astype(np.float32)
  bce = np.asarray(mask_losses.pairwise_sigmoid_bce(logit, prob, jnp.asarray(raw), y))
  dc = np.asarray(mask_losses.pairwise_dice(prob, y))
  for i in range(3):
    p_i = np_sigmoid(logit[i]) if raw[i] else prob[i]
    for k in range(2):
      np.testing.assert_allclose(bce[i, k], np_bce(logit[i], prob[i], raw[i], y[k]), **TOL)
      np.testing.assert_allclose(dc[i, k], np_dice(prob[i], y[k]), **TOL)
    np.testing.assert_allclose(np.asarray(mask_losses.dice(jnp.asarray(p_i[None]), y[:1]))[0],
                               np_dice(p_i, y[0]), **TOL)
  diag = np.asarray(mask_losses.sigmoid_bce(logit[:2], prob[:2], jnp.asarray(raw[:2]), y))
  np.testing.assert_allclose(diag, [bce[0, 0], bce[1, 1]], **TOL)


@pytest.mark.parametrize("member_logit", [-5.0, -15.0, -40.0])
def test_a_merged_mask_that_misses_a_positive_pixel_keeps_the_gradient_of_log_sum_sigmoid(member_logit):
  """-log(sigmoid(m1) + sigmoid(m2)) at a positive point: d/dm1 = -sigmoid'(m1) / (sigmoid(m1) + sigmoid(m2)), about
  -1/2 for two equal very negative logits (a raw mask's BCE gives about -1 there too)."""
  def loss(m):
    prob = jnp.sum(jax.nn.sigmoid(m))[None, None]
    return mask_losses.sigmoid_bce(jnp.zeros((1, 1)), prob, jnp.array([False]), jnp.ones((1, 1)))[0]

  m = jnp.full((2,), member_logit)
  s = np_sigmoid(member_logit)
  np.testing.assert_allclose(jax.grad(loss)(m), -s * (1 - s) / (2 * s), rtol=1e-4)


def test_projection_loss_equals_numpy_rasterisation(rng):
  m = rng.normal(size=(3, 9, 11)).astype(np.float32) * 3
  boxes = np.array([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.33, 0.5, 0.34, 0.5]], np.float32)
  py, px = box_projection.mask_projections(jnp.asarray(m))
  by, bx = box_projection.box_projections(jnp.asarray(boxes), 9, 11)
  got = np.asarray(box_projection.projection_loss(py, px, by, bx))
  pair = np.asarray(box_projection.pairwise_projection_cost(py, px, by, bx))
  for i in range(3):
    np.testing.assert_allclose(got[i], np_proj_loss(m[i], boxes[i]), **TOL)
    for k in range(3):
      np.testing.assert_allclose(pair[i, k], np_proj_loss(m[i], boxes[k]), **TOL)


def test_box_rasterisation_uses_pixel_centres():
  by, bx = box_projection.box_projections(jnp.array([[0.25, 0.0, 0.5, 0.3]]), 4, 10)
  np.testing.assert_array_equal(np.asarray(by)[0], [0, 1, 0, 0])  # centres 0.5..3.5 in [1, 2)
  np.testing.assert_array_equal(np.asarray(bx)[0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # [0, 3)


# ------------------------------------------------------------------ the whole criterion

@pytest.mark.parametrize("solver", ["scipy", "device"])
@pytest.mark.parametrize("merge", ["hard", "soft"])
def test_criterion_terms_equal_numpy_transcription_on_a_mixed_task_batch(merge, solver, rng, monkeypatch):
  """Both matching paths: the CPU's scipy callback, and the accelerators' solver put in its place."""
  if solver == "device":
    monkeypatch.setattr(matching, "_scipy_match", matching._device_match)
  cfg = small_config(merge)
  outputs, batch = random_batch(rng, c=4, n=4)
  points = criterion_lib.draw_points(jax.random.key(1), 2, 4, 4, cfg)
  loss, terms = jax.jit(lambda o, b, p: criterion_lib.criterion_with_points(o, b, cfg, p))(outputs, batch, points)
  ref = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points))
  for name in criterion_lib.TERMS:
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=name, **TOL)
  np.testing.assert_allclose(float(loss), sum(v.sum() for v in ref.values()), rtol=1e-5)
  assert all(np.asarray(terms[k]).sum() > 0 for k in criterion_lib.TERMS)


@pytest.mark.parametrize("merge", ["hard", "soft"])
def test_criterion_gradient_equals_finite_differences_of_the_numpy_transcription(merge):
  """The gradient through MERGE (merge weights, clipped sums, mean class probabilities), the projection loss and
  every task's terms: its product with random directions equals central differences of the float64 numpy
  criterion (matches and sampled points do not move within +-eps)."""
  rng = np.random.default_rng(1)
  cfg = small_config(merge, num_points=32)
  outputs, batch = random_batch(rng, b=4, q=8, c=4, n=4, layers=2)
  points = jax.tree.map(np.asarray, criterion_lib.draw_points(jax.random.key(5), 2, 4, 4, cfg))
  grads = jax.jit(jax.grad(lambda o: criterion_lib.criterion_with_points(o, batch, cfg, points)[0]))(outputs)
  wide = jax.tree.map(lambda x: np.asarray(x, np.float64), outputs)
  total = lambda o: sum(v.sum() for v in np_criterion(o, batch, cfg, points).values())  # noqa: E731
  eps = 1e-6
  for _ in range(2):
    d = jax.tree.map(lambda x: rng.normal(size=x.shape), wide)
    fd = (total(jax.tree.map(lambda x, y: x + eps * y, wide, d))
          - total(jax.tree.map(lambda x, y: x - eps * y, wide, d))) / (2 * eps)
    assert sum(float((np.asarray(grads[k], np.float64) * d[k]).sum()) for k in d) == pytest.approx(fd, rel=1e-3)


def test_row_blocks_skip_only_rows_that_no_example_needs(rng):
  """Blocks of 2 of the 7 target rows: rows 2-3 padding in every example (a skipped block), rows 5-6 padding in
  one example only (needed blocks, the last of one row): terms and gradients equal the numpy transcription and
  the one-block run."""
  outputs, batch = random_batch(rng, c=7, n=7)
  batch["seg_valid"][:, 2:4] = False
  batch["seg_valid"][:, 5] = True
  batch["seg_valid"][1, 5:] = False
  cfg = small_config()
  points = criterion_lib.draw_points(jax.random.key(4), 2, 4, 7, cfg)
  ref = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points))
  results = {}
  for block in (2, 16):
    cfg.loss.row_block = block
    fn = jax.jit(jax.value_and_grad(
        lambda o, b, p, cfg=cfg: criterion_lib.criterion_with_points(o, b, cfg, p), has_aux=True))
    (_, terms), grads = fn(outputs, batch, points)
    for name in criterion_lib.TERMS:
      np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=f"{name} block {block}", **TOL)
    results[block] = grads
  for name in ("pred_logits", "pred_masks"):
    np.testing.assert_allclose(np.asarray(results[2][name]), np.asarray(results[16][name]), rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(results[2]["pred_masks"])).sum() > 0


def test_semantic_batch_merges_proposals(rng):
  """With 3 classes and 8 proposals, semantic examples must merge; the reference agrees on the result."""
  cfg = small_config()
  outputs, batch = random_batch(rng, b=2, c=3, n=3, layers=1, tasks=(Task.SEMANTIC,))
  logp = np_log_softmax(outputs["pred_logits"][0, 0].astype(np.float64))
  leader, _, _ = np_groups(logp, Task.SEMANTIC, {k: v[0] for k, v in batch.items()}, "hard")
  assert len(set(leader.tolist())) < 8
  points = criterion_lib.draw_points(jax.random.key(2), 1, 2, 3, cfg)
  _, terms = jax.jit(lambda o, b, p: criterion_lib.criterion_with_points(o, b, cfg, p))(outputs, batch, points)
  ref = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points))
  for name in ("loss_ce", "loss_mask", "loss_dice"):
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=name, **TOL)


def test_importance_sampling_keeps_most_uncertain_points(rng):
  over = rng.random((2, 12, 2)).astype(np.float32)
  tail = rng.random((2, 3, 2)).astype(np.float32)
  unc = rng.normal(size=(2, 12)).astype(np.float32)
  got = np.asarray(mask_losses.importance_points(over, tail, mask_losses.top_k_set(jnp.asarray(unc), 5)))
  for r in range(2):
    idx = np.sort(np.argsort(-unc[r])[:5])  # the set of the 5 most uncertain, in index order
    np.testing.assert_array_equal(got[r], np.concatenate([over[r][idx], tail[r]]))


@pytest.mark.parametrize("n,k", [(37, 9), (200, 50), (64, 64), (5, 1)])
def test_top_k_set_is_the_set_lax_top_k_picks(rng, n, k):
  x = rng.normal(size=(6, n)).astype(np.float32)
  x[0, : n // 2] = x[0, n // 2: 2 * (n // 2)]  # ties
  x[1] = np.round(x[1])                         # many ties
  x[2, :3] = [0.0, -0.0, np.float32(1e-38)]     # signed zero and a denormal
  x[3] *= 1e30
  want = np.sort(np.asarray(jax.lax.top_k(x, k)[1]), axis=1)
  np.testing.assert_array_equal(np.asarray(mask_losses.top_k_set(x, k)), want)


@pytest.mark.parametrize("task,expected_leaders", [
    (Task.SEMANTIC, [0, 1, 0, 1, 4]),   # classes 0,1,0,1,2: every class merges
    (Task.PANOPTIC, [0, 1, 2, 1, 4]),   # class 1 is stuff in the ground truth, class 0 a thing
    (Task.INSTANCE, [0, 1, 2, 3, 4]),
    (Task.BOX, [0, 1, 2, 3, 4]),
])
def test_merge_groups_per_task(task, expected_leaders):
  from dataseg_jax.losses import merge
  cls = np.array([0, 1, 0, 1, 2])
  logits = np.full((5, 4), -5.0, np.float32)
  logits[np.arange(5), cls] = 3.0
  log_probs = jax.nn.log_softmax(jnp.asarray(logits))
  groups = merge.merge_groups(log_probs, jnp.int32(task), jnp.array([0, 1]), jnp.array([True, False]),
                              jnp.array([True, True]), "hard")
  np.testing.assert_array_equal(np.asarray(groups.leader), expected_leaders)
  merged = np.exp(np.asarray(merge.merged_log_probs(log_probs, groups)))
  p = np.exp(np.asarray(log_probs))
  for j in set(expected_leaders):
    np.testing.assert_allclose(merged[j], p[np.array(expected_leaders) == j].mean(0), **TOL)
