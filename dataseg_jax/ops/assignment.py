"""Linear assignment solvers for the Hungarian matching (`losses/matching.py` picks one per platform); reference:
`scipy.optimize.linear_sum_assignment` on each matrix, whose total cost every solver must reach.

- `scipy_match` / `scipy_match_host`: scipy on the host through a `pure_callback`, a batch's matrices split over the
  process's cores (scipy releases the GIL) and padded (constant) columns left out of scipy's problem.
- `device_match` / `shortest_augmenting_paths`: the same algorithm as a `while_loop` of vector steps on the device.

Measured reasons (docs/scaling.md, docs/bench/cpu_2core.json, docs/bench/gpu_h200_step.json): at B=16, Q=N=100 the
callback takes 3.1 ms on this 2-core CPU against 4.2 ms for a scipy loop; on an H200 a `while_loop` solver (optax's)
took 57 ms against 7 ms for scipy on the host; `shortest_augmenting_paths` takes 15 ms dense and 1.2 ms with 20 of
100 targets real under jit on the CPU (2026-12-06), where optax's solver took 27 and 71 ms (2026-11-30).
"""
import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from dataseg_jax import hardware


def device_match(cost: jax.Array) -> jax.Array:
  """[Q, N] -> [N] with `shortest_augmenting_paths` on the targets' rows: `matching.hungarian_match`'s solver outside
  `matching.HOST_SOLVER_PLATFORMS`, callable on any platform (the tests and benchmarks/bench_losses.py time it on
  the CPU)."""
  return shortest_augmenting_paths(cost.T)


def shortest_augmenting_paths(cost: jax.Array) -> jax.Array:
  """Exact linear assignment of n rows to m >= n columns on device: [n, m] -> [n] column of each row.

  The shortest augmenting path algorithm that scipy's linear_sum_assignment implements (Crouse 2016,
  "On implementing 2D rectangular assignment algorithms", Algorithm 1), with each Dijkstra step one vector
  operation over the m columns (optax's version loops over them one at a time): with duals u [n], v [m]
  (u_i + v_j <= C_ij, tight on assigned pairs), a free row is inserted by growing a shortest-path tree over
  reduced costs C_ij - u_i - v_j, one column a step, until a free column is reached; the duals are then
  updated and the path's assignments flipped (`_augment`). All searches run in one `while_loop` of such
  steps, so under vmap a batch takes as many steps as its hardest problem (730 for 16 random dense
  100 x 100 matrices, 550 on average; 10 when 20 of the 100 targets are real and the rest padding).

  Two starts that keep it exact and cut the steps: row reduction (u_i = min_j C_ij, v = 0, and each column
  given to the first row whose minimum it is, as Jonker-Volgenant's initialisation), and constant rows (a
  padded target's) set aside: a row whose costs are all equal adds the same to every assignment, so it takes
  any column the others leave, after them, at no search.
  """
  n, m = cost.shape
  if n == 0:
    return jnp.zeros((0,), jnp.int32)
  cost = cost.astype(jnp.float32)
  rows = jnp.arange(n)
  constant = jnp.max(cost, axis=1) == jnp.min(cost, axis=1)
  u = jnp.min(cost, axis=1)
  best = jnp.argmin(cost, axis=1)
  claim = jnp.full((m,), n).at[best].min(jnp.where(constant, n, rows))
  col4row = jnp.where(claim[best] == rows, best, -1)
  row4col = jnp.where(claim < n, claim, -1)
  v = jnp.zeros((m,), jnp.float32)

  def search_from_next_free_row(col4row):
    """A new shortest-path tree rooted at the first free non-constant row (`root` n when none is left)."""
    free = (col4row < 0) & ~constant
    root = jnp.where(jnp.any(free), jnp.argmax(free), n)
    return {"root": root, "row": root, "dist": jnp.float32(0), "spc": jnp.full((m,), jnp.inf, jnp.float32),
            "path": jnp.full((m,), -1), "scanned_col": jnp.zeros((m,), bool), "scanned_row": jnp.zeros((n,), bool)}

  def step(carry):
    """One Dijkstra step: relax the row's edges, scan the nearest column; augment if it is free."""
    tree, u, v, row4col, col4row, steps = carry
    i, root = tree["row"], tree["root"]
    scanned_row = tree["scanned_row"].at[i].set(True)
    reduced = tree["dist"] + cost[i] - u[i] - v
    better = ~tree["scanned_col"] & (reduced < tree["spc"])
    path = jnp.where(better, i, tree["path"])
    spc = jnp.where(better, reduced, tree["spc"])
    key = jnp.where(tree["scanned_col"], jnp.inf, spc)
    lowest = jnp.min(key)
    nearest = key == lowest
    free_tie = nearest & (row4col < 0)  # among equally near columns, a free one ends the search
    j = jnp.where(jnp.any(free_tie), jnp.argmax(free_tie), jnp.argmax(nearest))
    scanned_col = tree["scanned_col"].at[j].set(True)
    found = (row4col[j] < 0) & (root < n)  # a finished problem (under vmap) changes nothing
    grown = {"root": root, "row": row4col[j], "dist": lowest, "spc": spc, "path": path,
             "scanned_col": scanned_col, "scanned_row": scanned_row}
    # Crouse's dual update: the root gains the path length, scanned rows and columns the slack they used.
    u_new = jnp.where(scanned_row & (rows != root), u + lowest - spc[jnp.maximum(col4row, 0)], u)
    u_new = u_new.at[root].add(lowest)
    v_new = jnp.where(scanned_col, v - (lowest - spc), v)
    r4c, c4r = _augment(row4col, col4row, path, jnp.where(found, j, -1))
    pick = functools.partial(jnp.where, found)
    tree = jax.tree.map(pick, search_from_next_free_row(c4r), grown)
    return tree, pick(u_new, u), pick(v_new, v), pick(r4c, row4col), pick(c4r, col4row), steps + 1

  # Each search scans at most m columns, so n * m steps bound the loop whatever the input (NaN included).
  carry = (search_from_next_free_row(col4row), u, v, row4col, col4row, 0)
  _, _, _, row4col, col4row, _ = jax.lax.while_loop(lambda c: (c[0]["root"] < n) & (c[5] < n * m), step, carry)
  # Constant rows take the columns left free, in order.
  left = jnp.argsort(row4col >= 0, stable=True)  # free columns first
  return jnp.where(constant, left[jnp.maximum(jnp.cumsum(constant) - 1, 0)], col4row).astype(jnp.int32)


def _augment(row4col: jax.Array, col4row: jax.Array, path: jax.Array, sink: jax.Array):
  """Flips the assignments along the tree path ending at column `sink` (no-op for sink -1): each column on
  it takes its predecessor row, whose former column is the next one back, until the root (no column)."""
  n = col4row.shape[0]

  def back(c):
    row4col, col4row, j = c
    i = path[j]
    return (row4col.at[j].set(i), col4row.at[jnp.where(i >= 0, i, n)].set(j, mode="drop"),
            jnp.where(i >= 0, col4row[i], -1))

  row4col, col4row, _ = jax.lax.while_loop(lambda c: c[2] >= 0, back, (row4col, col4row, sink))
  return row4col, col4row


def _scipy_solve(flat: np.ndarray, real: np.ndarray, out: np.ndarray, part: slice) -> None:
  """Writes scipy's assignment of each matrix flat[part] [K, Q, N] into out[part] [K, N].

  Constant columns (`real` false: padded targets) are left out of scipy's problem and take the rows left
  over, in order, as `shortest_augmenting_paths` does: a constant column adds the same to every assignment.
  """
  for i in range(part.start, part.stop):
    cols = np.flatnonzero(real[i])
    rows, picked = optimize.linear_sum_assignment(flat[i] if len(cols) == len(real[i]) else flat[i][:, cols])
    out[i, cols[picked]] = rows
    if len(cols) < len(real[i]):
      free = np.ones(flat.shape[1], bool)
      free[rows] = False
      out[i, ~real[i]] = np.flatnonzero(free)[:len(real[i]) - len(cols)]


HOST_CORES = hardware.host_cores()  # the threads of the host solver's pool


@functools.cache
def _host_pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(HOST_CORES, thread_name_prefix="lsap")


# A thread takes a share of the batch only for this many real columns (at Q = 100 about 0.5 ms of scipy's work,
# against about 0.1 ms to hand work to a thread and wait for it).
COLUMNS_PER_THREAD = 256


def scipy_match_host(cost: np.ndarray) -> np.ndarray:
  """[..., Q, N] -> [..., N]: scipy's linear_sum_assignment per matrix (the CPU path's callback), the
  matrices split into one contiguous share per core of the process when there is enough work."""
  cost = np.asarray(cost)
  flat = cost.reshape(-1, *cost.shape[-2:])
  real = flat.max(axis=1) != flat.min(axis=1)
  out = np.full((flat.shape[0], cost.shape[-1]), -1, np.int32)
  shares = int(np.clip(real.sum() // COLUMNS_PER_THREAD, 1, min(len(flat), HOST_CORES)))
  bounds = np.linspace(0, len(flat), shares + 1).astype(int)
  parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
  if shares > 1:
    list(_host_pool().map(functools.partial(_scipy_solve, flat, real, out), parts))
  else:
    _scipy_solve(flat, real, out, slice(0, len(flat)))
  return out.reshape(*cost.shape[:-2], cost.shape[-1])


def scipy_match(cost: jax.Array) -> jax.Array:
  """[Q, N] -> [N] through a `pure_callback` to `scipy_match_host`; vmaps by handing scipy the whole batch at once.
  `matching.hungarian_match`'s solver on `matching.HOST_SOLVER_PLATFORMS`."""
  shape = jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32)
  return jax.pure_callback(scipy_match_host, shape, cost, vmap_method="expand_dims")
