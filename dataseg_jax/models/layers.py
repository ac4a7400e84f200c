"""Small shared layers: logically-partitioned Dense, sine position encoding, bilinear resize, attention, MLP, conv."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORM_EPS = 1e-5  # torch's LayerNorm / GroupNorm epsilon, for the decoders' norms [default: Mask2Former]


def dense(features: int, axes=("embed", "mlp"), dtype=jnp.float32, use_bias=True, name=None,
          kernel_init=nn.initializers.xavier_uniform()) -> nn.Dense:
  """nn.Dense whose kernel carries logical axis names (see models/dataseg.py's docstring)."""
  return nn.Dense(features, dtype=dtype, use_bias=use_bias, name=name,
                  kernel_init=nn.with_logical_partitioning(kernel_init, axes))


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0) -> jnp.ndarray:
  """DETR's normalised 2-D sine encoding [default: Mask2Former PositionEmbeddingSine(normalize=True)].

  pos_y(i, 2k) = sin(y_i / T^(2k/d')), pos_y(i, 2k+1) = cos(...), with y_i = (i + 1) / (H + 1e-6) * 2 pi (the
  cumulative count of rows over the last one, as Mask2Former and DETR) and d' = dim/2; the same for x; output
  concat(pos_y, pos_x) of shape [H, W, dim].
  """
  half = dim // 2
  scale = 2 * math.pi
  y = (jnp.arange(height, dtype=jnp.float32) + 1) / (height + 1e-6) * scale
  x = (jnp.arange(width, dtype=jnp.float32) + 1) / (width + 1e-6) * scale
  dim_t = temperature ** (2 * (jnp.arange(half) // 2) / half)

  def encode(v):  # [n] -> [n, half], interleaved sin/cos
    p = v[:, None] / dim_t
    return jnp.stack([jnp.sin(p[:, 0::2]), jnp.cos(p[:, 1::2])], -1).reshape(v.shape[0], half)

  py, px = encode(y), encode(x)
  return jnp.concatenate([jnp.broadcast_to(py[:, None], (height, width, half)),
                          jnp.broadcast_to(px[None, :], (height, width, half))], -1)


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch `F.interpolate(mode='bilinear', align_corners=False)` along one axis.

  Source coordinate s = (i + 0.5) in / out - 0.5, clamped below at 0; taps floor(s) and floor(s) + 1 (clamped to
  the last pixel) with weights 1 - frac(s), frac(s). No antialiasing, also when downsampling (torch's default).
  """
  src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  mat = np.zeros((out_size, in_size), np.float32)
  np.add.at(mat, (np.arange(out_size), i0), 1 - frac)
  np.add.at(mat, (np.arange(out_size), i1), frac)
  return mat


def resize_bilinear(x: jnp.ndarray, size, channels_last: bool) -> jnp.ndarray:
  """Bilinear resize of [..., H, W] (or [B, H, W, C] when `channels_last`) to `size` = (H', W'), as torch
  `F.interpolate(mode='bilinear', align_corners=False)` [default: Mask2Former]; two small matmuls."""
  h, w = (x.shape[1:3] if channels_last else x.shape[-2:])
  my = jnp.asarray(interpolation_matrix(h, size[0]), x.dtype)
  mx = jnp.asarray(interpolation_matrix(w, size[1]), x.dtype)
  if channels_last:
    return jnp.einsum("Yy,byxc,Xx->bYXc", my, x, mx)
  return jnp.einsum("Yy,...yx,Xx->...YX", my, x, mx)


class Attention(nn.Module):
  """Multi-head attention softmax(q k^T / sqrt(d_h) + bias) v with an optional boolean `mask` (True = attend).

  q: [B, Lq, D], k / v: [B, Lk, D], mask broadcastable to [B, heads, Lq, Lk].
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, q, k, v, mask=None):
    d = q.shape[-1]
    h = self.num_heads
    split = lambda t: t.reshape(*t.shape[:-1], h, d // h)
    q = split(dense(d, ("embed", "heads"), self.dtype, name="q")(q))
    k = split(dense(d, ("embed", "heads"), self.dtype, name="k")(k))
    v = split(dense(d, ("embed", "heads"), self.dtype, name="v")(v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // h)
    if mask is not None:
      logits = jnp.where(mask, logits, -1e9)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*q.shape[:-2], d)
    return dense(d, ("heads", "embed"), self.dtype, name="out")(out)


class MLP(nn.Module):
  """`num_layers` Dense layers with ReLU between them (Mask2Former's MLP)."""
  hidden_dim: int
  out_dim: int
  num_layers: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = dense(self.out_dim if last else self.hidden_dim, ("embed", "mlp"), self.dtype, name=f"layer{i}")(x)
      if not last:
        x = nn.relu(x)
    return x


def _conv_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad_by_taps(x: jnp.ndarray, kernel: jnp.ndarray, grad: jnp.ndarray) -> jnp.ndarray:
  """dL/dkernel[i, j] = sum over pixels of x_padded[.., y + i, x + j, :]^T grad[.., y, x, :]: one matmul per tap."""
  k, p = kernel.shape[0], kernel.shape[0] // 2
  h, w, d = grad.shape[1:]
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  g = grad.reshape(-1, d)
  taps = [[jnp.matmul(xp[:, i:i + h, j:j + w].reshape(-1, x.shape[-1]).T, g, preferred_element_type=jnp.float32)
           for j in range(k)] for i in range(k)]
  return jnp.stack([jnp.stack(row) for row in taps]).astype(kernel.dtype)


def _kernel_grad_native(x: jnp.ndarray, kernel: jnp.ndarray, grad: jnp.ndarray) -> jnp.ndarray:
  return jax.vjp(lambda k: _conv_same(x, k), kernel)[1](grad)[0]


@jax.custom_vjp
def conv_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Stride-1 convolution with zero 'same' padding, NHWC x HWIO (odd square kernel), no bias.

  Its kernel gradient on the CPU is k^2 matmuls over the pixels (`_kernel_grad_by_taps`): XLA-CPU's own
  weight gradient of the 3x3, 256-channel convolution at stride 4 took 2.7x as long (419 ms against 158 ms
  at 2 x 128 x 128, 2 cores); elsewhere it is the compiler's.
  """
  return _conv_same(x, kernel)


def _conv_same_fwd(x, kernel):
  return _conv_same(x, kernel), (x, kernel)


def _conv_same_bwd(residuals, grad):
  x, kernel = residuals
  dx = jax.vjp(lambda v: _conv_same(v, kernel), x)[1](grad)[0]
  dk = jax.lax.platform_dependent(x, kernel, grad, cpu=_kernel_grad_by_taps, default=_kernel_grad_native)
  return dx, dk


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class ConvSame(nn.Module):
  """nn.Conv(features, (k, k), padding=k // 2, use_bias=False) with the same 'kernel' parameter, through
  `conv_same` (its faster kernel gradient on the CPU)."""
  features: int
  kernel_init: nn.initializers.Initializer
  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape)
    return conv_same(x.astype(self.dtype), jnp.asarray(kernel, self.dtype))


def after(x: jnp.ndarray, *deps: jnp.ndarray) -> jnp.ndarray:
  """x, computed only once `deps` are: adds 0 * isnan(one element of each dep) (isnan keeps it exactly 0).

  XLA-CPU drops optimization barriers before scheduling; this data dependence is how a pass makes its scheduler
  finish something early (a weight gradient, and so free the activations it reads) rather than at its last use.
  """
  zero = sum(jnp.isnan(d.reshape(-1)[:1].astype(jnp.float32)).astype(jnp.float32) for d in deps) * 0.0
  return x + zero.astype(x.dtype)


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


class _DenseParams(nn.Module):
  """The 'kernel' [in, out] and 'bias' [out] that `dense(out, axes)` would create under this module's name."""
  features: int
  axes: tuple

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), self.axes),
                        (in_features, self.features))
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


def relu_ffn_layers(x: jnp.ndarray, hidden_dim: int, dtype=jnp.float32) -> jnp.ndarray:
  """dense(hidden_dim) -> ReLU -> dense(in) through `relu_ffn`, called inside a compact method: the parameters
  are the calling module's 'linear1' and 'linear2', exactly those two `dense` layers of those names would have."""
  d = x.shape[-1]
  w1, b1 = _DenseParams(hidden_dim, ("embed", "mlp"), name="linear1")(d)
  w2, b2 = _DenseParams(d, ("mlp", "embed"), name="linear2")(hidden_dim)
  return relu_ffn(*(jnp.asarray(a, dtype) for a in (x, w1, b1, w2, b2)))


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
  """nn.max_pool(x, (window, window), (stride, stride), padding=((padding, padding),) * 2) on NHWC, whose
  gradient goes to the first maximum of each window in row-major order (PyTorch's choice) through an int8
  tap index: autodiff of reduce_window kept four int32 index maps of the padded input (136 MB for R50 at
  512 px) alive to the memory peak."""
  return _max_pool_fwd(x, window, stride, padding)[0]


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
