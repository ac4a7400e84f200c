"""Layers that call ops/ kernels against the Flax layers they stand for: `ConvSame` against nn.Conv,
`relu_ffn_layers` against two nn.Dense layers.

The same parameters, outputs and gradients."""
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


class _TwoDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = layers.dense(12, ("embed", "mlp"), name="linear1")(x)
    return layers.dense(x.shape[-1], ("mlp", "embed"), name="linear2")(nn.relu(y))


class _ReluFFN(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return layers.relu_ffn_layers(x, 12, self.dtype)


def test_relu_ffn_layers_equal_two_dense_layers_with_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 5)), jnp.float32)
  ref_params = _TwoDense().init(jax.random.key(1), x)
  params = _ReluFFN().init(jax.random.key(1), x)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref_params)  # checkpoints load either way
  assert nn.get_partition_spec(params) == nn.get_partition_spec(ref_params)
  params = jax.tree.map(lambda a: a + 0.1, ref_params)  # non-zero biases, and some hidden units inactive
  cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def grads(module):
    return jax.jit(jax.value_and_grad(lambda p, v: jnp.sum(module.apply(p, v) * cot), argnums=(0, 1)))(params, x)

  (out, (gp, gx)), (ref_out, (ref_gp, ref_gx)) = grads(_ReluFFN()), grads(_TwoDense())
  np.testing.assert_allclose(out, ref_out, rtol=1e-5)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(ref_gp)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  out16 = _ReluFFN(jnp.bfloat16).apply(params, x)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), _TwoDense().apply(params, x), rtol=0.05, atol=0.05)
