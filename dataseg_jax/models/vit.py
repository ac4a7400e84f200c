"""Plain ViT with ViTDet's simple feature pyramid [default: Li et al. 2022, ViTDet].

Patch embedding (stride 16) + absolute position embedding, `num_layers` pre-norm blocks (exact-erf GELU, as
torch nn.GELU in MAE/ViTDet) with windowed
attention (non-overlapping `window_size` windows, zero padded) except the `global_blocks`, optional
decomposed relative position bias (ViTDet/MViTv2: bias(q, k) = q . R_h[q_y - k_y] + q . R_w[q_x - k_x]).
The simple feature pyramid builds strides 4, 8, 16, 32 from the last stride-16 map: two / one transposed
2x2 convs, identity, 2x2 max pool; each followed by a 1x1 and a 3x3 conv with LayerNorm.

The position embedding and the global blocks' relative-position tables are stored for the token grid of the input the
model was initialised with (the config's image size). Applied to another grid (h, w), as ViTDet does on every call,
the embedding is resized bicubically (torch `F.interpolate(mode='bicubic', align_corners=False)`) to (h, w) and each
global table linearly (`get_rel_pos`) to 2 h - 1 / 2 w - 1; on the stored grid nothing is resized. Windowed
blocks' tables are window-sized and never resized. `convert_hf_vitdet` and `convert_mae` map pretrained plain-ViT
state dicts onto the trunk, resizing from the pretraining grid to the stored one (scripts/convert_weights.py).
"""
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax.models.layers import ConvSame, dense, interpolation_matrix
from dataseg_jax.models.resnet import conv_kernel_init


def param_as_stored(module: nn.Module, name: str, init, shape):
  """`module.param(name, init, shape)`, but with the stored parameter's shape when there is one (apply time), so
  that a parameter initialised for another input size is accepted as it is; at init, `shape`."""
  if module.has_variable("params", name):
    shape = jnp.shape(flax.core.meta.unbox(module.get_variable("params", name)))
  return module.param(name, init, shape)


def resize_rows(table, length: int):
  """A relative-position table [L, d] -> [length, d], linearly as ViTDet's `get_rel_pos` (torch
  `F.interpolate(mode='linear', align_corners=False)`); returned as it is when L == length."""
  if table.shape[0] == length:
    return table
  mat = jnp.asarray(interpolation_matrix(table.shape[0], length), table.dtype)
  return jnp.einsum("li,id->ld", mat, table, precision=jax.lax.Precision.HIGHEST)


def resize_grid(pos, h: int, w: int):
  """A position embedding [1, H, W, D] -> [1, h, w, D], bicubically as ViTDet's `get_abs_pos` (torch
  `F.interpolate(mode='bicubic', align_corners=False)`, `bicubic_matrix` per axis); as it is when (H, W) == (h, w)."""
  if pos.shape[1:3] == (h, w):
    return pos
  my = jnp.asarray(bicubic_matrix(pos.shape[1], h), pos.dtype)
  mx = jnp.asarray(bicubic_matrix(pos.shape[2], w), pos.dtype)
  return jnp.einsum("Yy,byxd,Xx->bYXd", my, pos, mx, precision=jax.lax.Precision.HIGHEST)


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
  """Multi-head self-attention over a [B, H, W, C] grid with optional decomposed relative position bias; the tables
  `rel_pos_h` / `rel_pos_w` keep the length 2 H - 1 / 2 W - 1 of the grid at init and are resized linearly (ViTDet's
  `get_rel_pos`) when applied to another grid."""
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
      init = nn.with_logical_partitioning(nn.initializers.zeros, (None, None))
      rh = resize_rows(param_as_stored(self, "rel_pos_h", init, (2 * h - 1, dh)), 2 * h - 1)
      rw = resize_rows(param_as_stored(self, "rel_pos_w", init, (2 * w - 1, dh)), 2 * w - 1)
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
  """images [B, H, W, 3] (normalised) -> {'res2': stride 4, 'res3': 8, 'res4': 16, 'res5': 32}, `out_dim` channels.

  Any image size: `pos_embed` and the global blocks' tables stay at the init image's token grid and are resized to
  the current one when it differs (module docstring)."""
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
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, None, "embed"))
    pos = resize_grid(param_as_stored(self, "pos_embed", init, (1, h, w, d)), h, w)  # stored grid: as it is
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
      f = ConvSame(self.out_dim, conv_kernel_init(), dtype=self.dtype, name=f"{name}_output")(f)
      out[name] = nn.LayerNorm(dtype=self.dtype, name=f"{name}_norm2")(f)
    return out


# Pretrained plain-ViT weights -> the trunk of `ViTDet` (patch_embed, pos_embed, block_i). Pure numpy on a state
# dict of numpy arrays or torch tensors; scripts/convert_weights.py reads the files. The simple feature pyramid is
# never in such a checkpoint, nor are relative-position tables in MAE/timm ones (ViTDet starts them at zero).

HF_VITDET = "Hugging Face transformers VitDetModel"
MAE = "MAE / timm VisionTransformer"
MAE_IGNORED = ("cls_token", "mask_token", "norm.", "fc_norm.", "head.", "decoder_")  # pretraining-only parts


class _StateDict:
  """A state dict as float32 numpy arrays that remembers which keys were read, so that keys nobody read (a block
  this model lacks) fail loudly, and names the layout it expected when a key is missing."""

  def __init__(self, state_dict, layout: str):
    self.layout = layout
    self.arrays = {k: np.asarray(v.detach().float().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
                   for k, v in state_dict.items()}
    self.read = set()

  def __contains__(self, key):
    return key in self.arrays

  def __getitem__(self, key):
    if key not in self.arrays:
      raise ValueError(f"state dict has no {key!r}: not a {self.layout} state dict (have e.g. "
                       f"{sorted(self.arrays)[:4]})")
    self.read.add(key)
    return self.arrays[key]

  def num_blocks(self, prefix: str) -> int:
    """1 + the largest N of the keys `{prefix}.N.*` (0 when there are none)."""
    ids = [int(k[len(prefix) + 1:].split(".")[0]) for k in self.arrays if k.startswith(prefix + ".")]
    return max(ids, default=-1) + 1

  def check_all_read(self, ignored=()):
    unread = sorted(k for k in self.arrays if k not in self.read and not k.startswith(tuple(ignored)))
    if unread:
      raise ValueError(f"state dict keys not understood as a {self.layout} for ViTDet: {unread[:5]}")


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch `F.interpolate(mode='bicubic', align_corners=False)` along one axis.

  Source coordinate s = (i + 0.5) in / out - 0.5 (not clamped); taps floor(s) - 1 .. floor(s) + 2, clamped to the
  edge pixels, with Keys' cubic convolution weights at A = -0.75 (torch's); equal sizes give the identity.
  """
  a = -0.75
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  i0 = np.floor(src).astype(np.int64)
  t = src - i0
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], 1)
  taps = np.clip(i0[:, None] + np.arange(-1, 3), 0, in_size - 1)
  mat = np.zeros((out_size, in_size))
  np.add.at(mat, (np.arange(out_size)[:, None], taps), weights)
  return mat


def resize_pos_embed(pos: np.ndarray, grid) -> np.ndarray:
  """A pretrained absolute position embedding [1, (1 +) S * S, D] -> `pos_embed` [1, h, w, D] for `grid` = (h, w).

  The cls slot (present when the count is a square plus one) is dropped and the S x S grid resized bicubically,
  as ViTDet's `get_abs_pos` and HF's VitDetEmbeddings do on every call (`ViTDet` does so, in jax, for a grid other
  than its stored one).
  """
  pos = pos.reshape(-1, pos.shape[-1])
  if math.isqrt(pos.shape[0] - 1) ** 2 == pos.shape[0] - 1:
    pos = pos[1:]
  s = math.isqrt(pos.shape[0])
  if s * s != pos.shape[0]:
    raise ValueError(f"position embedding of {pos.shape[0]} positions is not a square grid (with or without cls)")
  out = np.einsum("hi,wj,ijd->hwd", bicubic_matrix(s, grid[0]), bicubic_matrix(s, grid[1]),
                  pos.reshape(s, s, -1).astype(np.float64))
  return out[None].astype(np.float32)


def resize_rel_pos(table: np.ndarray, length: int) -> np.ndarray:
  """A relative-position table [L, head_dim] -> [length, head_dim], linearly as ViTDet's / HF's `get_rel_pos`
  (torch `F.interpolate(mode='linear', align_corners=False)`) when the table was trained for another size."""
  return (interpolation_matrix(table.shape[0], length).astype(np.float64) @ table).astype(np.float32)


def _linear(sd: _StateDict, name: str) -> dict:
  return {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}


def _norm(sd: _StateDict, name: str) -> dict:
  return {"scale": sd[f"{name}.weight"], "bias": sd[f"{name}.bias"]}


def _trunk(sd: _StateDict, grid, patch: str, pos: str, blocks: str, names: dict) -> dict:
  """patch_embed, pos_embed and every block's norms and linears; `names` maps ours to the layout's module names."""
  params = {"patch_embed": {"kernel": sd[f"{patch}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"{patch}.bias"]},
            "pos_embed": resize_pos_embed(sd[pos], grid)}
  for i in range(max(sd.num_blocks(blocks), 1)):  # none: block 0's first key is named missing
    b = f"{blocks}.{i}"
    params[f"block_{i}"] = {
        "norm1": _norm(sd, f"{b}.norm1"),
        "attn": {"qkv": _linear(sd, f"{b}.{names['qkv']}"), "proj": _linear(sd, f"{b}.{names['proj']}")},
        "norm2": _norm(sd, f"{b}.norm2"),
        "fc1": _linear(sd, f"{b}.mlp.fc1"),
        "fc2": _linear(sd, f"{b}.mlp.fc2"),
    }
  return params


def convert_hf_vitdet(state_dict, grid, window_size: int, global_blocks) -> dict:
  """A transformers `VitDetModel` / `VitDetBackbone` state dict -> `ViTDet` trunk params for a `grid` = (h, w) of
  tokens (image size / patch size) with `window_size` windows outside `global_blocks` (the target config's).

  The position embedding (pretrain size + cls slot) is resized to `grid` as HF does at run time, and each
  relative-position table to 2 * window - 1 (windowed blocks) or 2 * grid - 1 (global blocks), as HF's
  `get_rel_pos` does when the image differs from `config.image_size`. HF's `residual_block_indices` blocks have no
  counterpart here and are refused.
  """
  sd = _StateDict(state_dict, HF_VITDET)
  params = _trunk(sd, grid, "embeddings.projection", "embeddings.position_embeddings", "encoder.layer",
                  {"qkv": "attention.qkv", "proj": "attention.proj"})
  residual = sorted({k.split(".")[2] for k in sd.arrays if k.startswith("encoder.layer.") and ".residual." in k})
  if residual:
    raise ValueError(f"{HF_VITDET} blocks {residual} have residual bottleneck blocks (residual_block_indices), "
                     f"which ViTDet here does not have")
  for i in range(sd.num_blocks("encoder.layer")):
    attn = f"encoder.layer.{i}.attention"
    if f"{attn}.rel_pos_h" in sd:
      size = grid if not window_size or i in tuple(global_blocks) else (window_size, window_size)
      params[f"block_{i}"]["attn"]["rel_pos_h"] = resize_rel_pos(sd[f"{attn}.rel_pos_h"], 2 * size[0] - 1)
      params[f"block_{i}"]["attn"]["rel_pos_w"] = resize_rel_pos(sd[f"{attn}.rel_pos_w"], 2 * size[1] - 1)
  sd.check_all_read()
  return params


def convert_mae(state_dict, grid) -> dict:
  """An MAE (pretraining or fine-tuned) / timm `VisionTransformer` state dict -> `ViTDet` trunk params for a
  `grid` = (h, w) of tokens. cls token, mask token, final norm, head and MAE decoder are dropped; the position
  embedding is resized to `grid` (cls slot dropped, bicubic) as ViTDet does; no relative-position tables."""
  sd = _StateDict(state_dict, MAE)
  params = _trunk(sd, grid, "patch_embed.proj", "pos_embed", "blocks", {"qkv": "attn.qkv", "proj": "attn.proj"})
  sd.check_all_read(MAE_IGNORED)
  return params
