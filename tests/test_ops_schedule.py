"""ops/schedule: `after(x, *deps)` is x, bit for bit, whatever the dependencies hold (NaN and inf included)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.ops import schedule


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_after_returns_x_unchanged(dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 4)) * 1e30, dtype)
  deps = (jnp.full((2, 2), jnp.nan), jnp.asarray([jnp.inf, 1.0]), jnp.arange(5, dtype=jnp.int32))
  np.testing.assert_array_equal(np.asarray(jax.jit(schedule.after)(x, *deps), np.float32), np.asarray(x, np.float32))
  assert schedule.after(x, *deps).dtype == dtype
  np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(schedule.after(v, deps[0])))(jnp.ones(3)), np.ones(3))
