"""ops/conv: `conv_same` against `conv_same_reference` (XLA's convolution under autodiff), value and gradients, and
the kernel gradient by taps against the convolution's own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.ops import conv


def _inputs(kernel_size, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 6, 5)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), jnp.float32)
  return x, kernel, cot


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_conv_same_equals_reference_with_gradients(kernel_size):
  x, kernel, cot = _inputs(kernel_size)

  def value_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda v, k: jnp.sum(fn(v, k) * cot), argnums=(0, 1)))(x, kernel)

  (out, (gx, gk)), (ref_out, (ref_gx, ref_gk)) = value_and_grads(conv.conv_same), value_and_grads(
      conv.conv_same_reference)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(gx, ref_gx)
  np.testing.assert_allclose(gk, ref_gk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_kernel_grad_by_taps_equals_the_convolutions_kernel_gradient(kernel_size):
  """The CPU's kernel gradient, called directly (on any platform), against autodiff of the reference."""
  x, kernel, cot = _inputs(kernel_size, seed=1)
  got = jax.jit(conv.kernel_grad_by_taps)(x, kernel, cot)
  ref = jax.vjp(lambda k: conv.conv_same_reference(x, k), kernel)[1](cot)[0]
  assert got.shape == kernel.shape and got.dtype == kernel.dtype
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
