"""ops/ffn: `relu_ffn` against `relu_ffn_reference` under autodiff: value and the gradients of all five arguments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.ops import ffn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_ffn_equals_reference_with_gradients(dtype):
  rng = np.random.default_rng(0)
  shapes = [(2, 7, 5), (5, 12), (12,), (12, 5), (5,)]  # x, w1, b1, w2, b2
  args = [jnp.asarray(rng.normal(size=s), dtype) for s in shapes]  # about half the hidden units inactive
  cot = jnp.asarray(rng.normal(size=shapes[0]), dtype)

  def value_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum((fn(*a) * cot).astype(jnp.float32)), argnums=range(5)))(
        *args)

  (out, grads), (ref_out, ref_grads) = value_and_grads(ffn.relu_ffn), value_and_grads(ffn.relu_ffn_reference)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bfloat16: sums rounded in another order, to 2 % of their scale
  np.testing.assert_allclose(out, ref_out, rtol=tol)
  for name, g, r in zip(("x", "w1", "b1", "w2", "b2"), grads, ref_grads):
    assert g.dtype == r.dtype, name
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max(), err_msg=name)
