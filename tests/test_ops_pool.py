"""ops/pool: `max_pool` against `max_pool_reference` (nn.max_pool) with gradients, and PyTorch's tie rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.ops import pool


@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (1, 8, 8, 2)])
def test_max_pool_equals_flax_max_pool_with_gradients(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)  # no ties
  ref = lambda v: pool.max_pool_reference(v, 3, 2, 1)  # noqa: E731
  out = pool.max_pool(x, 3, 2, 1)
  np.testing.assert_array_equal(out, ref(x))
  cot = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(pool.max_pool(v, 3, 2, 1) * cot)))(x)
  np.testing.assert_allclose(grad, jax.grad(lambda v: jnp.sum(ref(v) * cot))(x), rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_as_pytorch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  x = np.maximum(np.round(rng.normal(size=(2, 10, 9, 3))), 0).astype(np.float32)  # post-ReLU: many ties
  cot = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(pool.max_pool(v, 3, 2, 1) * cot))(jnp.asarray(x))
  t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  out = torch.nn.functional.max_pool2d(t, 3, 2, 1)
  (out * torch.from_numpy(cot.transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_array_equal(np.asarray(pool.max_pool(jnp.asarray(x), 3, 2, 1)),
                                out.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(grad), t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
