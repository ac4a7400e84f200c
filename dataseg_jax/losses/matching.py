"""Hungarian matching inside the jitted step: Mask2Former's costs, padding that never matches, no gradient.

The solver is chosen per platform by `jax.lax.platform_dependent` at lowering, so one function serves every
platform [default: DaTaSeg says "bipartite matching", Mask2Former's matcher.py uses scipy on the CPU]:
- CPU and GPU (CUDA, ROCm): `ops.assignment.scipy_match`, a `pure_callback` into scipy's `linear_sum_assignment`
  on the host, which solves a batch's matrices on as many threads as the process has cores (scipy releases the
  GIL). On the CPU the costs are already in host memory; on a GPU the L x B cost matrices of a step
  (10 x 16 x 100 x 100 float32: 6 MB) cross PCIe in about a millisecond, against 57 ms for an on-device solver
  (optax's) and 7 ms for scipy at B=16, Q=100, N=100 on an H200 (docs/bench/gpu_h200_step.json): a while_loop
  solver takes hundreds of sequential steps of a few microseconds each, which scipy's C loop beats.
- TPU (and any other platform): `ops.assignment.device_match` (`shortest_augmenting_paths`), exact, a `while_loop`
  of vector steps that jits and vmaps, on the device.
Costs are built by `criterion.py` from the pairwise terms of `mask_losses.py` and `box_projection.py`.
"""
import jax
import jax.numpy as jnp

from dataseg_jax.ops import assignment


def class_cost(log_probs: jax.Array, target_class: jax.Array) -> jax.Array:
  """Mask2Former's class cost -p_q(c_n) [default: Mask2Former matcher.py].

  Args:
    log_probs: [Q, C + 1] log class probabilities of the (merged) predictions.
    target_class: [N] int class id of each target.

  Returns:
    [Q, N] cost: a matmul with the targets' one-hot classes (exact at full precision; no gather).
  """
  onehot = (target_class[:, None] == jnp.arange(log_probs.shape[-1])[None, :]).astype(jnp.float32)
  return -jnp.matmul(jnp.exp(log_probs.astype(jnp.float32)), onehot.T, precision=jax.lax.Precision.HIGHEST)


HOST_SOLVER_PLATFORMS = ("cpu", "cuda", "rocm")  # scipy on the host (module docstring); elsewhere the device solver
COST_LIMIT = 1e30  # |real cost| clip: float32 then holds (N + 2)(N + 1) times their range (2e30) for N up to ~1e4


def assignment_cost(cost: jax.Array, row_active: jax.Array, col_valid: jax.Array,
                    inactive_fallback: bool = False) -> jax.Array:
  """The matrix handed to the Hungarian solver: padding made harmless, non-finite entries made huge.

  Padded targets (`col_valid` false) get a constant column (0): a constant column changes every
  assignment's total by the same amount, so it never changes which real pairs are chosen, and the
  pairs it receives are dropped by the caller. Real targets are matched lexicographically: first as few
  unusable pairs as possible, then as few inactive predictions as possible, then the least real cost. With
  `inactive_fallback` an inactive prediction (a merged-away proposal, see merge.py) is usable at its own cost
  plus a penalty B larger than any difference the real entries can make (N + 1 times their range, plus one),
  so a real target takes one only when there are fewer active predictions than real targets, and then the one
  that fits it best [ours: every segment gets a loss]; without it, inactive predictions are unusable and such a
  target gets no loss (`config.loss.match_leftover=False`). Unusable entries (those, and NaN or inf, as
  Mask2Former's matcher does with `nan_to_num` [default]) cost more than any usable assignment: N + 2 times B
  above the largest real cost.

  Args:
    cost: [Q, N] real costs.
    row_active: [Q] bool.
    col_valid: [N] bool.
    inactive_fallback: whether inactive predictions may take targets left over (config.loss.match_leftover).

  Returns:
    [Q, N] float32 cost for `hungarian_match`.
  """
  cost = cost.astype(jnp.float32)
  n = cost.shape[1]
  rows = row_active | inactive_fallback
  usable = rows[:, None] & col_valid[None, :] & jnp.isfinite(cost)
  cost = jnp.clip(cost, -COST_LIMIT, COST_LIMIT)  # finite but huge (a diverging run): the penalties must stay finite
  hi = jnp.max(jnp.where(usable, cost, -jnp.inf), initial=-jnp.inf)
  lo = jnp.min(jnp.where(usable, cost, jnp.inf), initial=jnp.inf)
  span = jnp.where(jnp.isfinite(hi - lo), hi - lo, 0.0)
  hi = jnp.where(jnp.isfinite(hi), hi, 0.0)
  penalty = (span + 1.0) * (n + 1)
  cost = jnp.where(usable, cost + jnp.where(row_active, 0.0, penalty)[:, None], hi + penalty * (n + 2))
  return jnp.where(col_valid[None, :], cost, 0.0)


def hungarian_match(cost: jax.Array) -> jax.Array:
  """Optimal one-to-one assignment of N targets to Q >= N predictions, without gradient.

  Args:
    cost: [Q, N] finite costs (see `assignment_cost`).

  Returns:
    [N] int32: the prediction matched to each target. Minimises sum_n cost[match[n], n]
    (checked against scipy.optimize.linear_sum_assignment in tests/test_losses_matching.py).
  """
  q, n = cost.shape
  if n > q:
    raise ValueError(f"hungarian_match: {n} targets cannot be matched one-to-one to {q} predictions; "
                     "config.validate refuses data.max_segments > model.num_queries")
  if n == 0:
    return jnp.zeros((0,), jnp.int32)
  cost = jax.lax.stop_gradient(cost)
  match = jax.lax.platform_dependent(cost, **{p: assignment.scipy_match for p in HOST_SOLVER_PLATFORMS},
                                     default=assignment.device_match)
  return jax.lax.stop_gradient(match)


def hungarian_match_batch(cost: jax.Array) -> jax.Array:
  """`hungarian_match` vmapped: [B, Q, N] costs -> [B, N] matched prediction per target."""
  return jax.vmap(hungarian_match)(cost)
