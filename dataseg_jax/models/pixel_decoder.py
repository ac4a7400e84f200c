"""Pixel decoder: multi-scale deformable attention encoder + FPN to stride-4 mask features.

[default: Mask2Former MSDeformAttnPixelDecoder] Features at strides 8, 16, 32 are projected to `hidden_dim`,
given sine position + learned level embeddings, and refined by `num_layers` deformable-attention encoder
layers (Zhu et al., Deformable DETR, Eq. 3); the stride-8 output is fused top-down with the stride-4 backbone
feature (FPN lateral + 3x3 conv) and projected to `mask_dim` per-pixel embeddings.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.models.layers import dense, sine_position_encoding


def bilinear_sample(value: jnp.ndarray, loc: jnp.ndarray) -> jnp.ndarray:
  """Samples `value` [B, M, H, W, Dh] at normalised locations `loc` [B, M, K, 2] (x, y in [0, 1]) -> [B, M, K, Dh].

  grid_sample(align_corners=False, padding_mode='zeros') semantics: pixel coordinate u = x * W - 0.5; taps
  outside the map contribute zero. One vectorised gather of the 4 neighbours, no loop over points.
  """
  b, m, h, w, dh = value.shape
  u = loc[..., 0] * w - 0.5
  v = loc[..., 1] * h - 0.5
  u0, v0 = jnp.floor(u), jnp.floor(v)
  flat = value.reshape(b, m, h * w, dh)
  out = 0.0
  for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1)):
    uu, vv = u0 + du, v0 + dv
    weight = (1 - jnp.abs(u - uu)) * (1 - jnp.abs(v - vv))
    inside = (uu >= 0) & (uu <= w - 1) & (vv >= 0) & (vv <= h - 1)
    idx = (jnp.clip(vv, 0, h - 1) * w + jnp.clip(uu, 0, w - 1)).astype(jnp.int32)
    tap = jnp.take_along_axis(flat, idx[..., None], axis=2)
    out = out + tap * jnp.where(inside, weight, 0.0)[..., None].astype(value.dtype)
  return out


def ms_deform_attn_core(values: Sequence[jnp.ndarray], loc: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """Deformable attention sum (Deformable DETR Eq. 3) over levels and points.

  values[l]: [B, H_l, W_l, M, Dh]; loc: [B, Lq, M, L, P, 2] normalised (x, y); weights: [B, Lq, M, L, P]
  (softmax over L*P). Returns [B, Lq, M * Dh]. Equals PyTorch's `ms_deform_attn_core_pytorch`.
  """
  b, lq, m, nl, p, _ = loc.shape
  out = 0.0
  for lvl, val in enumerate(values):
    val = jnp.transpose(val, (0, 3, 1, 2, 4))  # [B, M, H, W, Dh]
    pts = jnp.transpose(loc[:, :, :, lvl], (0, 2, 1, 3, 4)).reshape(b, m, lq * p, 2)
    sampled = bilinear_sample(val, pts).reshape(b, m, lq, p, -1)  # [B, M, Lq, P, Dh]
    w = jnp.transpose(weights[:, :, :, lvl], (0, 2, 1, 3))  # [B, M, Lq, P]
    out = out + jnp.einsum("bmqpd,bmqp->bqmd", sampled, w.astype(sampled.dtype))
  return out.reshape(b, lq, -1)


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
    offsets = nn.Dense(m * nl * p * 2, dtype=jnp.float32, name="sampling_offsets",
                       kernel_init=nn.initializers.zeros, bias_init=_offset_bias_init(m, nl, p))(query)
    offsets = offsets.reshape(b, lq, m, nl, p, 2)
    attn = nn.Dense(m * nl * p, dtype=jnp.float32, name="attention_weights",
                    kernel_init=nn.initializers.zeros)(query)
    attn = jax.nn.softmax(attn.reshape(b, lq, m, nl * p), -1).reshape(b, lq, m, nl, p)
    normaliser = jnp.array([[w, h] for h, w in shapes], jnp.float32)  # [L, 2] as (x, y)
    loc = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    values, start = [], 0
    for h, w in shapes:
      values.append(value[:, start:start + h * w].reshape(b, h, w, m, d // m))
      start += h * w
    out = ms_deform_attn_core(values, loc, attn)
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
    x = nn.LayerNorm(dtype=self.dtype, name="norm1")(x + attn(x + pos, reference, x, shapes))
    y = dense(self.ffn_dim, ("embed", "mlp"), self.dtype, name="linear1")(x)
    y = dense(x.shape[-1], ("mlp", "embed"), self.dtype, name="linear2")(nn.relu(y))
    return nn.LayerNorm(dtype=self.dtype, name="norm2")(x + y)


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
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (len(names), d))
    for i, n in enumerate(names):
      x = dense(d, ("conv_in", "embed"), self.dtype, name=f"input_proj_{i}")(feats[n])
      x = nn.GroupNorm(32 if d % 32 == 0 else 1, dtype=self.dtype, name=f"input_norm_{i}")(x)
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
    lateral = nn.GroupNorm(32 if d % 32 == 0 else 1, dtype=self.dtype, name="lateral_norm")(
        dense(d, ("conv_in", "embed"), self.dtype, use_bias=False, name="lateral")(feats["res2"]))
    b, h4, w4, _ = lateral.shape
    y = lateral + jax.image.resize(memory[-1], (b, h4, w4, d), "bilinear")
    y = nn.Conv(d, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="output_conv")(y)
    y = nn.relu(nn.GroupNorm(32 if d % 32 == 0 else 1, dtype=self.dtype, name="output_norm")(y))
    mask_features = dense(self.mask_dim, ("embed", "mlp"), self.dtype, name="mask_features")(y)
    return memory, mask_features
