"""Hungarian matching (costs, padding, the per-platform solver) against scipy.optimize.linear_sum_assignment."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dataseg_jax import config as config_lib
from dataseg_jax.losses import matching
from dataseg_jax.ops import assignment

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


def test_matching_batch_vmapped_equals_scipy_per_example(rng):
  cost = rng.normal(size=(6, 10, 4)).astype(np.float32)
  match = np.asarray(jax.jit(matching.hungarian_match_batch)(jnp.asarray(cost)))
  for b in range(6):
    rows, cols = linear_sum_assignment(cost[b])
    np.testing.assert_allclose(cost[b][match[b], np.arange(4)].sum(), cost[b][rows, cols].sum(), rtol=1e-5)


def test_matching_zero_targets():
  assert matching.hungarian_match(jnp.zeros((5, 0))).shape == (0,)


@pytest.mark.parametrize("solver", ["platform", "device"])
@pytest.mark.parametrize("num_valid,num_active", [(0, 8), (3, 8), (6, 8), (6, 4), (6, 0)])
def test_padded_targets_and_inactive_predictions_never_take_real_pairs(num_valid, num_active, solver, rng):
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
  match = np.asarray(matching.hungarian_match(a) if solver == "platform" else jax.jit(assignment.device_match)(a))
  assert len(set(match.tolist())) == n, "a prediction was matched twice"
  real = valid & active[match]
  assert real.sum() == min(num_valid, num_active)
  sub = cost[np.ix_(active, valid)]
  if sub.size:
    rows, cols = linear_sum_assignment(sub)
    np.testing.assert_allclose(cost[match[real], np.nonzero(real)[0]].sum(), sub[rows, cols].sum(), rtol=1e-5)


@pytest.mark.parametrize("solver", ["platform", "device"])
def test_finite_but_huge_costs_of_a_diverging_run_still_match_every_target(solver, rng):
  """Costs near float32's limit (mask logits of 1e36 while diverging) with fewer active predictions than targets:
  the padding value must stay finite, else the problem turns infeasible (scipy raises; the device solver
  returns -1)."""
  q, n = 10, 10
  cost = (rng.normal(size=(q, n)) * 3e37).astype(np.float32)
  active = np.arange(q) < 5
  a = matching.assignment_cost(jnp.asarray(cost), jnp.asarray(active), jnp.ones(n, bool))
  assert np.isfinite(np.asarray(a)).all()
  match = np.asarray(matching.hungarian_match(a) if solver == "platform" else jax.jit(assignment.device_match)(a))
  assert sorted(match.tolist()) == list(range(q)) and active[match].sum() == 5


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


def test_the_solver_is_chosen_per_platform_scipy_on_the_host_for_cpu_and_gpu_the_device_solver_on_tpu():
  """Lowered for the CPU the batched match is a host callback; for a TPU a while loop on the device, no callback.
  (A GPU lowering needs a GPU backend: its choice is HOST_SOLVER_PLATFORMS, measured in docs/bench.)"""
  fn = jax.jit(matching.hungarian_match_batch)
  cpu = fn.trace(jnp.zeros((2, 5, 4))).lower(lowering_platforms=("cpu",)).as_text()
  tpu = fn.trace(jnp.zeros((2, 5, 4))).lower(lowering_platforms=("tpu",)).as_text()
  assert "callback" in cpu and "while" not in cpu
  assert "while" in tpu and "callback" not in tpu
  assert {"cpu", "cuda", "rocm"} <= set(matching.HOST_SOLVER_PLATFORMS) and "tpu" not in matching.HOST_SOLVER_PLATFORMS
