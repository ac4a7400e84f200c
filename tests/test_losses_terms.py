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
from dataseg_jax.ops import assignment

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


def np_bce(logit, prob, is_logit, y):
  if is_logit:
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


def np_groups(logp, task, ex, mode, background_joins=False):
  """Leaders, whether each proposal merges, and the mask weights w[j, i] of proposal i in slot j's prediction:
  for an active slot j, 1 for the members of j's group (soft, for a merging slot j: p_i(c_j) for every proposal
  i); for an inactive slot j, proposal j alone."""
  q, c1 = logp.shape
  cls = logp[:, :c1 - 1].argmax(-1)
  background = logp.argmax(-1) == c1 - 1
  stuff = {int(c) for c, v, t in zip(ex["seg_class"], ex["seg_valid"], ex["seg_is_thing"]) if v and not t}
  merges = [(task == Task.SEMANTIC or (task == Task.PANOPTIC and int(cls[i]) in stuff))
            and (background_joins or not background[i]) for i in range(q)]
  key = [("c", int(cls[i])) if merges[i] else ("q", i) for i in range(q)]
  leader = np.array([key.index(key[i]) for i in range(q)])
  weight = np.zeros((q, q))
  for j in range(q):
    for i in range(q):
      if leader[j] != j:
        weight[j, i] = float(i == j)
      elif mode == "soft" and merges[j]:
        weight[j, i] = np.exp(logp[i, cls[j]])
      else:
        weight[j, i] = float(leader[i] == j)
  return leader, np.array(merges), weight


def np_merged_grid(masks, weight_row, members, formula):
  """(map, is_logit) of a merged slot on the grid: noisy-OR logit log(expm1(sum_i w_i softplus(m_i))), the
  members' largest logit, or the clipped sum of w_i sigmoid(m_i) (a probability)."""
  if formula == "noisy_or":
    total = np.maximum((weight_row[:, None, None] * np.logaddexp(0, masks)).sum(0), 1e-30)
    return np.log(np.expm1(total)), True
  if formula == "max":
    return masks[members].max(0), True
  return np.clip((weight_row[:, None, None] * np_sigmoid(masks)).sum(0), 0, 1), False


LEFTOVER_PENALTY = 1e6  # an inactive slot's extra cost in the reference matching: larger than any real difference


def np_layer(logits, masks, ex, pts, cfg):
  """Unnormalised sums (ce_num, ce_den, mask, dice, proj) of one example at one layer, and the number of valid
  segments left without a loss."""
  match_pts, over, tail = (np.asarray(p, np.float64) for p in pts)
  logits = logits.astype(np.float64)
  masks = masks.astype(np.float64)
  q, c1 = logits.shape
  n = len(ex["seg_class"])
  lc = cfg.loss
  logp = np_log_softmax(logits)
  leader, merges, weight = np_groups(logp, int(ex["task"]), ex, lc.merge, lc.merge_background)
  active = leader == np.arange(q)
  members = {j: np.nonzero(leader == j)[0] if active[j] else np.array([j]) for j in range(q)}
  single = {j: not active[j] or (len(members[j]) == 1 and (lc.merge == "hard" or not merges[j])) for j in range(q)}
  mlogp = {j: np.log(np.exp(logp[members[j]]).mean(0)) for j in range(q)}
  seg_masks = [(ex["segment_map"] == k).astype(np.float64) for k in range(n)]

  def merged_at(j, coords):
    """(logit, prob, is_logit) of slot j at the points: a single proposal's sampled logit, else its merged map on
    the grid, sampled (a probability map's 'logit' is unused)."""
    if single[j]:
      logit = np_point_sample(masks[j], coords)
      return logit, np_sigmoid(logit), True
    grid, is_logit = np_merged_grid(masks, weight[j], members[j], lc.merge_mask)
    sampled = np_point_sample(grid, coords)
    return sampled, np_sigmoid(sampled) if is_logit else sampled, is_logit

  # matching: active slots first, then (match_leftover) single proposals at a penalty; padded targets left out
  valid = np.nonzero(ex["seg_valid"])[0]
  rows = [j for j in range(q) if active[j] or lc.match_leftover]
  cost = np.zeros((len(rows), len(valid)))
  for a, j in enumerate(rows):
    logit_j, prob_j, is_logit = merged_at(j, match_pts)
    for b, k in enumerate(valid):
      c = -cfg.matcher.class_cost * np.exp(mlogp[j][ex["seg_class"][k]])
      if ex["seg_has_mask"][k]:
        y = np_point_sample(seg_masks[k], match_pts)
        c += cfg.matcher.mask_cost * np_bce(logit_j, prob_j, is_logit, y) + cfg.matcher.dice_cost * np_dice(prob_j, y)
      else:
        c += cfg.matcher.projection_cost * np_proj_loss(masks[j], ex["seg_box"][k])
      cost[a, b] = c + (0.0 if active[j] else LEFTOVER_PENALTY)
  r, c = linear_sum_assignment(cost) if cost.size else ([], [])
  pairs = {rows[i]: valid[k] for i, k in zip(r, c)}

  out = dict(ce_num=0.0, ce_den=0.0, mask=0.0, dice=0.0, proj=0.0, without_loss=float(len(valid) - len(pairs)))
  for j in range(q):
    k = pairs.get(j)
    if k is None and not active[j]:
      continue
    target = c1 - 1 if k is None else ex["seg_class"][k]
    wt = lc.no_object_weight if k is None else 1.0
    out["ce_num"] += -wt * mlogp[j][target]
    out["ce_den"] += wt
  num_unc = int(lc.importance_sample_ratio * lc.num_points)
  for j, k in pairs.items():
    if ex["seg_has_mask"][k]:
      l_over, p_over, is_logit = merged_at(j, over[k])
      unc = -np.abs(l_over) if is_logit else -np.abs(p_over - 0.5)
      idx = np.argsort(-unc, kind="stable")[:num_unc]
      coords = np.concatenate([over[k][idx], tail[k]])
      logit, prob, is_logit = merged_at(j, coords)
      y = np_point_sample(seg_masks[k], coords)
      out["mask"] += np_bce(logit, prob, is_logit, y)
      out["dice"] += np_dice(prob, y)
    else:
      out["proj"] += np_proj_loss(masks[j], ex["seg_box"][k])
  return out


def np_criterion(outputs, batch, cfg, points, with_without_loss=False):
  """The weighted terms {name: [B]}; with `with_without_loss` also the segments left without a loss per layer."""
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
  if with_without_loss:
    return terms, np.array([sum(s["without_loss"] for s in sums[l]) for l in range(num_layers)])
  return terms


# ------------------------------------------------------------------ fixtures

def small_config(merge="hard", num_points=24, merge_mask="noisy_or", merge_background=False, match_leftover=True):
  c = config_lib.base_config()
  c.loss.num_points = num_points
  c.matcher.num_points = 20
  c.loss.merge = merge
  c.loss.merge_mask = merge_mask
  c.loss.merge_background = merge_background
  c.loss.match_leftover = match_leftover
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

# (merge, merge_mask, merge_background, match_leftover): the default, each formula, the soft ablation, and the
# simplest MERGE (background proposals join, clipped sum, left-over segments without a loss)
VARIANTS = [("hard", "noisy_or", False, True), ("hard", "max", False, True), ("hard", "clip", False, True),
            ("soft", "noisy_or", False, True), ("soft", "clip", False, True), ("hard", "clip", True, False)]


@pytest.mark.parametrize("variant,solver", [(VARIANTS[0], "device")] + [(v, "scipy") for v in VARIANTS])
def test_criterion_terms_equal_numpy_transcription_on_a_mixed_task_batch(variant, solver, rng, monkeypatch):
  """Every MERGE variant, and both matching paths: the CPU's scipy callback, and the accelerators' solver put in
  its place. Terms and the segments left without a loss equal the float64 transcription."""
  if solver == "device":
    monkeypatch.setattr(assignment, "scipy_match", assignment.device_match)
  cfg = small_config(*variant[:1], merge_mask=variant[1], merge_background=variant[2], match_leftover=variant[3])
  outputs, batch = random_batch(rng, c=4, n=4)
  outputs["pred_logits"][..., -1] += 1.0  # some proposals argmax background
  points = criterion_lib.draw_points(jax.random.key(1), 2, 4, 4, cfg)
  loss, terms, stats = jax.jit(lambda o, b, p: criterion_lib.criterion_with_points(o, b, cfg, p))(
      outputs, batch, points)
  ref, without_loss = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points), with_without_loss=True)
  for name in criterion_lib.TERMS:
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=name, **TOL)
  np.testing.assert_allclose(float(loss), sum(v.sum() for v in ref.values()), rtol=1e-5)
  assert all(np.asarray(terms[k]).sum() > 0 for k in criterion_lib.TERMS)
  np.testing.assert_array_equal(np.asarray(stats["segments_without_loss"]), without_loss)


@pytest.mark.parametrize("variant", VARIANTS)
def test_criterion_gradient_equals_finite_differences_of_the_numpy_transcription(variant):
  """The gradient through MERGE (merge weights, merged masks, mean class probabilities), the projection loss and
  every task's terms: its product with random directions equals central differences of the float64 numpy
  criterion (matches and sampled points do not move within +-eps)."""
  rng = np.random.default_rng(1)
  merge = variant[0]
  cfg = small_config(merge, num_points=32, merge_mask=variant[1], merge_background=variant[2],
                     match_leftover=variant[3])
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
  """Blocks of 2 of the 7 target rows: rows 2-3 padding in every example but the box-only one (a block the mask
  cost and terms skip, whose box targets keep their projection cost and loss), rows 5-6 padding in one example
  only (needed blocks, the last of one row): terms and gradients equal the numpy transcription and the one-block
  run, with points and (one-block run only) dense."""
  outputs, batch = random_batch(rng, c=7, n=7)
  assert batch["task"][3] == Task.BOX
  batch["seg_valid"][:, 2:4] = False
  batch["seg_valid"][3, 2:4] = True
  batch["seg_valid"][:, 5] = True
  batch["seg_valid"][1, 5:] = False
  cfg = small_config()
  points = criterion_lib.draw_points(jax.random.key(4), 2, 4, 7, cfg)
  ref = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points))
  assert ref["loss_proj"][3] > 0
  for sampling in ("points", "dense"):
    cfg.loss.sampling = sampling
    results = {}
    for block in (2, 16):
      cfg.loss.row_block = block
      if sampling == "points":
        loss = lambda o, b, p, cfg=cfg: criterion_lib.criterion_with_points(o, b, cfg, p)[:2]  # noqa: E731
      else:
        loss = lambda o, b, p, cfg=cfg: criterion_lib.criterion(o, b, cfg, jax.random.key(0))[:2]  # noqa: E731
      (_, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(outputs, batch, points)
      results[block] = terms, grads
      if sampling == "points":
        for name in criterion_lib.TERMS:
          np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=f"{name} block {block}", **TOL)
    for name in criterion_lib.TERMS:
      np.testing.assert_allclose(np.asarray(results[2][0][name]), np.asarray(results[16][0][name]), rtol=1e-5,
                                 atol=1e-6, err_msg=f"{sampling} {name}")
    for name in ("pred_logits", "pred_masks"):
      np.testing.assert_allclose(np.asarray(results[2][1][name]), np.asarray(results[16][1][name]), rtol=1e-5,
                                 atol=1e-7, err_msg=f"{sampling} {name}")
    assert np.abs(np.asarray(results[2][1]["pred_masks"])).sum() > 0


def test_semantic_batch_merges_proposals(rng):
  """With 3 classes and 8 proposals, semantic examples must merge; the reference agrees on the result."""
  cfg = small_config()
  outputs, batch = random_batch(rng, b=2, c=3, n=3, layers=1, tasks=(Task.SEMANTIC,))
  logp = np_log_softmax(outputs["pred_logits"][0, 0].astype(np.float64))
  leader, _, _ = np_groups(logp, Task.SEMANTIC, {k: v[0] for k, v in batch.items()}, "hard")
  assert len(set(leader.tolist())) < 8
  points = criterion_lib.draw_points(jax.random.key(2), 1, 2, 3, cfg)
  _, terms, _ = jax.jit(lambda o, b, p: criterion_lib.criterion_with_points(o, b, cfg, p))(outputs, batch, points)
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


def test_merged_log_probs_gradient_is_each_members_share_even_far_below_float32s_exp_range():
  """d log mean_{i in j} p_i(c) / d log p_i(c) = p_i(c) / sum_{i' in j} p_i'(c), by hand in float64, for log
  probabilities near -150 (exp underflows in float32: the group's shift must keep them) and near 0."""
  from dataseg_jax.losses import merge
  cls = np.array([0, 1, 0, 1, 2, 0])
  log_probs = np.full((6, 4), -3.0)
  log_probs[np.arange(6), cls] = -0.01
  log_probs[[0, 2, 5], 3] = [-150.0, -151.0, -152.5]  # class 3 in group 0
  log_probs = jnp.asarray(log_probs, jnp.float32)
  groups = merge.merge_groups(jax.nn.log_softmax(log_probs), jnp.int32(Task.SEMANTIC), jnp.array([0]),
                              jnp.array([False]), jnp.array([True]), "hard")
  weights = np.random.default_rng(0).normal(size=(6, 4))
  got = jax.grad(lambda lp: jnp.sum(weights * merge.merged_log_probs(lp, groups)))(log_probs)
  lp = np.asarray(log_probs, np.float64)
  want = np.where(np.asarray(groups.active)[:, None], 0.0, weights)  # an inactive slot holds its own lp
  for j in (0, 1, 4):  # the leaders
    members = np.asarray(groups.leader) == j
    share = np.exp(lp[members] - lp[members].max(0))
    want[members] += weights[j] * share / share.sum(0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  merged = np.asarray(merge.merged_log_probs(log_probs, groups))
  assert merged[0, 3] == pytest.approx(np.log(np.mean(np.exp(lp[[0, 2, 5], 3] + 150.0))) - 150.0, abs=1e-4)


# ------------------------------------------------------------------ MERGE, by hand

def _group_of(q, task=Task.SEMANTIC, **kw):
  """Groups of q proposals that all argmax class 0 (of 3), for one ground-truth segment of class 0."""
  from dataseg_jax.losses import merge
  logits = np.full((q, 4), -4.0, np.float32)
  logits[:, 0] = 3.0
  return merge.merge_groups(jax.nn.log_softmax(jnp.asarray(logits)), jnp.int32(task), jnp.array([0]),
                            jnp.array([False]), jnp.array([True]), "hard", **kw)


def test_noisy_or_merged_mask_is_one_minus_the_product_and_a_single_proposal_keeps_its_logits():
  from dataseg_jax.losses import merge
  groups = _group_of(3)
  flat = jnp.array([[2.0, -30.0], [-1.0, -30.0], [0.5, -30.0]])
  maps, is_logit = merge.selected_maps(flat, groups, merge.one_hot_rows(jnp.arange(3), 3), "noisy_or")
  maps = np.asarray(maps)
  s = np_sigmoid(np.array([2.0, -1.0, 0.5]))
  np.testing.assert_allclose(np_sigmoid(maps[0, 0]), 1 - np.prod(1 - s), rtol=1e-6)
  np.testing.assert_allclose(maps[0, 1], np.log(np.expm1(3 * np.logaddexp(0, -30.0))), rtol=1e-5)  # no underflow
  np.testing.assert_array_equal(maps[1:], np.asarray(flat[1:]))  # inactive slots: their own proposal's logits
  assert np.asarray(is_logit).all()
  single = _group_of(1)
  np.testing.assert_array_equal(np.asarray(merge.selected_maps(flat[:1], single, jnp.ones((1, 1)), "noisy_or")[0]),
                                np.asarray(flat[:1]))


@pytest.mark.parametrize("formula,expected", [
    ("noisy_or", "sigmoid"),  # d/dm_i -log(1 - M) = sigmoid(m_i): every member, however much they overlap
    ("max", "largest"),       # only the largest member, with its own BCE gradient sigmoid(m)
    ("clip", "zero"),         # the sum is above 1: no gradient at all
])
def test_the_merge_gradient_where_members_overlap_on_a_negative_pixel(formula, expected):
  """Three members at logits 2, 3, 4 on a pixel that belongs to no segment (y = 0): BCE of the merged mask."""
  from dataseg_jax.losses import merge
  groups = _group_of(3)
  m = jnp.array([2.0, 3.0, 4.0])

  def bce(m):
    flat = m[:, None]
    maps, is_logit = merge.selected_maps(flat, groups, merge.one_hot_rows(jnp.arange(1), 3), formula)
    logit, prob = maps, jnp.where(is_logit[:, None], jax.nn.sigmoid(maps), maps)
    return mask_losses.sigmoid_bce(logit, prob, is_logit, jnp.zeros((1, 1)))[0]

  g = np.asarray(jax.grad(bce)(m))
  want = {"sigmoid": np_sigmoid(np.asarray(m)), "largest": np.array([0.0, 0.0, np_sigmoid(4.0)]),
          "zero": np.zeros(3)}[expected]
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-12)


def test_a_proposal_whose_argmax_is_background_joins_no_group():
  """Proposals 0 and 1 both prefer class 0 among the classes, but proposal 1's argmax is background."""
  from dataseg_jax.losses import merge
  logits = np.array([[3.0, 0, 0, -1], [1.0, 0, 0, 2], [0, 3.0, 0, -1]], np.float32)
  log_probs = jax.nn.log_softmax(jnp.asarray(logits))
  args = (log_probs, jnp.int32(Task.SEMANTIC), jnp.array([0, 1]), jnp.array([False, False]), jnp.array([True, True]))
  ours = merge.merge_groups(*args, "hard")
  np.testing.assert_array_equal(np.asarray(ours.leader), [0, 1, 2])
  np.testing.assert_array_equal(np.asarray(ours.merges), [True, False, True])
  first_guess = merge.merge_groups(*args, "hard", background_joins=True)
  np.testing.assert_array_equal(np.asarray(first_guess.leader), [0, 0, 2])
  p = np.exp(np.asarray(log_probs))
  np.testing.assert_allclose(np.exp(np.asarray(merge.merged_log_probs(log_probs, first_guess)))[0],
                             p[:2].mean(0), rtol=1e-5)  # its background probability dilutes the group's mean


@pytest.mark.parametrize("match_leftover,without_loss", [(True, 0), (False, 2)])
def test_every_segment_gets_a_loss_when_merged_predictions_are_fewer_than_segments(match_leftover, without_loss):
  """Six proposals that all argmax class 0 form one semantic group; the ground truth has classes 0, 1 and 2. The
  left-over two segments are matched to single proposals (ours) or get no loss (match_leftover=False)."""
  cfg = small_config(match_leftover=match_leftover)
  rng = np.random.default_rng(3)
  outputs, batch = random_batch(rng, b=1, q=6, c=3, n=3, layers=1, tasks=(Task.SEMANTIC,))
  outputs["pred_logits"][..., 0] += 20.0
  batch["seg_class"][0] = [0, 1, 2]
  batch["seg_valid"][:] = True
  points = criterion_lib.draw_points(jax.random.key(0), 1, 1, 3, cfg)
  _, terms, stats = criterion_lib.criterion_with_points(outputs, batch, cfg, points)
  assert float(stats["segments_without_loss"][0]) == without_loss
  assert float(stats["merge_group_size_mean"][0]) == 6.0 and float(stats["merge_group_size_max"][0]) == 6.0
  ref = np_criterion(outputs, batch, cfg, jax.tree.map(np.asarray, points))
  for name in ("loss_ce", "loss_mask", "loss_dice"):
    np.testing.assert_allclose(np.asarray(terms[name]), ref[name], err_msg=name, **TOL)


@pytest.mark.parametrize("formula,zero", [("clip", 1), ("noisy_or", 1), ("max", 0)])
def test_vanishing_gradient_pixels_by_hand(formula, zero):
  """A two-member group on three pixels: logits (3, 3) overlap (the clipped sum saturates), (-2, -3) do not,
  (30, 30) saturate every formula but max (noisy-OR: 2 sigmoid(-30) = 2e-13 < VANISHING)."""
  from dataseg_jax.losses import merge
  groups = _group_of(2)
  flat = jnp.array([[3.0, -2.0, 30.0], [3.0, -3.0, 30.0]])
  count, pixels = merge.vanishing_gradient_pixels(flat, groups, formula)
  assert float(pixels) == 3.0
  assert float(count) == zero + (formula == "clip")  # clip saturates on (3, 3) as well


@pytest.mark.parametrize("stride", [1, 3])
def test_zero_gradient_fraction_counts_every_stride_th_row_and_column(stride):
  """The criterion's merge_zero_grad_frac is the vanishing-gradient count over the merged groups' masks at every
  `loss.merge_stats_stride`-th row and column (1: every pixel), divided by the pixels counted there."""
  from dataseg_jax.losses import merge
  cfg = small_config()
  cfg.loss.merge_stats_stride = stride
  rng = np.random.default_rng(5)
  outputs, batch = random_batch(rng, b=1, q=6, c=3, n=3, layers=1, tasks=(Task.SEMANTIC,))
  outputs["pred_logits"][..., 0] += 20.0  # one group of six
  outputs["pred_masks"] *= 8.0  # confident masks: some pixels saturate
  batch["seg_class"][0] = [0, 1, 2]
  batch["seg_valid"][:] = True
  points = criterion_lib.draw_points(jax.random.key(0), 1, 1, 3, cfg)
  _, _, stats = criterion_lib.criterion_with_points(outputs, batch, cfg, points)
  masks = jnp.asarray(outputs["pred_masks"][0, 0])  # layer 0, example 0: [Q, h, w]
  log_probs = jax.nn.log_softmax(jnp.asarray(outputs["pred_logits"][0, 0]))
  groups = merge.merge_groups(log_probs, jnp.int32(Task.SEMANTIC), jnp.asarray(batch["seg_class"][0]),
                              jnp.asarray(batch["seg_is_thing"][0]), jnp.asarray(batch["seg_valid"][0]), "hard")
  sub = masks[:, ::stride, ::stride]
  count, pixels = merge.vanishing_gradient_pixels(sub.reshape(6, -1), groups, "noisy_or")
  assert float(pixels) == sub.shape[1] * sub.shape[2]  # one merged group: its slot's map
  assert 0 < float(count) < float(pixels)
  assert float(stats["merge_zero_grad_frac"][0]) == pytest.approx(float(count) / float(pixels), rel=1e-6)
