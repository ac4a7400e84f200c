"""Masked-attention transformer decoder and mask head [default: Mask2Former, Cheng et al. 2022].

`num_layers` layers visit the 3 memory scales round-robin (stride 32, 16, 8, 32, ...). Each layer is masked
cross-attention (Mask2Former Eq. 2: a query attends only where its previous mask prediction is >= 0.5;
a query whose mask is empty attends everywhere) -> self-attention -> FFN, post-norm. Predictions come from
the initial queries and after every layer (L = num_layers + 1): the normalised query embedding (for the
classifier) and mask logits = MLP(query) . per-pixel embeddings. Layer norms use torch's epsilon (1e-5).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from dataseg_jax.models.layers import MLP, NORM_EPS, Attention, dense, resize_bilinear, sine_position_encoding


class DecoderLayer(nn.Module):
  num_heads: int
  ffn_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, memory, memory_pos, attn_mask):
    """x, query_pos [B, Q, D]; memory, memory_pos [B, S, D]; attn_mask [B, 1, Q, S] (True = attend)."""
    y = Attention(self.num_heads, self.dtype, name="cross_attn")(x + query_pos, memory + memory_pos, memory,
                                                                 attn_mask)
    x = nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="norm_cross")(x + y)
    q = x + query_pos
    y = Attention(self.num_heads, self.dtype, name="self_attn")(q, q, x)
    x = nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="norm_self")(x + y)
    y = dense(self.ffn_dim, ("embed", "mlp"), self.dtype, name="linear1")(x)
    y = dense(x.shape[-1], ("mlp", "embed"), self.dtype, name="linear2")(nn.relu(y))
    return nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="norm_ffn")(x + y)


def attention_mask(mask_logits: jnp.ndarray, size) -> jnp.ndarray:
  """mask_logits [B, Q, h, w] -> bool [B, 1, Q, H_l * W_l]: True where sigmoid(bilinear resize) >= 0.5.

  The resize is torch's `F.interpolate(bilinear, align_corners=False)` without antialiasing, as Mask2Former.
  A query whose resized mask is empty everywhere attends everywhere (Mask2Former's fix for empty masks).
  """
  b, q = mask_logits.shape[:2]
  resized = resize_bilinear(mask_logits.astype(jnp.float32), size, channels_last=False)
  keep = jax.lax.stop_gradient(resized.reshape(b, q, -1) >= 0.0)
  keep = keep | ~jnp.any(keep, -1, keepdims=True)
  return keep[:, None]


class TransformerDecoder(nn.Module):
  """(memory [3 x [B, H_l, W_l, D]], mask features [B, h, w, E]) -> query embeddings [L, B, Q, D], masks [L, B, Q, h, w]."""
  num_queries: int
  num_layers: int
  num_heads: int
  ffn_dim: int
  mask_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, memory, mask_features):
    b = mask_features.shape[0]
    d = memory[0].shape[-1]
    query_feat = self.param("query_feat", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                       ("queries", "embed")), (self.num_queries, d))
    query_pos = self.param("query_pos", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                     ("queries", "embed")), (self.num_queries, d))
    level_embed = self.param("level_embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
                             (len(memory), d))
    mems, mem_pos, sizes = [], [], []
    for i, m in enumerate(memory):
      h, w = m.shape[1:3]
      sizes.append((h, w))
      mems.append((m + level_embed[i].astype(m.dtype)).reshape(b, h * w, d))
      mem_pos.append(sine_position_encoding(h, w, d).reshape(1, h * w, d).astype(self.dtype))
    norm = nn.LayerNorm(NORM_EPS, dtype=self.dtype, name="decoder_norm")
    mask_mlp = MLP(d, self.mask_dim, 3, self.dtype, name="mask_embed")

    def predict(x, level):
      out = norm(x)
      masks = jnp.einsum("bqc,bhwc->bqhw", mask_mlp(out), mask_features).astype(jnp.float32)
      return out, masks, attention_mask(masks, sizes[level])

    x = jnp.broadcast_to(query_feat.astype(self.dtype)[None], (b, self.num_queries, d))
    qpos = jnp.broadcast_to(query_pos.astype(self.dtype)[None], (b, self.num_queries, d))
    out, masks, attn = predict(x, 0)
    outs, all_masks = [out], [masks]
    for i in range(self.num_layers):
      level = i % len(memory)
      x = DecoderLayer(self.num_heads, self.ffn_dim, self.dtype, name=f"layer_{i}")(x, qpos, mems[level],
                                                                                     mem_pos[level], attn)
      out, masks, attn = predict(x, (i + 1) % len(memory))
      outs.append(out)
      all_masks.append(masks)
    return jnp.stack(outs), jnp.stack(all_masks)
