"""`layers.ConvSame` against flax's nn.Conv: the same parameter, output and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.models import layers


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_conv_same_equals_flax_conv_with_gradients(kernel_size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 6)), jnp.float32)
  init = nn.initializers.lecun_normal()
  ours = layers.ConvSame(5, init, kernel_size=kernel_size)
  ref = nn.Conv(5, (kernel_size, kernel_size), padding=kernel_size // 2, use_bias=False, kernel_init=init)
  params = ours.init(jax.random.key(1), x)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref.init(jax.random.key(1), x))
  cot = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), jnp.float32)

  def loss(module):
    return jax.jit(jax.value_and_grad(lambda p, v: jnp.sum(module.apply(p, v) * cot), argnums=(0, 1)))(params, x)

  (out, (gp, gx)), (ref_out, (ref_gp, ref_gx)) = loss(ours), loss(ref)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gp["params"]["kernel"], ref_gp["params"]["kernel"], rtol=1e-5, atol=1e-5)
