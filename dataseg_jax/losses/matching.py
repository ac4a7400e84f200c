"""Hungarian matching on device: Mask2Former's costs, padding that never matches, no gradient.

On accelerators the assignment is `optax.assignment.hungarian_algorithm` (exact, cubic, a `while_loop`
that jits and vmaps), run per example inside the jitted step instead of scipy on the host [default:
DaTaSeg says "bipartite matching", Mask2Former's matcher.py uses scipy on the CPU]. When the step is
compiled for the CPU, where device memory is host memory, the same call lowers to a `pure_callback` into
scipy's `linear_sum_assignment` (the while-loop solver is ~10x slower than scipy there), which solves a
batch's matrices on as many threads as the process has cores (scipy releases the GIL); the choice is
made by `jax.lax.platform_dependent` at lowering, so one function serves every platform. Costs are built by
`criterion.py` from the pairwise terms of `mask_losses.py` and `box_projection.py`.
"""
import concurrent.futures
import functools
import os

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


def _scipy_solve(flat: np.ndarray, out: np.ndarray, part: slice) -> None:
  """Writes scipy's assignment of each matrix flat[part] [K, Q, N] into out[part] [K, N]."""
  for i in range(part.start, part.stop):
    rows, cols = optimize.linear_sum_assignment(flat[i])
    out[i, cols] = rows


_HOST_CORES = len(os.sched_getaffinity(0))


@functools.cache
def _host_pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(_HOST_CORES, thread_name_prefix="lsap")


def _scipy_match_host(cost: np.ndarray) -> np.ndarray:
  """[..., Q, N] -> [..., N]: scipy's linear_sum_assignment per matrix (the CPU path's callback), the
  matrices split into one contiguous share per core of the process."""
  cost = np.asarray(cost, np.float64)
  flat = cost.reshape(-1, *cost.shape[-2:])
  out = np.full((flat.shape[0], cost.shape[-1]), -1, np.int32)
  shares = min(len(flat), _HOST_CORES)
  bounds = np.linspace(0, len(flat), shares + 1).astype(int)
  parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
  if shares > 1:
    list(_host_pool().map(functools.partial(_scipy_solve, flat, out), parts))
  else:
    _scipy_solve(flat, out, slice(0, len(flat)))
  return out.reshape(*cost.shape[:-2], cost.shape[-1])


def _scipy_match(cost: jax.Array) -> jax.Array:
  """[Q, N] -> [N] through a `pure_callback` to scipy; vmaps by handing scipy the whole batch at once."""
  shape = jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32)
  return jax.pure_callback(_scipy_match_host, shape, cost, vmap_method="expand_dims")


def hungarian_match_batch(cost: jax.Array) -> jax.Array:
  """`hungarian_match` vmapped: [B, Q, N] costs -> [B, N] matched prediction per target."""
  return jax.vmap(hungarian_match)(cost)
