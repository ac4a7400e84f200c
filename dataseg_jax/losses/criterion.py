"""The DaTaSeg criterion: MERGE, Hungarian matching and every loss term, for all tasks in one function.

`criterion(outputs, batch, config, rng) -> (loss, terms)` (docs/contracts.md "Losses"). Per decoder layer
(deep supervision [default: Mask2Former]) and per example:

1. MERGE the Q proposals for the example's task (merge.py): semantic merges every class, panoptic merges
   stuff, instance and box-only keep proposals [paper]; merged predictions sit in the "active" slots.
2. Match merged predictions to the ground-truth segments with the Hungarian algorithm on
   cost = class_cost * (-p(c)) + [mask target] mask_cost * BCE + dice_cost * dice, on matcher.num_points
   uniform points shared by all pairs [default: Mask2Former matcher]
                                 + [box target]  projection_cost * L_proj [paper: projection in the cost].
3. Losses on the matched pairs:
   loss_ce   class_weight * sum_j w_j CE_j / sum w over the batch's merged predictions, with target the
             matched class or background (index C), w = 1 or no_object_weight [default: Mask2Former].
             Every merged prediction (active slot) takes part; a prediction matched to nothing learns
             background. Merged-away proposals take part only through their group's mean probability.
   loss_mask mask_weight * BCE and loss_dice dice_weight * dice, on loss.num_points points per pair chosen
             by importance sampling [default: Mask2Former], for targets with a mask.
   loss_proj projection_weight * L_proj (box_projection.py) on the matched proposal's mask, for targets
             with only a box [paper: BoxInst projection loss for box-only data; weight default].
   Mask, dice and projection sums are divided by num_masks = max(1, valid segments in the batch)
   [default: Mask2Former num_masks].

The task is data: every example runs the same code and `task` only changes which proposals merge, so one
compiled function serves a batch that mixes all four tasks. All shapes are static.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from dataseg_jax.losses import box_projection
from dataseg_jax.losses import mask_losses
from dataseg_jax.losses import matching
from dataseg_jax.losses import merge

TERMS = ("loss_ce", "loss_mask", "loss_dice", "loss_proj")


class Points(NamedTuple):
  """Random point coordinates (normalised x, y) of one criterion call; leading dims [L, B]."""
  match: jax.Array  # [L, B, Pm, 2] uniform points shared by every pair in the matching cost
  over: jax.Array   # [L, B, N, kP, 2] oversampled uniform candidates per target (importance sampling)
  tail: jax.Array   # [L, B, N, P - beta P, 2] uniform points appended to the importance-sampled ones


def draw_points(rng: jax.Array, num_layers: int, batch_size: int, num_targets: int,
                config: ml_collections.ConfigDict) -> Points:
  """Draws the uniform coordinates used by `criterion_with_points` (Mask2Former's torch.rand calls)."""
  lc = config.loss
  num_sampled = int(lc.num_points * lc.oversample_ratio)
  num_uncertain = int(lc.importance_sample_ratio * lc.num_points)
  k1, k2, k3 = jax.random.split(rng, 3)
  lb = (num_layers, batch_size)
  return Points(
      match=jax.random.uniform(k1, lb + (config.matcher.num_points, 2)),
      over=jax.random.uniform(k2, lb + (num_targets, num_sampled, 2)),
      tail=jax.random.uniform(k3, lb + (num_targets, lc.num_points - num_uncertain, 2)))


def _example_keys():
  return ("task", "segment_map", "seg_class", "seg_is_thing", "seg_box", "seg_valid", "seg_has_mask")


def merged_predictions(logits: jax.Array, ex: dict, config: ml_collections.ConfigDict):
  """MERGE of one example's proposals for its task: (groups merge.Groups, merged log_probs [Q, C + 1])."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  groups = merge.merge_groups(log_probs, ex["task"], ex["seg_class"], ex["seg_is_thing"], ex["seg_valid"],
                              config.loss.merge)
  return groups, merge.merged_log_probs(log_probs, groups)


def layer_cost(logits: jax.Array, masks: jax.Array, ex: dict, match_points: jax.Array,
               config: ml_collections.ConfigDict) -> jax.Array:
  """The Hungarian cost of one example at one layer, merged predictions against targets (no gradient).

  Args:
    logits: [Q, C + 1]; masks: [Q, h, w] mask logits; ex: the example's batch entries (`_example_keys`);
    match_points: [Pm, 2]; config: full config.

  Returns:
    [Q, N] float32 `matching.assignment_cost` of the merged predictions (inactive slots and padded
    targets made harmless).
  """
  mc = config.matcher
  logits, masks = jax.lax.stop_gradient((logits, masks))
  groups, merged = merged_predictions(logits, ex, config)
  q, h, w = masks.shape
  n = ex["seg_class"].shape[0]
  samples = jax.vmap(mask_losses.point_sample, (0, None))(masks, match_points)  # [Q, Pm]
  logit, prob = merge.merge_points(samples, groups, groups.leader, q)
  labels = mask_losses.sample_segment_masks_shared(ex["segment_map"], n, match_points)  # [N, Pm]
  mask_cost = (mc.mask_cost * mask_losses.pairwise_sigmoid_bce(logit, prob, groups.raw, labels)
               + mc.dice_cost * mask_losses.pairwise_dice(prob, labels))
  pred_y, pred_x = box_projection.mask_projections(masks)
  box_y, box_x = box_projection.box_projections(ex["seg_box"], h, w)
  proj_cost = mc.projection_cost * box_projection.pairwise_projection_cost(pred_y, pred_x, box_y, box_x)
  cost = (mc.class_cost * matching.class_cost(merged, ex["seg_class"])
          + jnp.where(ex["seg_has_mask"][None, :], mask_cost, proj_cost))
  return matching.assignment_cost(cost, groups.active, ex["seg_valid"])


def layer_losses(logits: jax.Array, masks: jax.Array, ex: dict, points: tuple, match: jax.Array,
                 config: ml_collections.ConfigDict) -> dict:
  """Unnormalised loss sums of one example at one layer.

  Args:
    logits: [Q, C + 1]; masks: [Q, h, w]; ex: the example's batch entries; points: (over [N, kP, 2],
    tail [N, T, 2]); match: [N] int32 slot matched to each target (`layer_cost`, solved); config: full config.

  Returns:
    dict of float32 []: ce_num, ce_den (weighted CE sum and weight sum over merged predictions),
    mask, dice, proj (sums over matched pairs, weights not applied).
  """
  over, tail = points
  lc = config.loss
  groups, merged = merged_predictions(logits, ex, config)
  q, h, w = masks.shape
  n = match.shape[0]
  num_classes = logits.shape[-1] - 1
  real = ex["seg_valid"] & groups.active[match]
  gt_of_slot = jnp.full((q,), -1, jnp.int32).at[match].max(jnp.where(real, jnp.arange(n), -1))
  matched = gt_of_slot >= 0

  # Class cross-entropy over merged predictions (no-object for the unmatched ones).
  target = jnp.where(matched, ex["seg_class"][jnp.maximum(gt_of_slot, 0)], num_classes)
  ce = -jnp.take_along_axis(merged, target[:, None], axis=-1)[:, 0]
  weight = jnp.where(matched, 1.0, lc.no_object_weight) * groups.active
  out = {"ce_num": jnp.sum(weight * ce), "ce_den": jnp.sum(weight)}

  # Point-sampled BCE + dice for mask targets; every proposal feeds the pair of its group.
  use_mask = real & ex["seg_has_mask"]
  pair = gt_of_slot[groups.leader]
  feed = jnp.where((pair >= 0) & use_mask[jnp.maximum(pair, 0)], pair, n)
  row = jnp.minimum(feed, n - 1)
  raw = groups.raw[match]
  sample_rows = jax.vmap(mask_losses.point_sample)
  sg = jax.lax.stop_gradient
  l_over, p_over = merge.merge_points(sample_rows(sg(masks), over[row]), jax.tree.map(sg, groups), feed, n)
  num_uncertain = int(lc.importance_sample_ratio * lc.num_points)
  coords = mask_losses.select_uncertain_points(over, tail, mask_losses.uncertainty(l_over, p_over, raw),
                                               num_uncertain)
  logit, prob = merge.merge_points(sample_rows(masks, coords[row]), groups, feed, n)
  labels = mask_losses.sample_segment_masks(ex["segment_map"], jnp.arange(n), coords)
  out["mask"] = jnp.sum(jnp.where(use_mask, mask_losses.sigmoid_bce(logit, prob, raw, labels), 0.0))
  out["dice"] = jnp.sum(jnp.where(use_mask, mask_losses.dice(prob, labels), 0.0))

  # Projection loss for box targets, on the matched proposal's own mask (box-only never merges).
  use_box = real & ~ex["seg_has_mask"]
  pred_y, pred_x = box_projection.mask_projections(masks)
  box_y, box_x = box_projection.box_projections(ex["seg_box"], h, w)
  proj = box_projection.projection_loss(pred_y[match], pred_x[match], box_y, box_x)
  out["proj"] = jnp.sum(jnp.where(use_box, proj, 0.0))
  return out


def _check_shapes(logits: jax.Array, batch: dict) -> None:
  q, n = logits.shape[2], batch["seg_class"].shape[-1]
  if n > q:
    raise ValueError(f"criterion: {n} target segments per example but only {q} queries; "
                     "lower config.data.max_segments or raise config.model.num_queries")


def _weighted_terms(logits: jax.Array, masks: jax.Array, batch: dict, config: ml_collections.ConfigDict,
                    draw, per_layer_inputs):
  """Sums every layer's losses and applies weights and normalisers; `draw(x)` gives one layer's points.

  Two passes over the layers (lax.map, each layer vmapped over the batch): the first builds every
  layer's Hungarian cost without gradient, one batched solve matches all L x B examples at once (a
  `while_loop` solver takes as many sequential steps for L x B problems as for B), and the second computes
  the losses with the matches as inputs, rematerialised in the backward pass without solving again. Each
  layer draws its own points: at the paper's sizes one layer's importance sampling holds B x Q x 3P
  samples (B=16, Q=100, P=12544: 60M), so vmapping the layers, keeping every layer's residuals or drawing
  every layer's points up front would multiply the peak memory by L.
  """
  ex = {k: batch[k] for k in _example_keys()}
  cost_per_example = jax.vmap(lambda lg, m, e, p: layer_cost(lg, m, e, p, config))
  costs = jax.lax.map(lambda a: cost_per_example(a[0], a[1], ex, draw(a[2])[0]),
                      (logits, masks, per_layer_inputs))  # [L, B, Q, N]
  matches = matching.hungarian_match_batch(costs.reshape(-1, *costs.shape[2:])).reshape(
      costs.shape[:2] + costs.shape[3:])  # [L, B, N]
  per_example = jax.vmap(lambda lg, m, e, p, k: layer_losses(lg, m, e, p, k, config))
  layer = jax.checkpoint(lambda a: per_example(a[0], a[1], ex, draw(a[2])[1:], a[3]))
  sums = jax.lax.map(layer, (logits, masks, per_layer_inputs, matches))  # each [L, B]

  lc = config.loss
  num_masks = jnp.maximum(jnp.sum(batch["seg_valid"].astype(jnp.float32)), 1.0)
  ce_den = jnp.maximum(jnp.sum(sums["ce_den"], axis=1, keepdims=True), 1e-12)
  terms = {
      "loss_ce": lc.class_weight * jnp.sum(sums["ce_num"] / ce_den, axis=0),
      "loss_mask": lc.mask_weight * jnp.sum(sums["mask"], axis=0) / num_masks,
      "loss_dice": lc.dice_weight * jnp.sum(sums["dice"], axis=0) / num_masks,
      "loss_proj": lc.projection_weight * jnp.sum(sums["proj"], axis=0) / num_masks,
  }
  loss = sum(jnp.sum(t) for t in terms.values())
  return loss, terms


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
  _check_shapes(logits, batch)
  num_layers = logits.shape[0]
  xs = (points.match[-num_layers:], points.over[-num_layers:], points.tail[-num_layers:])
  return _weighted_terms(logits, masks, batch, config, lambda x: x, xs)


def criterion(outputs: dict, batch: dict, config: ml_collections.ConfigDict, rng: jax.Array):
  """The training loss (docs/contracts.md "Losses").

  Args:
    outputs: {'pred_logits': [L, B, Q, C + 1], 'pred_masks': [L, B, Q, h, w]} (any float dtype).
    batch: the batch contract (dataseg_jax/contract.py); uses task, segment_map, seg_class,
      seg_is_thing, seg_box, seg_valid, seg_has_mask.
    config: the full ConfigDict (config.loss, config.matcher).
    rng: PRNG key for the sampled points.

  Returns:
    (loss float32 [], terms {name: float32 [B]}) with loss == sum of all terms; weights applied, summed
    over decoder layers.
  """
  logits, masks = _layers(outputs, config)
  _check_shapes(logits, batch)
  num_layers, batch_size = logits.shape[:2]
  num_targets = batch["seg_class"].shape[-1]

  def draw(key):
    return tuple(p[0] for p in draw_points(key, 1, batch_size, num_targets, config))

  return _weighted_terms(logits, masks, batch, config, draw, jax.random.split(rng, num_layers))
