"""MERGE: turn Q proposals into the predictions a task's annotation can supervise [paper, formula default].

Per task [paper]: semantic merges all proposals of a class into one; panoptic merges stuff proposals of
a class and keeps things; instance and box-only keep every proposal. Formula [default, DATASEG.md]:
proposal i has class c_i = argmax over non-background classes; a merged prediction of class c has
  hard: mask M_c = clip(sum_{i: c_i = c} sigmoid(m_i), 0, 1)
  soft: mask M_c = clip(sum_i p_i(c) sigmoid(m_i), 0, 1)   (the ablation: every proposal, weighted by p_i(c))
and class probability mean_{i: c_i = c} p_i (both variants). The clip keeps M_c a probability for the BCE
(sum_i p_i(c) can exceed 1).

Representation (no [C_union, H, W] tensor): the merged predictions live in the Q proposal slots. Proposal i
joins the group of its `leader[i]`, the first proposal with the same merge key (its class when it merges,
itself otherwise); slot j is `active` when it leads a group, and then holds that group's merged
prediction. Masks are merged on the mask grid only for the slots a loss reads (criterion.slot_maps), as a
matmul with the weights `member` [slot, proposal]. Non-leader slots are not predictions: they are never
matched and get no loss of their own; they are trained through their group.

Which proposals merge is decided per example from `task` (data, not a static argument). A proposal is
"stuff" for the panoptic merge when its argmax class is the class of a stuff segment of the example's
ground truth (the batch carries thing/stuff per segment, contract.py); a predicted class absent from the
ground truth is kept as it is (it can only be trained towards no-object).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dataseg_jax.contract import Task


class Groups(NamedTuple):
  """How the Q proposals of one example merge. All [Q] but `member`."""
  leader: jax.Array   # int32: slot of the merged prediction proposal i belongs to (leader[i] <= i)
  active: jax.Array   # bool: slot j holds a merged prediction (j leads a group)
  member: jax.Array   # float32 [Q, Q]: weight of proposal i in slot j's mask sum, member[j, i] (1 for the group's
                      #   proposals, 0 for the others; soft: p_i(c_j) for every i when slot j merges)
  raw: jax.Array      # bool: slot j's prediction is exactly one proposal's sigmoid (usable as a logit)
  size: jax.Array     # float32: number of proposals in slot j's group (0 for inactive slots)


def merge_groups(log_probs: jax.Array, task: jax.Array, seg_class: jax.Array, seg_is_thing: jax.Array,
                 seg_valid: jax.Array, mode: str) -> Groups:
  """The merge groups of one example.

  Args:
    log_probs: [Q, C + 1] log class probabilities (index C = background).
    task: int32 [] (contract.Task).
    seg_class, seg_is_thing, seg_valid: [N] the example's ground-truth segments.
    mode: 'hard' or 'soft' (config.loss.merge).

  Returns:
    Groups.
  """
  if mode not in ("hard", "soft"):
    raise ValueError(f"merge_groups: mode must be 'hard' or 'soft' (config.loss.merge), got {mode!r}")
  q, c1 = log_probs.shape
  num_classes = c1 - 1
  cls = jnp.argmax(log_probs[:, :num_classes], axis=-1)
  gt_stuff = seg_valid & ~seg_is_thing
  pred_is_stuff = jnp.any(gt_stuff[None, :] & (seg_class[None, :] == cls[:, None]), axis=-1)
  merges = (task == Task.SEMANTIC) | ((task == Task.PANOPTIC) & pred_is_stuff)
  key = jnp.where(merges, cls, num_classes + jnp.arange(q))
  leader = jnp.argmax(key[None, :] == key[:, None], axis=-1).astype(jnp.int32)
  active = leader == jnp.arange(q)
  size = jax.ops.segment_sum(jnp.ones((q,), jnp.float32), leader, q)
  member = (leader[None, :] == jnp.arange(q)[:, None]).astype(jnp.float32)
  if mode == "hard":
    raw = active & (size == 1)
  else:
    member = jnp.where(merges[:, None], jnp.exp(log_probs[:, cls]).T, member)  # row j: p_i(c_j) over every i
    raw = active & ~merges
  return Groups(leader=leader, active=active, member=member, raw=raw, size=size)


def merged_log_probs(log_probs: jax.Array, groups: Groups) -> jax.Array:
  """log of the merged class probability mean_{i in group j} p_i, per slot: [Q, C + 1] -> [Q, C + 1].

  A log-sum-exp over each group, so a single-proposal group returns its log-softmax exactly. Rows of
  inactive slots are meaningless (they are masked out by the caller).
  """
  q = log_probs.shape[0]
  top = jax.ops.segment_max(log_probs, groups.leader, q)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  total = jax.ops.segment_sum(jnp.exp(log_probs - top[groups.leader]), groups.leader, q)
  return jnp.log(jnp.maximum(total, 1e-30)) + top - jnp.log(jnp.maximum(groups.size, 1.0))[:, None]
