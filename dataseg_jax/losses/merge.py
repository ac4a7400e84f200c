"""MERGE: turn Q proposals into the predictions a task's annotation can supervise [paper; formula: ours, measured].

Per task [paper]: semantic merges all proposals of a class into one; panoptic merges stuff proposals of a class
and keeps things; instance and box-only keep every proposal. The paper gives no formula. Ours (configurable,
chosen by the A/B of docs/results.md):

- Grouping: proposal i joins the group of class c_i = argmax over the non-background classes, unless its argmax
  over all C + 1 classes is background: then it stays a prediction of its own, trained towards background when
  nothing is matched to it (`config.loss.merge_background=True` puts it in its class's group instead, which
  dilutes the group's mean probability with background proposals).
- Class probability of a group: mean_{i in group} p_i.
- Mask of a group (`config.loss.merge_mask`), with w_ji = 1 for the members of group j (hard) or p_i(c_j) for
  every proposal (soft, `config.loss.merge='soft'`, an ablation):
    noisy_or  M_j = 1 - prod_i (1 - sigmoid(m_i))^{w_ji}: in logits, logit M_j = log(expm1(S_j)) with
              S_j = sum_i w_ji softplus(m_i), a matmul (`merged_logits`). A one-member group gives m_i exactly.
              dM_j / d sigmoid(m_i) = w_ji (1 - M_j) / (1 - sigmoid(m_i)) never vanishes where members overlap.
    max       M_j = max_i sigmoid(m_i) over the members (hard only): logit max_i m_i; the gradient reaches the
              largest member at each pixel.
    clip      M_j = clip(sum_i w_ji sigmoid(m_i), 0, 1), the plain clipped sum: no gradient where the sum
              exceeds 1, which at initialisation is most of a large group's pixels (docs/results.md).

Representation (no [C_union, H, W] tensor): the predictions live in the Q proposal slots. Proposal i joins the
group of its `leader[i]`, the first proposal with the same merge key (its class when it merges, itself
otherwise); slot j is `active` when it leads a group, and then holds that group's prediction. An inactive slot
j (a merged-away proposal) holds proposal j alone: the criterion matches a ground-truth segment to it only when
there are fewer active slots than segments (`config.loss.match_leftover`), so that every segment gets a loss.
Masks are merged on the mask grid as a matmul with the weights `member` [slot, proposal].

Which proposals merge is decided per example from `task` (data, not a static argument). A proposal is "stuff"
for the panoptic merge when its argmax class is the class of a stuff segment of the example's ground truth (the
batch carries thing/stuff per segment, contract.py); a predicted class absent from the ground truth is kept as
it is (it can only be trained towards no-object).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dataseg_jax.contract import Task

LOGIT_FORMULAS = ("noisy_or", "max")  # formulas whose merged map is a logit map
SUM_FLOOR = 1e-30  # floor of S in log(expm1(S)): logits stay above -69, as mask_losses.PROB_FLOOR does for p
VANISHING = 1e-6   # a merged pixel whose summed member gradient sum_i dM/dsigmoid(m_i) is below this has none


class Groups(NamedTuple):
  """How the Q proposals of one example merge. All [Q] but `member`."""
  leader: jax.Array   # int32: slot of the merged prediction proposal i belongs to (leader[i] <= i)
  active: jax.Array   # bool: slot j leads a group and holds its prediction
  member: jax.Array   # float32 [Q, Q]: weight w_ji of proposal i in slot j's mask: 1 for the members of active
                      #   slot j's group (soft: p_i(c_j) for every i when j merges); one-hot at j for an inactive j
  single: jax.Array   # bool: slot j's prediction is proposal j alone (its logits, its class probabilities)
  merges: jax.Array   # bool: proposal i merges with the others of its class (task and class decide)
  size: jax.Array     # float32: number of proposals in slot j's group (0 for inactive slots)


def one_hot_rows(index: jax.Array, num: int) -> jax.Array:
  """[K] int -> [K, num] float32 one-hot rows: selecting rows of an array as a matmul (`select @ x`), which is
  exact at full precision and is not a gather (the dense criterion has none)."""
  return (index[:, None] == jnp.arange(num)[None, :]).astype(jnp.float32)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def merge_groups(log_probs: jax.Array, task: jax.Array, seg_class: jax.Array, seg_is_thing: jax.Array,
                 seg_valid: jax.Array, mode: str, background_joins: bool = False) -> Groups:
  """The merge groups of one example (no gathers or scatters: comparisons and [Q, Q] matmuls).

  Args:
    log_probs: [Q, C + 1] log class probabilities (index C = background).
    task: int32 [] (contract.Task).
    seg_class, seg_is_thing, seg_valid: [N] the example's ground-truth segments.
    mode: 'hard' or 'soft' (config.loss.merge; config.validate refuses any other).
    background_joins: whether a proposal whose argmax over C + 1 is background joins its best class's group
      (config.loss.merge_background).

  Returns:
    Groups.
  """
  q, c1 = log_probs.shape
  num_classes = c1 - 1
  cls = jnp.argmax(log_probs[:, :num_classes], axis=-1)
  gt_stuff = seg_valid & ~seg_is_thing
  pred_is_stuff = jnp.any(gt_stuff[None, :] & (seg_class[None, :] == cls[:, None]), axis=-1)
  merges = (task == Task.SEMANTIC) | ((task == Task.PANOPTIC) & pred_is_stuff)
  if not background_joins:
    merges &= jnp.argmax(log_probs, axis=-1) != num_classes
  key = jnp.where(merges, cls, num_classes + jnp.arange(q))
  leader = jnp.argmax(key[None, :] == key[:, None], axis=-1).astype(jnp.int32)
  slots = jnp.arange(q)
  active = leader == slots
  in_group = leader[None, :] == slots[:, None]  # [j, i]: proposal i belongs to slot j's group
  size = jnp.sum(in_group.astype(jnp.float32), axis=1)
  member = jnp.where(active[:, None], in_group, slots[:, None] == slots[None, :]).astype(jnp.float32)
  if mode == "hard":
    single = ~active | (size == 1)
  else:
    soft = active & merges  # row j: p_i(c_j) over every proposal i
    p_of_class = _matmul(jnp.exp(log_probs), one_hot_rows(cls, c1).T)  # [i, j]: p_i(c_j)
    member = jnp.where(soft[:, None], p_of_class.T, member)
    single = ~soft
  return Groups(leader=leader, active=active, member=member, single=single, merges=merges, size=size)


def merged_log_probs(log_probs: jax.Array, groups: Groups) -> jax.Array:
  """Per slot: log of the group's mean class probability mean_{i in group j} p_i for an active slot, the slot's
  own log probabilities for an inactive one: [Q, C + 1] -> [Q, C + 1].

  A log-sum-exp over each group (shifted by the group's largest log probability), so a single-proposal group
  returns its log-softmax exactly. The shift cancels in the result, so it carries no gradient: its backward
  through the [Q, Q, C + 1] masked max took 0.6 s of the R50 criterion's 3.8 s on XLA-CPU.
  """
  q = log_probs.shape[0]
  in_group = groups.leader[None, :] == jnp.arange(q)[:, None]  # [j, i]
  top = jnp.max(jnp.where(in_group[:, :, None], jax.lax.stop_gradient(log_probs)[None], -jnp.inf), axis=1)
  top = jnp.where(jnp.isfinite(top), top, 0.0)  # [j, C + 1]
  total = _matmul(in_group.astype(jnp.float32),
                  jnp.exp(log_probs - _matmul(one_hot_rows(groups.leader, q), top)))  # exp(lp_i - top_{leader(i)})
  mean = jnp.log(jnp.maximum(total, 1e-30)) + top - jnp.log(jnp.maximum(groups.size, 1.0))[:, None]
  return jnp.where(groups.active[:, None], mean, log_probs)


def _log_expm1(s: jax.Array) -> jax.Array:
  """log(exp(s) - 1) for s >= SUM_FLOOR, stable at both ends and with finite gradients in both branches."""
  big = jnp.maximum(s, 1.0)
  small = jnp.clip(s, SUM_FLOOR, 1.0)
  return jnp.where(s > 1.0, big + jnp.log1p(-jnp.exp(-big)), jnp.log(jnp.expm1(small)))


def selected_maps(flat: jax.Array, groups: Groups, select: jax.Array, formula: str):
  """(maps [K, P], is_logit [K]): the map predicted by each slot that the one-hot rows select [K, Q] pick, from
  the proposals' mask logits flat [Q, P] (a zero row of `select` gives a zero map); `formula` is one of
  config.MERGE_MASKS (config.loss.merge_mask; config.validate refuses any other).

  A logit map for a single slot and for the noisy_or and max formulas, a probability map for clip (module
  docstring). Rows are selected and merged by matmuls at full float32 precision (exact for one-hot rows; a
  probability near 1 rounded to bf16 would become 1 inside log(1 - p)); the max formula alone takes a
  segment max over the groups (a scatter).
  """
  flat = flat.astype(jnp.float32)
  own = _matmul(select, flat)
  single = _matmul(select, groups.single.astype(jnp.float32)) > 0.5
  if formula == "noisy_or":
    merged = _log_expm1(_matmul(_matmul(select, groups.member), jax.nn.softplus(flat)))
  elif formula == "max":
    top = jax.ops.segment_max(flat, groups.leader, flat.shape[0])
    merged = _matmul(select, jnp.where(jnp.isfinite(top), top, 0.0))
  else:  # 'clip'
    merged = jnp.clip(_matmul(_matmul(select, groups.member), jax.nn.sigmoid(flat)), 0.0, 1.0)
  return jnp.where(single[:, None], own, merged), single | (formula in LOGIT_FORMULAS)


def vanishing_gradient_pixels(flat: jax.Array, groups: Groups, formula: str):
  """(pixels where the merge passes no gradient, pixels) over the maps of the merged slots (active, more than a
  single proposal), both float32 []: the instrument of docs/results.md.

  A pixel counts when sum_i dM_j / d sigmoid(m_i) < VANISHING over the members i: for clip that is exactly
  where sum_i w_ji sigmoid(m_i) >= 1; for noisy_or the sum is (1 - M_j) sum_i w_ji / (1 - sigmoid(m_i))
  = exp(-S_j) sum_i w_ji (1 + exp(m_i)); for max it is 1 (the largest member) everywhere.
  """
  flat = flat.astype(jnp.float32)
  merged = groups.active & ~groups.single
  if formula == "clip":
    vanishes = _matmul(groups.member, jax.nn.sigmoid(flat)) >= 1.0
  elif formula == "noisy_or":
    log_sum = jnp.log(jnp.maximum(_matmul(groups.member, jnp.exp(jax.nn.softplus(jnp.minimum(flat, 80.0)))),
                                  SUM_FLOOR))
    vanishes = log_sum - _matmul(groups.member, jax.nn.softplus(flat)) < jnp.log(VANISHING)
  else:
    vanishes = jnp.zeros((flat.shape[0], flat.shape[1]), bool)
  count = jnp.sum(jnp.where(merged[:, None] & vanishes, 1.0, 0.0))
  return count, jnp.sum(merged.astype(jnp.float32)) * flat.shape[1]
