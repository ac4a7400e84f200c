"""`relu_ffn`: relu(x w1 + b1) w2 + b2 with a hand-written backward; reference: `relu_ffn_reference` under autodiff.

Measured reason: with `pool.max_pool`, R50 512 px train-step temporaries 2.78 -> 2.53 GiB (docs/scaling.md): autodiff
kept two hidden-size residuals and deferred the weight gradients, 4 x 44 MB a pixel-decoder layer.
"""
import jax
import jax.numpy as jnp

from dataseg_jax.ops.schedule import after


def relu_ffn_reference(x: jnp.ndarray, w1: jnp.ndarray, b1: jnp.ndarray, w2: jnp.ndarray,
                       b2: jnp.ndarray) -> jnp.ndarray:
  """relu(x w1 + b1) w2 + b2 over the last axis of x."""
  return jnp.maximum(x @ w1 + b1, 0) @ w2 + b2


@jax.custom_vjp
def relu_ffn(x: jnp.ndarray, w1: jnp.ndarray, b1: jnp.ndarray, w2: jnp.ndarray, b2: jnp.ndarray) -> jnp.ndarray:
  """relu(x w1 + b1) w2 + b2 over the last axis of x, with a backward pass that keeps one hidden-size
  residual and computes the parameter gradients before the input gradient (`after`).

  Under autodiff XLA-CPU kept both x w1 and relu(x w1 + b1) (its fusion recomputed the ReLU mask from the
  former), and its scheduler deferred the weight gradients to the end of the step, holding the hidden
  activations and their cotangents: 4 x 44 MB per pixel-decoder layer for R50 at 512 px. Here the forward
  keeps z = x w1 only, and the backward rebuilds h = a [a > 0], a = z + b1 (written unlike the forward's
  maximum, so that common-subexpression elimination does not keep the forward's h alive instead).
  """
  return _relu_ffn_fwd(x, w1, b1, w2, b2)[0]


def _relu_ffn_fwd(x, w1, b1, w2, b2):
  z = x @ w1
  return jnp.maximum(z + b1, 0) @ w2 + b2, (x, w1, b1, w2, z)


def _relu_ffn_bwd(residuals, g):
  x, w1, b1, w2, z = residuals
  flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
  xf, zf, gf = flat(x), flat(z), flat(g)
  active = zf + b1 > 0
  h = (zf + b1) * active
  dw2, db2 = h.T @ gf, gf.sum(0)
  gh = jnp.where(active, gf @ w2.T, 0).astype(gf.dtype)
  dw1, db1 = xf.T @ gh, gh.sum(0)
  dx = after(gh @ w1.T, dw1, db1, dw2, db2)
  return dx.reshape(x.shape), dw1, db1, dw2, db2


relu_ffn.defvjp(_relu_ffn_fwd, _relu_ffn_bwd)
