"""Hungarian matching on device: Mask2Former's costs, padding that never matches, no gradient.

On accelerators the assignment is `optax.assignment.hungarian_algorithm` (exact, cubic, a `while_loop`
that jits and vmaps), run per example inside the jitted step instead of scipy on the host [default:
DaTaSeg says "bipartite matching", Mask2Former's matcher.py uses scipy on the CPU]. When the step is
compiled for the CPU, where device memory is host memory, the same call lowers to a `pure_callback` into
scipy's `linear_sum_assignment` (the while-loop solver is ~10x slower than scipy there); the choice is
made by `jax.lax.platform_dependent` at lowering, so one function serves every platform. Costs are built by
`criterion.py` from the pairwise terms of `mask_losses.py` and `box_projection.py`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize


def class_cost(log_probs: jax.Array, target_class: jax.Array) -> jax.Array:
  """Mask2Former's class cost -p_q(c_n) [default: Mask2Former matcher.py].

  Args:
    log_probs: [Q, C + 1] log class probabilities of the (merged) predictions.
    target_class: [N] int class id of each target.

  Returns:
    [Q, N] cost.
  """
  return -jnp.exp(jnp.take(log_probs, target_class, axis=1))


def assignment_cost(cost: jax.Array, row_active: jax.Array, col_valid: jax.Array) -> jax.Array:
  """The matrix handed to the Hungarian solver: padding made harmless, non-finite entries made huge.

  Padded targets (`col_valid` false) get a constant column (0): a constant column changes every
  assignment's total by the same amount, so it never changes which real pairs are chosen, and the
  pairs it receives are dropped by the caller. Inactive predictions (a merged-away proposal, see
  merge.py) get, for real targets, a cost larger than any difference the real entries can make
  (N times their range, plus one), so a real target takes an inactive prediction only when there
  are fewer active predictions than real targets. NaN and inf become that same large value, as
  Mask2Former's matcher does with `nan_to_num` [default].

  Args:
    cost: [Q, N] real costs.
    row_active: [Q] bool.
    col_valid: [N] bool.

  Returns:
    [Q, N] float32 cost for `hungarian_match`.
  """
  cost = cost.astype(jnp.float32)
  real = row_active[:, None] & col_valid[None, :] & jnp.isfinite(cost)
  hi = jnp.max(jnp.where(real, cost, -jnp.inf), initial=-jnp.inf)
  lo = jnp.min(jnp.where(real, cost, jnp.inf), initial=jnp.inf)
  span = jnp.where(jnp.isfinite(hi - lo), hi - lo, 0.0)
  hi = jnp.where(jnp.isfinite(hi), hi, 0.0)
  big = hi + (span + 1.0) * (cost.shape[1] + 1)
  cost = jnp.where(real, cost, big)
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
  match = jax.lax.platform_dependent(cost, cpu=_scipy_match, default=_optax_match)
  return jax.lax.stop_gradient(match)


def _optax_match(cost: jax.Array) -> jax.Array:
  """[Q, N] -> [N] with optax's on-device Hungarian algorithm."""
  rows, cols = optax.assignment.hungarian_algorithm(cost)
  return jnp.zeros((cost.shape[1],), jnp.int32).at[cols].set(rows.astype(jnp.int32))


def _scipy_match_host(cost: np.ndarray) -> np.ndarray:
  """[..., Q, N] -> [..., N]: scipy's linear_sum_assignment per matrix (the CPU path's callback)."""
  cost = np.asarray(cost, np.float64)
  flat = cost.reshape(-1, *cost.shape[-2:])
  out = np.empty((flat.shape[0], cost.shape[-1]), np.int32)
  for i, c in enumerate(flat):
    rows, cols = optimize.linear_sum_assignment(c)
    out[i, cols] = rows
  return out.reshape(*cost.shape[:-2], cost.shape[-1])


def _scipy_match(cost: jax.Array) -> jax.Array:
  """[Q, N] -> [N] through a `pure_callback` to scipy; vmaps by handing scipy the whole batch at once."""
  shape = jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32)
  return jax.pure_callback(_scipy_match_host, shape, cost, vmap_method="expand_dims")


def hungarian_match_batch(cost: jax.Array) -> jax.Array:
  """`hungarian_match` vmapped: [B, Q, N] costs -> [B, N] matched prediction per target."""
  return jax.vmap(hungarian_match)(cost)
