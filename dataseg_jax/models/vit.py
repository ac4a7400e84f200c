"""Plain ViT with ViTDet's simple feature pyramid [default: Li et al. 2022, ViTDet].

Patch embedding (stride 16) + absolute position embedding, `num_layers` pre-norm blocks (exact-erf GELU, as
torch nn.GELU in MAE/ViTDet) with windowed
attention (non-overlapping `window_size` windows, zero padded) except the `global_blocks`, optional
decomposed relative position bias (ViTDet/MViTv2: bias(q, k) = q . R_h[q_y - k_y] + q . R_w[q_x - k_x]).
The simple feature pyramid builds strides 4, 8, 16, 32 from the last stride-16 map: two / one transposed
2x2 convs, identity, 2x2 max pool; each followed by a 1x1 and a 3x3 conv with LayerNorm.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.models.layers import dense
from dataseg_jax.models.resnet import conv_kernel_init


def window_partition(x, window: int):
  """[B, H, W, C] -> ([B * nW, window * window, C], padded (Hp, Wp))."""
  b, h, w, c = x.shape
  ph, pw = (-h) % window, (-w) % window
  x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  hp, wp = h + ph, w + pw
  x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(x, window: int, padded, size, batch: int):
  """Inverse of `window_partition`, cropping the padding."""
  hp, wp = padded
  h, w = size
  x = x.reshape(batch, hp // window, wp // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, hp, wp, -1)[:, :h, :w]


class RelPosAttention(nn.Module):
  """Multi-head self-attention over a [B, H, W, C] grid with optional decomposed relative position bias."""
  num_heads: int
  rel_pos: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    nh, dh = self.num_heads, c // self.num_heads
    qkv = dense(3 * c, ("embed", "heads"), self.dtype, name="qkv")(x).reshape(b, h * w, 3, nh, dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(dh)
    if self.rel_pos:
      rh = self.param("rel_pos_h", nn.with_logical_partitioning(nn.initializers.zeros, (None, None)), (2 * h - 1, dh))
      rw = self.param("rel_pos_w", nn.with_logical_partitioning(nn.initializers.zeros, (None, None)), (2 * w - 1, dh))
      idx_h = jnp.arange(h)[:, None] - jnp.arange(h)[None, :] + h - 1
      idx_w = jnp.arange(w)[:, None] - jnp.arange(w)[None, :] + w - 1
      qg = q.reshape(b, h, w, nh, dh).astype(jnp.float32)
      bias_h = jnp.einsum("byxnd,ykd->bnyxk", qg, rh[idx_h])  # [B, n, H, W, H]
      bias_w = jnp.einsum("byxnd,xkd->bnyxk", qg, rw[idx_w])  # [B, n, H, W, W]
      bias = bias_h[..., :, None] + bias_w[..., None, :]
      logits = logits + bias.reshape(b, nh, h * w, h * w)
    weights = jax.nn.softmax(logits, -1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h, w, c)
    return dense(c, ("heads", "embed"), self.dtype, name="proj")(out)


class Block(nn.Module):
  num_heads: int
  mlp_dim: int
  window_size: int  # 0: global attention
  rel_pos: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
    if self.window_size:
      yw, padded = window_partition(y, self.window_size)
      yw = yw.reshape(-1, self.window_size, self.window_size, c)
      yw = RelPosAttention(self.num_heads, self.rel_pos, self.dtype, name="attn")(yw)
      y = window_unpartition(yw.reshape(yw.shape[0], -1, c), self.window_size, padded, (h, w), b)
    else:
      y = RelPosAttention(self.num_heads, self.rel_pos, self.dtype, name="attn")(y)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
    y = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name="fc1")(y)
    return x + dense(c, ("mlp", "embed"), self.dtype, name="fc2")(nn.gelu(y, approximate=False))


def up2x2(features: int, dtype, name: str) -> nn.ConvTranspose:
  """2x2 transposed convolution, stride 2 (the simple feature pyramid's upsampling)."""
  return nn.ConvTranspose(features, (2, 2), (2, 2), dtype=dtype, name=name, kernel_init=conv_kernel_init())


class ViTDet(nn.Module):
  """images [B, H, W, 3] (normalised) -> {'res2': stride 4, 'res3': 8, 'res4': 16, 'res5': 32}, `out_dim` channels."""
  patch_size: int = 16
  hidden_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  window_size: int = 14
  global_blocks: tuple = (2, 5, 8, 11)
  rel_pos: bool = False
  remat: bool = False
  out_dim: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p, d = self.patch_size, self.hidden_dim
    x = nn.Conv(d, (p, p), (p, p), dtype=self.dtype, name="patch_embed",
                kernel_init=conv_kernel_init())(x.astype(self.dtype))
    b, h, w, _ = x.shape
    pos = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, None, "embed")),
                     (1, h, w, d))
    x = x + pos.astype(self.dtype)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.num_layers):
      window = 0 if i in tuple(self.global_blocks) else self.window_size
      x = block(self.num_heads, self.mlp_dim, window, self.rel_pos, self.dtype, name=f"block_{i}")(x)
    up4 = up2x2(d // 2, self.dtype, "sfp_4_up1")(x)
    up4 = nn.gelu(nn.LayerNorm(dtype=self.dtype, name="sfp_4_norm")(up4), approximate=False)
    up4 = up2x2(d // 4, self.dtype, "sfp_4_up2")(up4)
    levels = {
        "res2": up4,
        "res3": up2x2(d // 2, self.dtype, "sfp_8_up")(x),
        "res4": x,
        "res5": nn.max_pool(x, (2, 2), (2, 2)),
    }
    out = {}
    for name, f in levels.items():
      f = nn.LayerNorm(dtype=self.dtype, name=f"{name}_norm1")(
          dense(self.out_dim, ("conv_in", "conv_out"), self.dtype, use_bias=False, name=f"{name}_lateral")(f))
      f = nn.Conv(self.out_dim, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name=f"{name}_output",
                  kernel_init=conv_kernel_init())(f)
      out[name] = nn.LayerNorm(dtype=self.dtype, name=f"{name}_norm2")(f)
    return out
