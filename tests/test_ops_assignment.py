"""ops/assignment: the host solver (scipy on the process's cores, through a callback) and the on-device solver
(`shortest_augmenting_paths`) reach scipy.optimize.linear_sum_assignment's total cost."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dataseg_jax.ops import assignment

SHAPES = [(1, 1), (5, 1), (5, 5), (7, 3), (12, 12), (20, 7), (33, 17), (100, 100), (100, 23)]


@pytest.mark.parametrize("q,n", SHAPES)
def test_accelerator_path_total_cost_equals_scipy(q, n, rng):
  """The on-device solver that accelerators lower to (the CPU lowers to scipy itself), run here under jit + vmap."""
  cost = np.stack([rng.normal(size=(q, n)), rng.integers(0, 5, (q, n))]).astype(np.float32)
  match = np.asarray(jax.jit(jax.vmap(assignment.device_match))(jnp.asarray(cost)))
  for c, m in zip(cost, match):
    assert len(set(m.tolist())) == n, "a prediction was matched twice"
    rows, cols = linear_sum_assignment(c)
    np.testing.assert_allclose(c[m, np.arange(n)].sum(), c[rows, cols].sum(), rtol=1e-5, atol=1e-4)


def test_device_solver_on_hard_cases_equals_scipy(rng):
  """Shortest augmenting paths against scipy on 200 random problems: ties (few cost levels), constant rows
  (padded targets) among real ones, wide and square shapes, large offsets; one jitted vmap per shape."""
  for n, m in [(1, 1), (4, 4), (9, 30), (30, 30), (50, 100)]:
    cost = np.where(rng.random((40, n, m)) < 0.5, rng.integers(0, 3, (40, n, m)), rng.normal(size=(40, n, m)))
    cost[rng.random((40, n)) < 0.3] = rng.normal()  # constant rows
    cost = (cost + rng.normal(size=(40, 1, 1)) * 1e3).astype(np.float32)
    cols = np.asarray(jax.jit(jax.vmap(assignment.shortest_augmenting_paths))(jnp.asarray(cost)))
    for c, col in zip(cost, cols):
      assert len(set(col.tolist())) == n and col.min() >= 0 and col.max() < m
      rows, best = linear_sum_assignment(c.astype(np.float64))
      np.testing.assert_allclose(c[np.arange(n), col].sum(), c[rows, best].sum(), rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
def test_host_solver_splits_the_batch_over_cores_without_changing_it(cores, rng, monkeypatch):
  """The CPU path's callback, on any number of threads, gives scipy's optimum on every matrix's real columns
  and a one-to-one assignment, constant (padded) columns included."""
  monkeypatch.setattr(assignment, "HOST_CORES", cores)
  monkeypatch.setattr(assignment, "COLUMNS_PER_THREAD", 1)
  cost = rng.normal(size=(5, 2, 9, 4)).astype(np.float32)
  cost[:3, :, :, 1] = 0.5  # padded targets
  cost[0, 0] = 0.0  # all padded
  got = assignment.scipy_match_host(cost)
  assert got.shape == (5, 2, 4) and got.dtype == np.int32
  for idx in np.ndindex(5, 2):
    c, m = cost[idx], got[idx]
    assert len(set(m.tolist())) == 4 and m.min() >= 0
    real = np.flatnonzero(c.max(0) != c.min(0))
    rows, cols = linear_sum_assignment(c[:, real].astype(np.float64))
    np.testing.assert_allclose(c[m[real], real].sum(), c[:, real][rows, cols].sum(), rtol=1e-6)


def test_scipy_callback_vmapped_under_jit_equals_scipy(rng):
  cost = rng.normal(size=(3, 4, 12, 7)).astype(np.float32)
  match = np.asarray(jax.jit(jax.vmap(jax.vmap(assignment.scipy_match)))(jnp.asarray(cost)))
  assert match.shape == (3, 4, 7) and match.dtype == np.int32
  for c, m in zip(cost.reshape(-1, 12, 7), match.reshape(-1, 7)):
    rows, cols = linear_sum_assignment(c)
    np.testing.assert_allclose(c[m, np.arange(7)].sum(), c[rows, cols].sum(), rtol=1e-6)
