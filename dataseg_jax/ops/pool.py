"""`max_pool`: a max pool whose gradient goes through an int8 tap index; reference: `max_pool_reference`
(nn.max_pool under autodiff).

Measured reason: autodiff of reduce_window kept four int32 index maps of the padded input (136 MB for R50 at 512 px),
then the padded input itself (34 MB), alive to the memory peak; with `ffn.relu_ffn`, R50 512 px train-step
temporaries 2.78 -> 2.53 GiB (docs/scaling.md).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.ops.schedule import after


def max_pool_reference(x: jnp.ndarray, window: int = 3, stride: int = 2, padding: int = 1) -> jnp.ndarray:
  """nn.max_pool(x, (window, window), (stride, stride), padding=((padding, padding),) * 2) on NHWC."""
  return nn.max_pool(x, (window, window), (stride, stride), padding=((padding, padding), (padding, padding)))


def _pool_taps(x: jnp.ndarray, window: int, stride: int, padding: int) -> list:
  """The window * window strided views [B, Ho, Wo, C] of x [B, H, W, C] padded with -inf, in row-major tap order."""
  b, h, w, c = x.shape
  ho, wo = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  return [jax.lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                        (1, stride, stride, 1)) for i in range(window) for j in range(window)]


def _max_pool_fwd(x, window, stride, padding):
  # The output waits for the index (`after`), and the index is a reduction rather than elementwise work on
  # the taps: else XLA computed it in the backward pass, keeping the padded input (34 MB for R50) alive.
  taps = jnp.stack(_pool_taps(x, window, stride, padding))
  index = jnp.argmax(taps, 0).astype(jnp.int8)
  return after(taps.max(0), index), (index, x.shape)


def _max_pool_bwd(window, stride, padding, residuals, g):
  index, (b, h, w, c) = residuals
  ho, wo = g.shape[1:3]
  hp, wp = h + 2 * padding, w + 2 * padding
  d_padded = 0.0
  for k in range(window * window):
    i, j = divmod(k, window)
    # tap k's gradient, spread back to the padded input's rows i + stride * y and columns j + stride * x
    config = ((0, 0, 0), (i, hp - i - stride * (ho - 1) - 1, stride - 1),
              (j, wp - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0))
    d_padded = d_padded + jax.lax.pad(jnp.where(index == k, g, 0).astype(g.dtype), jnp.zeros((), g.dtype), config)
  return (d_padded[:, padding:padding + h, padding:padding + w],)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jnp.ndarray, window: int = 3, stride: int = 2, padding: int = 1) -> jnp.ndarray:
  """`max_pool_reference`, whose gradient goes to the first maximum of each window in row-major order (PyTorch's
  choice) through an int8 tap index: autodiff of reduce_window kept four int32 index maps of the padded input
  (136 MB for R50 at 512 px) alive to the memory peak."""
  return _max_pool_fwd(x, window, stride, padding)[0]


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
