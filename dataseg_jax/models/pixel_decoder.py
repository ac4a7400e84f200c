"""Pixel decoder: multi-scale deformable attention encoder + FPN to stride-4 mask features.

[default: Mask2Former MSDeformAttnPixelDecoder] Features at strides 8, 16, 32 are projected to `hidden_dim`,
given sine position + learned level embeddings, and refined by `num_layers` deformable-attention encoder
layers (Zhu et al., Deformable DETR, Eq. 3); the stride-8 output is fused top-down with the stride-4 backbone
feature (FPN lateral + 3x3 conv) and projected to `mask_dim` per-pixel embeddings. Layer and group norms use torch's
epsilon (1e-5), as Mask2Former.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.models.layers import (NORM_EPS, ConvSame, dense, relu_ffn_layers, resize_bilinear,
                                       sine_position_encoding)
from dataseg_jax.models.resnet import conv_kernel_init
from dataseg_jax.ops.deform_attn import ms_deform_attn_core


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
