"""Pixel decoder: multi-scale deformable attention encoder + FPN to stride-4 mask features.

[default: Mask2Former MSDeformAttnPixelDecoder] Features at strides 8, 16, 32 are projected to `hidden_dim`,
given sine position + learned level embeddings, and refined by `num_layers` deformable-attention encoder
layers (Zhu et al., Deformable DETR, Eq. 3); the stride-8 output is fused top-down with the stride-4 backbone
feature (FPN lateral + 3x3 conv) and projected to `mask_dim` per-pixel embeddings. Layer and group norms use torch's
epsilon (1e-5), as Mask2Former.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.models.layers import (NORM_EPS, ConvSame, after, dense, relu_ffn_layers, resize_bilinear,
                                       sine_position_encoding)
from dataseg_jax.models.resnet import conv_kernel_init


def _bilinear_taps(loc, heights, widths):
  """Per bilinear tap (4 of them): (flat pixel index, weight with zero padding, inside the map) at
  grid_sample(align_corners=False).

  Pixel coordinate u = x * W - 0.5 (v likewise); tap (u0 + du, v0 + dv) has weight (1 - |u - uu|)(1 - |v - vv|),
  zero outside the map. `loc` [..., 2] (x, y); heights / widths broadcast against loc[..., 0]. A tap inside the
  map can weigh 0 (u on a pixel centre) and still carries a gradient for u.
  """
  u = loc[..., 0] * widths - 0.5
  v = loc[..., 1] * heights - 0.5
  u0, v0 = jnp.floor(u), jnp.floor(v)
  taps = []
  for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1)):
    uu, vv = u0 + du, v0 + dv
    inside = (uu >= 0) & (uu <= widths - 1) & (vv >= 0) & (vv <= heights - 1)
    weight = jnp.where(inside, (1 - jnp.abs(u - uu)) * (1 - jnp.abs(v - vv)), 0.0)
    pix = (jnp.clip(vv, 0, heights - 1) * widths + jnp.clip(uu, 0, widths - 1)).astype(jnp.int32)
    taps.append((pix, weight, inside))
  return taps


def _level_inputs(value, shapes, loc, weights):
  """Per level: (h, w, its value rows [B, M, H_l W_l, Dh], points [B, M, Lq P, 2], weights [B, M, Lq, P])."""
  b, _, m, _ = value.shape
  lq, p = loc.shape[1], loc.shape[4]
  start = 0
  for lvl, (h, w) in enumerate(shapes):
    flat = jnp.transpose(value[:, start:start + h * w], (0, 2, 1, 3))
    start += h * w
    pts = jnp.transpose(loc[:, :, :, lvl], (0, 2, 1, 3, 4)).reshape(b, m, lq * p, 2)
    yield h, w, flat, pts, jnp.transpose(weights[:, :, :, lvl], (0, 2, 1, 3))


def _core_per_level(value, shapes, loc, weights):
  """The forward pass, level by level: one batched gather per level and tap (fast on XLA-CPU)."""
  b, _, m, dh = value.shape
  lq, p = loc.shape[1], loc.shape[4]
  out = 0.0
  for h, w, flat, pts, attn in _level_inputs(value, shapes, loc, weights):
    sampled = 0.0
    for pix, weight, _ in _bilinear_taps(pts, h, w):
      tap = jnp.take_along_axis(flat, pix[..., None], axis=2)  # [B, M, Lq P, Dh]
      sampled = sampled + tap * weight[..., None].astype(value.dtype)
    out = out + jnp.einsum("bmqpd,bmqp->bqmd", sampled.reshape(b, m, lq, p, dh), attn.astype(value.dtype))
  return out.reshape(b, lq, m * dh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def ms_deform_attn_core(value: jnp.ndarray, shapes: Sequence[tuple[int, int]], loc: jnp.ndarray,
                        weights: jnp.ndarray) -> jnp.ndarray:
  """Deformable attention sum (Deformable DETR Eq. 3): out(q, m) = sum_{l, p} A(q, m, l, p) x_l(loc(q, m, l, p)).

  value: [B, S, M, Dh], the levels' [H_l, W_l] maps flattened row-major and concatenated in `shapes` order
  (S = sum H_l W_l); shapes: static ((H_l, W_l), ...); loc: [B, Lq, M, L, P, 2] normalised (x, y) in [0, 1];
  weights: [B, Lq, M, L, P] (softmax over L * P). Returns [B, Lq, M * Dh]. Equals PyTorch's
  `ms_deform_attn_core_pytorch(value, shapes, loc, weights)`: bilinear sampling with
  grid_sample(align_corners=False, padding_mode='zeros') semantics, vectorised (no loop over queries or points).
  The backward pass is written by hand (`_core_bwd`).
  """
  return _core_per_level(value, shapes, loc, weights)


def _core_fwd(value, shapes, loc, weights):
  return _core_per_level(value, shapes, loc, weights), (value, loc, weights)


def _core_bwd(shapes, residuals, grad):
  """The gradient of Eq. 3 by hand, in the inputs' own [B, Lq, M, ...] order.

  With T_k the value row under bilinear tap k of a sample, w_k = wx_k wy_k its weight (0 outside the map),
  a the sample's attention weight and g the output gradient of its (query, head):
    s_k = <T_k, g> (0 for a tap outside the map);   d a = sum_k w_k s_k;   d value[tap k] += a w_k g (a scatter-add);
    d loc_x = a W sum_k s_k wy_k dwx_k/du,   d loc_y = a H sum_k s_k wx_k dwy_k/dv,
  where u = x W - 1/2, v = y H - 1/2 and dwx/du = -1 for the left tap, +1 for the right (likewise v).
  Value rows are read and written as whole rows of one flat [B S M, Dh] table (2x faster than autodiff of
  the forward's per-level gathers on XLA-CPU, 1.4x faster than autodiff of an all-levels formulation).
  """
  value, loc, weights = residuals
  b, s, m, dh = value.shape
  lq, p = loc.shape[1], loc.shape[4]
  table = value.reshape(b * s * m, dh)
  g = grad.reshape(b, lq, m, 1, dh).astype(jnp.float32)
  base = (jnp.arange(b, dtype=jnp.int32)[:, None, None, None] * s) * m + jnp.arange(m, dtype=jnp.int32)[:, None]
  d_table = jnp.zeros((b * s * m, dh), jnp.float32)
  d_loc, d_weights, start = [], [], 0
  for lvl, (h, w) in enumerate(shapes):
    pts, a = loc[:, :, :, lvl], weights[:, :, :, lvl]  # [B, Lq, M, P, 2], [B, Lq, M, P]
    u, v = pts[..., 0] * w - 0.5, pts[..., 1] * h - 0.5
    fu, fv = u - jnp.floor(u), v - jnp.floor(v)
    rows = (a[..., None] * g).reshape(-1, dh)  # a g per sample
    d_attn = du = dv = 0.0
    for (pix, weight, inside), (dy, dx) in zip(_bilinear_taps(pts, h, w), ((0, 0), (0, 1), (1, 0), (1, 1))):
      index = (base + (start + pix) * m).reshape(-1)
      tap = table.at[index].get(mode="promise_in_bounds").astype(jnp.float32).reshape(b, lq, m, p, dh)
      s_k = jnp.where(inside, jnp.sum(tap * g, -1), 0.0)
      wx, wy = (fu if dx else 1 - fu), (fv if dy else 1 - fv)
      d_attn = d_attn + weight * s_k
      du = du + (1.0 if dx else -1.0) * wy * s_k
      dv = dv + (1.0 if dy else -1.0) * wx * s_k
      # This update waits for the previous scatter, else all 12 updates of a layer (42 MB each) are computed first.
      update = after(weight.reshape(-1, 1) * rows, d_table)
      d_table = d_table.at[index].add(update, mode="promise_in_bounds")
    start += h * w
    d_loc.append(jnp.stack([a * du * w, a * dv * h], -1))
    d_weights.append(d_attn)
  return (d_table.reshape(value.shape).astype(value.dtype), jnp.stack(d_loc, 3).astype(loc.dtype),
          jnp.stack(d_weights, 3).astype(weights.dtype))


ms_deform_attn_core.defvjp(_core_fwd, _core_bwd)


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention: each query samples `num_points` offsets per head and level."""
  num_heads: int
  num_levels: int
  num_points: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, reference, values_flat, shapes):
    """query [B, Lq, D], reference [B, Lq, L, 2] (x, y), values_flat [B, S, D], shapes ((H_l, W_l), ...)."""
    b, lq, d = query.shape
    m, nl, p = self.num_heads, self.num_levels, self.num_points
    value = dense(d, ("embed", "heads"), self.dtype, name="value_proj")(values_flat).reshape(b, -1, m, d // m)
    offsets = nn.Dense(m * nl * p * 2, dtype=jnp.float32, name="sampling_offsets", bias_init=_offset_bias_init(m, nl, p),
                       kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "heads")))(query)
    offsets = offsets.reshape(b, lq, m, nl, p, 2)
    attn = nn.Dense(m * nl * p, dtype=jnp.float32, name="attention_weights",
                    kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "heads")))(query)
    attn = jax.nn.softmax(attn.reshape(b, lq, m, nl * p), -1).reshape(b, lq, m, nl, p)
    normaliser = jnp.array([[w, h] for h, w in shapes], jnp.float32)  # [L, 2] as (x, y)
    loc = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    out = ms_deform_attn_core(value, shapes, loc, attn)
    return dense(d, ("heads", "embed"), self.dtype, name="output_proj")(out.astype(self.dtype))


def _offset_bias_init(m: int, nl: int, p: int):
  """Deformable DETR's init: head h points along angle 2 pi h / M, point k at distance k + 1."""

  def init(key, shape, dtype=jnp.float32):
    del key
    theta = jnp.arange(m, dtype=jnp.float32) * (2 * jnp.pi / m)
    grid = jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1)
    grid = grid / jnp.max(jnp.abs(grid), -1, keepdims=True)
    grid = jnp.tile(grid[:, None, None, :], (1, nl, p, 1)) * jnp.arange(1, p + 1, dtype=jnp.float32)[None, None, :,
                                                                                                   None]
    return grid.reshape(shape).astype(dtype)

  return init


class EncoderLayer(nn.Module):
  """Post-norm deformable self-attention + FFN (Deformable DETR encoder layer)."""
  num_heads: int
  num_levels: int
  num_points: int
  ffn_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, reference, shapes):
    attn = MSDeformAttn(self.num_heads, self.num_levels, self.num_points, self.dtype, name="self_attn")
    x = nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="norm1")(x + attn(x + pos, reference, x, shapes))
    y = relu_ffn_layers(x, self.ffn_dim, self.dtype)  # parameters 'linear1', 'linear2'
    return nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="norm2")(x + y)


def reference_points(shapes) -> jnp.ndarray:
  """Pixel centres of every level, normalised to [0, 1] (x, y): [S, 2] (no padding masks: valid ratio 1)."""
  refs = []
  for h, w in shapes:
    y, x = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
    refs.append(jnp.stack([x.ravel(), y.ravel()], -1))
  return jnp.concatenate(refs, 0)


class PixelDecoder(nn.Module):
  """{'res2'..'res5'} -> (multi-scale memory [stride 32, 16, 8] each [B, H_l, W_l, D], mask features [B, H/4, W/4, E])."""
  hidden_dim: int
  mask_dim: int
  num_layers: int
  num_heads: int
  num_points: int
  ffn_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, feats):
    d = self.hidden_dim
    names = ("res5", "res4", "res3")  # coarse to fine, Mask2Former's order
    srcs, shapes, pos = [], [], []
    level_embed = self.param("level_embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
                             (len(names), d))
    for i, n in enumerate(names):
      x = dense(d, ("conv_in", "embed"), self.dtype, name=f"input_proj_{i}")(feats[n])
      x = nn.GroupNorm(32 if d % 32 == 0 else 1, epsilon=NORM_EPS, dtype=self.dtype, name=f"input_norm_{i}")(x)
      b, h, w, _ = x.shape
      shapes.append((h, w))
      srcs.append(x.reshape(b, h * w, d))
      pos.append((sine_position_encoding(h, w, d) + level_embed[i]).reshape(h * w, d))
    x = jnp.concatenate(srcs, 1)
    pos = jnp.concatenate(pos, 0)[None].astype(self.dtype)
    ref = jnp.broadcast_to(reference_points(shapes)[None, :, None, :], (x.shape[0], x.shape[1], len(names), 2))
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, len(names), self.num_points, self.ffn_dim, self.dtype,
                       name=f"encoder_layer_{i}")(x, pos, ref, shapes)
    memory, start = [], 0
    for h, w in shapes:
      memory.append(x[:, start:start + h * w].reshape(x.shape[0], h, w, d))
      start += h * w
    # FPN: stride-4 lateral + upsampled stride-8 memory, 3x3 output conv, then the mask-feature projection.
    lateral = nn.GroupNorm(32 if d % 32 == 0 else 1, epsilon=NORM_EPS, dtype=self.dtype, name="lateral_norm")(
        dense(d, ("conv_in", "embed"), self.dtype, use_bias=False, name="lateral")(feats["res2"]))
    b, h4, w4, _ = lateral.shape
    y = lateral + resize_bilinear(memory[-1], (h4, w4), channels_last=True)
    y = ConvSame(d, conv_kernel_init(), dtype=self.dtype, name="output_conv")(y)
    y = nn.relu(nn.GroupNorm(32 if d % 32 == 0 else 1, epsilon=NORM_EPS, dtype=self.dtype, name="output_norm")(y))
    mask_features = dense(self.mask_dim, ("embed", "mlp"), self.dtype, name="mask_features")(y)
    return memory, mask_features
