"""The DaTaSeg criterion: MERGE, Hungarian matching and every loss term, for all tasks in one function.

`criterion(outputs, batch, config, rng) -> (loss, terms, stats)` (docs/contracts.md "Losses"). Per decoder layer
(deep supervision [default: Mask2Former]) and per example:

1. MERGE the Q proposals for the example's task (merge.py): semantic merges every class, panoptic merges
   stuff, instance and box-only keep proposals [paper]; merged predictions sit in the "active" slots, and a
   merged mask is the noisy-OR (or config.loss.merge_mask's formula) of its members on the mask grid
   (`slot_maps`).
2. Match merged predictions to the ground-truth segments with the Hungarian algorithm on
   cost = class_cost * (-p(c)) + [mask target] mask_cost * BCE + dice_cost * dice, on matcher.num_points
   uniform points shared by all pairs [default: Mask2Former matcher], or on the dense grid
                                 + [box target]  projection_cost * L_proj [paper: projection in the cost].
   Segments left over when there are fewer merged predictions than segments are matched to single merged-away
   proposals (config.loss.match_leftover [ours]; matching.assignment_cost), so every segment gets a loss.
3. Losses on the matched pairs:
   loss_ce   class_weight * sum_j w_j CE_j / sum w over the batch's predictions, with target the matched
             class or background (index C), w = 1 or no_object_weight [default: Mask2Former]. Every merged
             prediction (active slot) takes part; a prediction matched to nothing learns background.
             Merged-away proposals take part through their group's mean probability, and on their own when a
             left-over segment is matched to them.
   loss_mask mask_weight * BCE and loss_dice dice_weight * dice, for targets with a mask: on loss.num_points
             points per pair chosen by importance sampling [default: Mask2Former], or on the dense grid.
   loss_proj projection_weight * L_proj (box_projection.py) on the matched proposal's mask, for targets
             with only a box [paper: BoxInst projection loss for box-only data; weight default].
   Mask and dice sums are divided by num_masks = max(1, valid segments with a mask in the batch) [default:
   Mask2Former num_masks], projection sums by num_boxes = max(1, valid box-only segments) [ours: each term by
   the targets it covers, so that in a batch mixing tasks (mixture_mode 'per_example') one task's targets do
   not shrink another's terms; the same as one count when a batch holds one task].

Besides the loss, the criterion reports per decoder layer how MERGE trains (`MERGE_STATS`): the fraction of merged
mask pixels where the merge passes no gradient (merge.vanishing_gradient_pixels), the mean and largest size of
the merging groups, and the valid segments left without a loss.

Mask terms and mask costs come from one of two sources (config.loss.sampling):
- 'points' [default: Mask2Former]: bilinear samples at random points; the point-sampled terms run over blocks of
  loss.row_block target rows, and a block in which no example of the batch has a mask target is skipped
  (`lax.cond`), so their cost follows the segments present, as Mask2Former's does, rather than the padded
  data.max_segments. The mask cost of the matching is blocked the same way in both modes (`layer_cost`).
- 'dense' [ours, as kMaX-DeepLab trains on TPU]: every cell of the mask grid average-pooled by
  loss.dense_stride, against the fraction of the cell each segment covers (mask_losses.dense_targets): matmuls
  ([Q, P] x [P, N]) and elementwise terms, no random points and no gathers or scatters anywhere in the criterion
  (rows are selected by one-hot matmuls; merge.py's max formula alone takes a segment max). Uniform point
  sampling averages to the same BCE and dice (tests/test_losses_dense.py).

The task is data: every example runs the same code and `task` only changes which proposals merge, so one
compiled function serves a batch that mixes all four tasks. All shapes are static.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from dataseg_jax.losses import box_projection
from dataseg_jax.losses import mask_losses
from dataseg_jax.losses import matching
from dataseg_jax.losses import merge

TERMS = ("loss_ce", "loss_mask", "loss_dice", "loss_proj")
MERGE_STATS = ("merge_zero_grad_frac", "merge_group_size_mean", "merge_group_size_max", "segments_without_loss")


class Points(NamedTuple):
  """Random point coordinates (normalised x, y) of one criterion call; leading dims [L, B]."""
  match: jax.Array  # [L, B, Pm, 2] uniform points shared by every pair in the matching cost
  over: jax.Array   # [L, B, N, kP, 2] oversampled uniform candidates per target (importance sampling)
  tail: jax.Array   # [L, B, N, P - beta P, 2] uniform points appended to the importance-sampled ones


def _point_counts(config: ml_collections.ConfigDict):
  """(kP oversampled candidates, beta P importance-sampled, P - beta P uniform) points per target row."""
  lc = config.loss
  num_uncertain = int(lc.importance_sample_ratio * lc.num_points)
  return int(lc.num_points * lc.oversample_ratio), num_uncertain, lc.num_points - num_uncertain


def draw_points(rng: jax.Array, num_layers: int, batch_size: int, num_targets: int,
                config: ml_collections.ConfigDict) -> Points:
  """Draws every uniform coordinate `criterion_with_points` takes (Mask2Former's torch.rand calls)."""
  num_over, _, num_tail = _point_counts(config)
  k1, k2, k3 = jax.random.split(rng, 3)
  lb = (num_layers, batch_size)
  return Points(match=jax.random.uniform(k1, lb + (config.matcher.num_points, 2)),
                over=jax.random.uniform(k2, lb + (num_targets, num_over, 2)),
                tail=jax.random.uniform(k3, lb + (num_targets, num_tail, 2)))


class PointSource(NamedTuple):
  """Where one layer's points come from, given that layer's entry of the per-layer inputs.

  match(x) -> [B, Pm, 2]; rows(x, block, rows) -> (over [B, K, kP, 2], tail [B, K, T, 2]) for the target
  rows `rows` (a slice), `block` its index. Drawing per block keeps skipped blocks free: at the paper's
  sizes one layer's candidates are B x N x 3P x 2 uniforms, and generating them cost more than the losses.
  """
  match: Callable
  rows: Callable


def given_points() -> PointSource:
  """Points read from a `Points` tuple (per-layer input: (match, over, tail) of one layer)."""
  return PointSource(match=lambda x: x[0], rows=lambda x, block, rows: (x[1][:, rows], x[2][:, rows]))


def random_points(config: ml_collections.ConfigDict, batch_size: int) -> PointSource:
  """Points drawn from the layer's key (per-layer input: a key), each block from its own fold of it."""
  num_over, _, num_tail = _point_counts(config)

  def rows(key, block, rows):
    k = rows.stop - rows.start
    k_over, k_tail = jax.random.split(jax.random.fold_in(key, 1 + block))
    return (jax.random.uniform(k_over, (batch_size, k, num_over, 2)),
            jax.random.uniform(k_tail, (batch_size, k, num_tail, 2)))

  return PointSource(
      match=lambda key: jax.random.uniform(jax.random.fold_in(key, 0), (batch_size, config.matcher.num_points, 2)),
      rows=rows)


def _example_keys():
  return ("task", "segment_map", "seg_class", "seg_is_thing", "seg_box", "seg_valid", "seg_has_mask")


def merged_predictions(logits: jax.Array, ex: dict, config: ml_collections.ConfigDict):
  """MERGE of one example's proposals for its task: (groups merge.Groups, merged log_probs [Q, C + 1])."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  groups = merge.merge_groups(log_probs, ex["task"], ex["seg_class"], ex["seg_is_thing"], ex["seg_valid"],
                              config.loss.merge, config.loss.merge_background)
  return groups, merge.merged_log_probs(log_probs, groups)


def slot_maps(masks: jax.Array, groups: merge.Groups, slots: jax.Array, config: ml_collections.ConfigDict):
  """(maps [S, h, w] float32, is_logit [S] bool): the map each of `slots` [S] predicts, and whether it holds
  logits or probabilities (merge.selected_maps).

  A single proposal's map is its mask logits, so that sampling it and applying the sigmoid afterwards is exactly
  Mask2Former's BCE-with-logits; a merged slot's map is its group's merged mask [paper: MERGE; formula
  config.loss.merge_mask]. `read_slots` turns samples of these maps into (logit, prob).
  """
  q, h, w = masks.shape
  maps, is_logit = merge.selected_maps(masks.reshape(q, h * w), groups, merge.one_hot_rows(slots, q),
                                       config.loss.merge_mask)
  return maps.reshape(-1, h, w), is_logit


def read_slots(samples: jax.Array, is_logit: jax.Array):
  """(logit, prob) [S, P] from samples [S, P] of `slot_maps`: logit rows hold logits, the others probabilities
  (their `logit` is then meaningless and unused: mask_losses reads it only where `is_logit`)."""
  return samples, jnp.where(is_logit[:, None], jax.nn.sigmoid(samples), samples)


def merge_statistics(masks: jax.Array, groups: merge.Groups, config: ml_collections.ConfigDict) -> dict:
  """One example's MERGE instrument (no gradient), float32 []: `zero_grad` / `merged_pixels` (pixels of merged
  masks where the merge passes no gradient, merge.vanishing_gradient_pixels), `group_sizes` / `groups` (sizes
  and number of merging groups) and `group_size_max`.

  The pixels counted are every k-th row and column of the mask grid (k = config.loss.merge_stats_stride): the
  fraction is a strided estimate, as the full count cost 2.0 s of a 12.1 s R50 512 px CPU step (batch 2, 100
  queries, 10 layers); `benchmarks/bench_merge.py` counts every pixel (k = 1)."""
  k = config.loss.merge_stats_stride
  sub = masks[:, ::k, ::k]
  zero, pixels = merge.vanishing_gradient_pixels(sub.reshape(sub.shape[0], -1), groups, config.loss.merge_mask)
  merging = groups.active & groups.merges
  return {"zero_grad": zero, "merged_pixels": pixels,
          "group_sizes": jnp.sum(jnp.where(merging, groups.size, 0.0)),
          "groups": jnp.sum(merging.astype(jnp.float32)),
          "group_size_max": jnp.max(jnp.where(merging, groups.size, 0.0))}


def _row_blocks(num_rows: int, size: int) -> list:
  return [slice(s, min(s + size, num_rows)) for s in range(0, num_rows, size)]


def _for_needed_blocks(use: jax.Array, size: int, fn: Callable, zeros: Callable) -> list:
  """[fn(block, rows) if any example of the batch needs a row of the block, else zeros(rows)] per block of
  `size` rows of use [B, N]; the predicate is a scalar, so the skipped branch costs nothing."""
  return [jax.lax.cond(jnp.any(use[:, rows]), lambda b=b, rows=rows: fn(b, rows), lambda rows=rows: zeros(rows))
          for b, rows in enumerate(_row_blocks(use.shape[1], size))]


def point_cost_samples(num_targets: int) -> Callable:
  """`layer_cost`'s mask_samples for the points criterion: the maps and the targets' masks at the matcher's
  uniform points pts [P, 2], shared by every pair [default: Mask2Former matcher]."""
  return lambda maps, ex, pts: (mask_losses.point_sample_shared(maps, pts),
                                mask_losses.sample_segment_masks_shared(ex["segment_map"], num_targets, pts))


def dense_cost_samples(stride: int) -> Callable:
  """`layer_cost`'s mask_samples for the dense criterion: the maps pooled to the loss grid, against the targets'
  cell fractions [N, P] (`mask_losses.dense_targets`)."""
  return lambda maps, ex, targets: (mask_losses.pool_grid(maps, stride), targets)


def layer_cost(logits: jax.Array, masks: jax.Array, ex: dict, mask_samples: Callable, sample_input,
               config: ml_collections.ConfigDict):
  """The Hungarian cost of one layer, batched, merged predictions against targets (no gradient), and each
  example's `merge_statistics`.

  The mask cost is computed over blocks of loss.row_block targets, and a block in which no example of the batch
  has a valid target with a mask is skipped (`lax.cond`; its pairs keep their class and projection costs), so that
  it follows the segments present rather than the padded data.max_segments, as the losses do.

  Args:
    logits: [B, Q, C + 1]; masks: [B, Q, h, w] mask logits; ex: the batch entries (`_example_keys`);
    mask_samples: `(maps [Q, h, w], ex, x) -> (samples [Q, P], labels [N, P])` of one example, the maps and
      the targets' masks at the same P points or cells (`point_cost_samples`, `dense_cost_samples`), x its
      entry of sample_input (a pytree with leading dim B); config: full config.

  Returns:
    ([B, Q, N] float32 `matching.assignment_cost` of the predictions (inactive slots and padded targets made
    harmless), merge_statistics dict of [B]).
  """
  mc = config.matcher
  logits, masks = jax.lax.stop_gradient((logits, masks))
  h, w = masks.shape[-2:]

  def predictions(lg, m, e, x):
    groups, merged = merged_predictions(lg, e, config)
    maps, is_logit = slot_maps(m, groups, jnp.arange(m.shape[0]), config)
    samples, labels = mask_samples(maps, e, x)
    logit, prob = read_slots(samples, is_logit)  # [Q, P]
    pred_y, pred_x = box_projection.mask_projections(m)
    box_y, box_x = box_projection.box_projections(e["seg_box"], h, w)
    proj_cost = mc.projection_cost * box_projection.pairwise_projection_cost(pred_y, pred_x, box_y, box_x)
    class_cost = mc.class_cost * matching.class_cost(merged, e["seg_class"])
    return class_cost, proj_cost, (logit, prob, is_logit, labels), groups.active, merge_statistics(m, groups, config)

  class_cost, proj_cost, (logit, prob, is_logit, labels), active, stats = jax.vmap(predictions)(
      logits, masks, ex, sample_input)
  pairwise = jax.vmap(lambda lo, pr, il, lb: mc.mask_cost * mask_losses.pairwise_sigmoid_bce(lo, pr, il, lb)
                      + mc.dice_cost * mask_losses.pairwise_dice(pr, lb))
  has_mask = ex["seg_valid"] & ex["seg_has_mask"]
  blocks = _for_needed_blocks(has_mask, config.loss.row_block,
                              lambda b, rows: pairwise(logit, prob, is_logit, labels[:, rows]),
                              lambda rows: jnp.zeros(logit.shape[:2] + (rows.stop - rows.start,)))
  cost = class_cost + jnp.where(ex["seg_has_mask"][:, None, :], jnp.concatenate(blocks, axis=2), proj_cost)
  assign = lambda c, a, v: matching.assignment_cost(c, a, v, config.loss.match_leftover)  # noqa: E731
  return jax.vmap(assign)(cost, active, ex["seg_valid"]), stats


def matched_targets(groups: merge.Groups, ex: dict, match: jax.Array, config: ml_collections.ConfigDict):
  """(real [N], use_mask [N]): targets matched to a prediction (an active slot, or with config.loss.match_leftover
  any slot), and those of them with a mask."""
  matched_active = merge.one_hot_rows(match, groups.active.shape[0]) @ groups.active.astype(jnp.float32) > 0.5
  real = ex["seg_valid"] & (matched_active | config.loss.match_leftover)
  return real, real & ex["seg_has_mask"]


def assignment(match: jax.Array, real: jax.Array, num_slots: int) -> jax.Array:
  """[N, Q] float32: row n is the one-hot of the slot matched to target n when it is real, zeros otherwise."""
  return merge.one_hot_rows(match, num_slots) * real[:, None]


def uncertain_points(masks: jax.Array, groups: merge.Groups, slots: jax.Array, over: jax.Array,
                     num_uncertain: int, config: ml_collections.ConfigDict) -> jax.Array:
  """Indices [K, beta P] into `over` [K, kP, 2] of the most uncertain candidates of each target row's
  matched prediction (`slots` [K]) [default: Mask2Former importance sampling; no gradient]."""
  maps, is_logit = slot_maps(masks, groups, slots, config)
  logit, prob = read_slots(jax.vmap(mask_losses.point_sample)(maps, over), is_logit)
  return mask_losses.top_k_set(mask_losses.uncertainty(logit, prob, is_logit), num_uncertain)


def layer_point_indices(logits: jax.Array, masks: jax.Array, ex: dict, match: jax.Array, source_input,
                        source: PointSource, config: ml_collections.ConfigDict) -> jax.Array:
  """Pass 2 of one layer, batched (no gradient): [B, N, beta P] int32 `uncertain_points` per target row,
  zeros in skipped blocks. logits [B, Q, C + 1], masks [B, Q, h, w], ex batched, match [B, N]."""
  logits, masks = jax.lax.stop_gradient((logits, masks))
  _, num_uncertain, _ = _point_counts(config)
  groups = jax.vmap(lambda lg, e: merged_predictions(lg, e, config)[0])(logits, ex)
  _, use_mask = jax.vmap(lambda g, e, m: matched_targets(g, e, m, config))(groups, ex, match)
  select = jax.vmap(lambda m, g, s, o: uncertain_points(m, g, s, o, num_uncertain, config))

  def block(b, rows):
    over, _ = source.rows(source_input, b, rows)
    return select(masks, groups, match[:, rows], over)

  zeros = lambda rows: jnp.zeros((match.shape[0], rows.stop - rows.start, num_uncertain), jnp.int32)  # noqa: E731
  return jnp.concatenate(_for_needed_blocks(use_mask, config.loss.row_block, block, zeros), axis=1)


def mask_terms(masks: jax.Array, groups: merge.Groups, segment_map: jax.Array, slots: jax.Array,
               rows: jax.Array, coords: jax.Array, use: jax.Array, config: ml_collections.ConfigDict):
  """(BCE sum, dice sum) over target rows `rows` [K] matched to `slots` [K], at their points coords
  [K, P, 2], counting rows where `use` [K] [default: Mask2Former sigmoid_ce_loss, dice_loss]."""
  maps, is_logit = slot_maps(masks, groups, slots, config)
  logit, prob = read_slots(jax.vmap(mask_losses.point_sample)(maps, coords), is_logit)
  labels = mask_losses.sample_segment_masks(segment_map, rows, coords)
  return (jnp.sum(jnp.where(use, mask_losses.sigmoid_bce(logit, prob, is_logit, labels), 0.0)),
          jnp.sum(jnp.where(use, mask_losses.dice(prob, labels), 0.0)))


def example_class_and_box_terms(groups: merge.Groups, merged: jax.Array, masks: jax.Array, ex: dict,
                                match: jax.Array, config: ml_collections.ConfigDict) -> dict:
  """ce_num, ce_den (weighted CE sum and weight sum over predictions), proj (projection loss sum over box
  targets) and without_loss (valid targets matched to no prediction) of one example at one layer; groups, merged
  [Q, C + 1] (`merged_predictions`), masks [Q, h, w], match [N]. Rows and slots are paired by the one-hot
  `assignment` (matmuls, no gathers)."""
  q, h, w = masks.shape
  c1 = merged.shape[-1]
  real, _ = matched_targets(groups, ex, match, config)
  a = assignment(match, real, q)  # [N, Q]
  matched = jnp.sum(a, axis=0) > 0.5
  background = (jnp.arange(c1) == c1 - 1).astype(jnp.float32)
  target = jnp.where(matched[:, None], a.T @ merge.one_hot_rows(ex["seg_class"], c1), background[None, :])
  ce = -jnp.sum(jnp.where(target > 0.5, merged, 0.0), axis=-1)
  weight = jnp.where(matched, 1.0, config.loss.no_object_weight * groups.active)

  # Projection loss for box targets, on the matched proposal's own mask (box-only never merges).
  use_box = real & ~ex["seg_has_mask"]
  pred_y, pred_x = box_projection.mask_projections(masks)
  box_y, box_x = box_projection.box_projections(ex["seg_box"], h, w)
  hi = jax.lax.Precision.HIGHEST
  proj = box_projection.projection_loss(jnp.matmul(a, pred_y, precision=hi), jnp.matmul(a, pred_x, precision=hi),
                                        box_y, box_x)
  return {"ce_num": jnp.sum(weight * ce), "ce_den": jnp.sum(weight),
          "proj": jnp.sum(jnp.where(use_box, proj, 0.0)),
          "without_loss": jnp.sum((ex["seg_valid"] & ~real).astype(jnp.float32))}


def layer_losses(logits: jax.Array, masks: jax.Array, ex: dict, match: jax.Array, indices: jax.Array,
                 source_input, source: PointSource, config: ml_collections.ConfigDict) -> dict:
  """Pass 3 of one layer, batched: unnormalised loss sums, each [B].

  Args:
    logits: [B, Q, C + 1]; masks: [B, Q, h, w]; ex: batched entries; match: [B, N] slot matched to each
    target; indices: [B, N, beta P] importance-sampled candidates (`layer_point_indices`); source_input,
    source: the layer's points; config: full config.

  Returns:
    {ce_num, ce_den, proj, without_loss (`example_class_and_box_terms`), mask, dice (`mask_terms`)}.
  """
  groups, merged = jax.vmap(lambda lg, e: merged_predictions(lg, e, config))(logits, ex)
  out = jax.vmap(lambda g, mp, m, e, k: example_class_and_box_terms(g, mp, m, e, k, config))(
      groups, merged, masks, ex, match)
  _, use_mask = jax.vmap(lambda g, e, m: matched_targets(g, e, m, config))(groups, ex, match)
  terms = jax.vmap(lambda *a: mask_terms(*a, config))

  def block(b, rows):
    over, tail = source.rows(source_input, b, rows)
    coords = mask_losses.importance_points(over, tail, indices[:, rows])
    ids = jnp.broadcast_to(jnp.arange(rows.start, rows.stop), match[:, rows].shape)
    return terms(masks, groups, ex["segment_map"], match[:, rows], ids, coords, use_mask[:, rows])

  zeros = lambda rows: (jnp.zeros(match.shape[:1]), jnp.zeros(match.shape[:1]))  # noqa: E731
  parts = _for_needed_blocks(use_mask, config.loss.row_block, block, zeros)
  out["mask"] = sum(p[0] for p in parts)
  out["dice"] = sum(p[1] for p in parts)
  return out


def _point_sums(logits: jax.Array, masks: jax.Array, ex: dict, config: ml_collections.ConfigDict,
                source: PointSource, per_layer_inputs):
  """(unnormalised loss sums {name: [L, B]}, merge_statistics {name: [L, B]}) with point-sampled mask terms.

  Three passes over the layers (`lax.map`, each layer batched): (1) every layer's Hungarian cost without
  gradient, then one batched solve matches all L x B examples at once (a `while_loop` solver takes as many
  sequential steps for L x B problems as for B); (2) the importance-sampled point indices, without gradient;
  (3) the losses with matches and indices as inputs, rematerialised in the backward pass, which then
  recomputes only the sampling of the chosen points. Layers run one at a time: at the paper's sizes one
  layer's candidates are B x N x 3P points (B=16, N=100, P=12544: 60M), so vmapping the layers or keeping
  every layer's residuals would multiply the peak memory by L.
  """
  samples = point_cost_samples(ex["seg_class"].shape[-1])
  costs, merge_stats = jax.lax.map(lambda a: layer_cost(a[0], a[1], ex, samples, source.match(a[2]), config),
                                   (logits, masks, per_layer_inputs))  # [L, B, Q, N], each [L, B]
  matches = _match(costs)
  indices = jax.lax.map(lambda a: layer_point_indices(a[0], a[1], ex, a[3], a[2], source, config),
                        (logits, masks, per_layer_inputs, matches))  # [L, B, N, beta P]
  layer = jax.checkpoint(lambda a: layer_losses(a[0], a[1], ex, a[3], a[4], a[2], source, config))
  return jax.lax.map(layer, (logits, masks, per_layer_inputs, matches, indices)), merge_stats


def _match(costs: jax.Array) -> jax.Array:
  """[L, B, Q, N] costs -> [L, B, N] matches, all L x B problems in one batched solve."""
  flat = matching.hungarian_match_batch(costs.reshape(-1, *costs.shape[2:]))
  return flat.reshape(costs.shape[:2] + costs.shape[3:])


def dense_mask_terms(masks: jax.Array, groups: merge.Groups, a: jax.Array, targets: jax.Array, use: jax.Array,
                     config: ml_collections.ConfigDict):
  """(BCE sum, dice sum) of one example's targets on the dense grid, counting rows where `use` [N]: the maps of
  the slots the one-hot `assignment` a [N, Q] pairs with the targets, pooled by loss.dense_stride, against
  targets [N, P] (`mask_losses.dense_targets`)."""
  q, h, w = masks.shape
  maps, is_logit = merge.selected_maps(masks.reshape(q, h * w), groups, a, config.loss.merge_mask)
  logit, prob = read_slots(mask_losses.pool_grid(maps.reshape(-1, h, w), config.loss.dense_stride), is_logit)
  return (jnp.sum(jnp.where(use, mask_losses.sigmoid_bce(logit, prob, is_logit, targets), 0.0)),
          jnp.sum(jnp.where(use, mask_losses.dice(prob, targets), 0.0)))


def dense_layer_losses(logits: jax.Array, masks: jax.Array, ex: dict, match: jax.Array, targets: jax.Array,
                       config: ml_collections.ConfigDict) -> dict:
  """The dense counterpart of `layer_losses` (one layer, batched): targets [B, N, P]; no points, no blocks."""
  groups, merged = jax.vmap(lambda lg, e: merged_predictions(lg, e, config))(logits, ex)
  out = jax.vmap(lambda g, mp, m, e, k: example_class_and_box_terms(g, mp, m, e, k, config))(
      groups, merged, masks, ex, match)

  def mask_terms_of(m, g, e, k, t):
    real, use_mask = matched_targets(g, e, k, config)
    return dense_mask_terms(m, g, assignment(k, real, m.shape[0]), t, use_mask, config)

  out["mask"], out["dice"] = jax.vmap(mask_terms_of)(masks, groups, ex, match, targets)
  return out


def _dense_sums(logits: jax.Array, masks: jax.Array, ex: dict, config: ml_collections.ConfigDict):
  """(unnormalised loss sums {name: [L, B]}, merge_statistics {name: [L, B]}) on the dense grid: the targets'
  cell fractions once per batch, then two passes over the layers, (1) costs without gradient and one batched
  solve, (2) the losses, rematerialised in the backward pass."""
  n = ex["seg_class"].shape[-1]
  h, w = masks.shape[-2:]
  stride = config.loss.dense_stride
  targets = jax.vmap(lambda sm: mask_losses.dense_targets(sm, n, (h // stride, w // stride)))(ex["segment_map"])
  samples = dense_cost_samples(stride)
  costs, merge_stats = jax.lax.map(lambda a: layer_cost(a[0], a[1], ex, samples, targets, config), (logits, masks))
  matches = _match(costs)
  layer = jax.checkpoint(lambda a: dense_layer_losses(a[0], a[1], ex, a[2], targets, config))
  return jax.lax.map(layer, (logits, masks, matches)), merge_stats


def _weighted_terms(sums: dict, merge_stats: dict, batch: dict, config: ml_collections.ConfigDict):
  """(loss, terms, stats) as `criterion` from every layer's unnormalised sums: weights and normalisers."""
  lc = config.loss
  valid = batch["seg_valid"]
  num_masks = jnp.maximum(jnp.sum((valid & batch["seg_has_mask"]).astype(jnp.float32)), 1.0)
  num_boxes = jnp.maximum(jnp.sum((valid & ~batch["seg_has_mask"]).astype(jnp.float32)), 1.0)
  ce_den = jnp.maximum(jnp.sum(sums["ce_den"], axis=1, keepdims=True), 1e-12)
  terms = {
      "loss_ce": lc.class_weight * jnp.sum(sums["ce_num"] / ce_den, axis=0),
      "loss_mask": lc.mask_weight * jnp.sum(sums["mask"], axis=0) / num_masks,
      "loss_dice": lc.dice_weight * jnp.sum(sums["dice"], axis=0) / num_masks,
      "loss_proj": lc.projection_weight * jnp.sum(sums["proj"], axis=0) / num_boxes,
  }
  loss = sum(jnp.sum(t) for t in terms.values())
  return loss, terms, layer_statistics(merge_stats, sums["without_loss"])


def layer_statistics(merge_stats: dict, without_loss: jax.Array) -> dict:
  """The `MERGE_STATS` per decoder layer, each float32 [L], from per-example `merge_statistics` and
  without_loss counts (each [L, B]); segments_without_loss is a count per batch. A statistic of groups that
  the batch does not have (no example merges: instance and box-only tasks) is NaN."""
  def ratio(num, den):
    den = jnp.sum(merge_stats[den], 1)
    return jnp.where(den > 0, jnp.sum(merge_stats[num], 1) / jnp.maximum(den, 1.0), jnp.nan)

  groups = jnp.sum(merge_stats["groups"], 1)
  return {"merge_zero_grad_frac": ratio("zero_grad", "merged_pixels"),
          "merge_group_size_mean": ratio("group_sizes", "groups"),
          "merge_group_size_max": jnp.where(groups > 0, jnp.max(merge_stats["group_size_max"], 1), jnp.nan),
          "segments_without_loss": jnp.sum(without_loss, 1)}


def _layers(outputs: dict, config: ml_collections.ConfigDict):
  logits, masks = outputs["pred_logits"], outputs["pred_masks"]
  if not config.loss.deep_supervision:
    logits, masks = logits[-1:], masks[-1:]
  return logits, masks


def criterion_with_points(outputs: dict, batch: dict, config: ml_collections.ConfigDict,
                          points: Points):
  """`criterion` with the random coordinates given (tests fix them to compare with references).

  `points` has one entry per layer of `outputs`; without deep supervision only the last is used.
  """
  logits, masks = _layers(outputs, config)
  num_layers = logits.shape[0]
  xs = (points.match[-num_layers:], points.over[-num_layers:], points.tail[-num_layers:])
  ex = {k: batch[k] for k in _example_keys()}
  return _weighted_terms(*_point_sums(logits, masks, ex, config, given_points(), xs), batch, config)


def criterion(outputs: dict, batch: dict, config: ml_collections.ConfigDict, rng: jax.Array):
  """The training loss (docs/contracts.md "Losses").

  Args:
    outputs: {'pred_logits': [L, B, Q, C + 1], 'pred_masks': [L, B, Q, h, w]} (any float dtype).
    batch: the batch contract (dataseg_jax/contract.py); uses task, segment_map, seg_class,
      seg_is_thing, seg_box, seg_valid, seg_has_mask.
    config: the full ConfigDict (config.loss, config.matcher).
    rng: PRNG key for the sampled points (unused by the dense criterion).

  Returns:
    (loss float32 [], terms {name: float32 [B]}, stats {MERGE_STATS name: float32 [L]}) with loss == sum of
    all terms; weights applied, summed over decoder layers; stats per supervised decoder layer, no gradient.
  """
  logits, masks = _layers(outputs, config)
  num_layers, batch_size = logits.shape[:2]
  ex = {k: batch[k] for k in _example_keys()}
  if config.loss.sampling == "dense":
    sums = _dense_sums(logits, masks, ex, config)
  else:
    sums = _point_sums(logits, masks, ex, config, random_points(config, batch_size), jax.random.split(rng, num_layers))
  return _weighted_terms(*sums, batch, config)
