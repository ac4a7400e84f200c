"""Small shared layers: logically-partitioned Dense, sine position encoding, bilinear resize, attention, MLP, conv."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax.ops.conv import conv_same
from dataseg_jax.ops.ffn import relu_ffn

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


class ConvSame(nn.Module):
  """nn.Conv(features, (k, k), padding=k // 2, use_bias=False) with the same 'kernel' parameter, through
  `ops.conv.conv_same` (its faster kernel gradient on the CPU)."""
  features: int
  kernel_init: nn.initializers.Initializer
  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape)
    return conv_same(x.astype(self.dtype), jnp.asarray(kernel, self.dtype))


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
  """dense(hidden_dim) -> ReLU -> dense(in) through `ops.ffn.relu_ffn`, called inside a compact method: the
  parameters are the calling module's 'linear1' and 'linear2', exactly those two `dense` layers of those names would
  have."""
  d = x.shape[-1]
  w1, b1 = _DenseParams(hidden_dim, ("embed", "mlp"), name="linear1")(d)
  w2, b2 = _DenseParams(d, ("mlp", "embed"), name="linear2")(hidden_dim)
  return relu_ffn(*(jnp.asarray(a, dtype) for a in (x, w1, b1, w2, b2)))
