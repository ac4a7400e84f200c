"""On-device Hungarian matching against scipy.optimize.linear_sum_assignment."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dataseg_jax import config as config_lib
from dataseg_jax.losses import matching

SHAPES = [(1, 1), (5, 1), (5, 5), (7, 3), (12, 12), (20, 7), (33, 17), (100, 100), (100, 23)]


@pytest.mark.parametrize("q,n", SHAPES)
def test_matching_total_cost_equals_scipy(q, n, rng):
  for dist in ("normal", "integer"):
    cost = rng.normal(size=(q, n)) if dist == "normal" else rng.integers(0, 5, (q, n)).astype(float)
    cost = cost.astype(np.float32)
    match = np.asarray(jax.jit(matching.hungarian_match)(jnp.asarray(cost)))
    assert sorted(set(match.tolist())) == sorted(match.tolist()), "a prediction was matched twice"
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_allclose(cost[match, np.arange(n)].sum(), cost[rows, cols].sum(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("q,n", SHAPES)
def test_accelerator_path_total_cost_equals_scipy(q, n, rng):
  """The optax solver that accelerators lower to (the CPU lowers to scipy itself), run here under jit + vmap."""
  cost = np.stack([rng.normal(size=(q, n)), rng.integers(0, 5, (q, n))]).astype(np.float32)
  match = np.asarray(jax.jit(jax.vmap(matching._optax_match))(jnp.asarray(cost)))
  for c, m in zip(cost, match):
    assert len(set(m.tolist())) == n, "a prediction was matched twice"
    rows, cols = linear_sum_assignment(c)
    np.testing.assert_allclose(c[m, np.arange(n)].sum(), c[rows, cols].sum(), rtol=1e-5, atol=1e-4)


def test_matching_batch_vmapped_equals_scipy_per_example(rng):
  cost = rng.normal(size=(6, 10, 4)).astype(np.float32)
  match = np.asarray(jax.jit(matching.hungarian_match_batch)(jnp.asarray(cost)))
  for b in range(6):
    rows, cols = linear_sum_assignment(cost[b])
    np.testing.assert_allclose(cost[b][match[b], np.arange(4)].sum(), cost[b][rows, cols].sum(), rtol=1e-5)


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
def test_host_solver_splits_the_batch_over_cores_without_changing_it(cores, rng, monkeypatch):
  """The CPU path's callback gives, on any number of threads, exactly scipy's assignment of every matrix."""
  monkeypatch.setattr(matching, "_HOST_CORES", cores)
  cost = rng.normal(size=(5, 2, 9, 4)).astype(np.float32)
  got = matching._scipy_match_host(cost)
  assert got.shape == (5, 2, 4) and got.dtype == np.int32
  for idx in np.ndindex(5, 2):
    rows, cols = linear_sum_assignment(cost[idx].astype(np.float64))
    np.testing.assert_array_equal(got[idx][cols], rows)


def test_matching_zero_targets():
  assert matching.hungarian_match(jnp.zeros((5, 0))).shape == (0,)


@pytest.mark.parametrize("num_valid,num_active", [(0, 8), (3, 8), (6, 8), (6, 4), (6, 0)])
def test_padded_targets_and_inactive_predictions_never_take_real_pairs(num_valid, num_active, rng):
  """Real pairs are optimal on the (active x valid) submatrix, as many as possible, as scipy finds."""
  q, n = 8, 6
  cost = (rng.normal(size=(q, n)) * 3).astype(np.float32)
  active = np.zeros(q, bool)
  active[rng.permutation(q)[:num_active]] = True
  valid = np.zeros(n, bool)
  valid[rng.permutation(n)[:num_valid]] = True
  cost_in = cost.copy()
  cost_in[~active] = np.nan  # inactive rows may hold anything
  a = matching.assignment_cost(jnp.asarray(cost_in), jnp.asarray(active), jnp.asarray(valid))
  match = np.asarray(matching.hungarian_match(a))
  real = valid & active[match]
  assert real.sum() == min(num_valid, num_active)
  sub = cost[np.ix_(active, valid)]
  if sub.size:
    rows, cols = linear_sum_assignment(sub)
    np.testing.assert_allclose(cost[match[real], np.nonzero(real)[0]].sum(), sub[rows, cols].sum(), rtol=1e-5)


def test_gradient_flows_to_matched_costs_not_through_the_assignment(rng):
  cost = jnp.asarray(rng.normal(size=(5, 3)).astype(np.float32))
  match = matching.hungarian_match(cost)
  g = np.asarray(jax.grad(lambda c: jnp.sum(c[matching.hungarian_match(c), jnp.arange(3)]))(cost))
  expected = np.zeros((5, 3), np.float32)
  expected[np.asarray(match), np.arange(3)] = 1.0
  np.testing.assert_array_equal(g, expected)


def test_more_targets_than_queries_is_refused_at_config_time():
  c = config_lib.base_config()
  c.data.max_segments = c.model.num_queries + 1
  with pytest.raises(ValueError, match="max_segments"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="cannot be matched"):
    matching.hungarian_match(jnp.zeros((3, 4)))
