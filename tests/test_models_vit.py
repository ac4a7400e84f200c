"""ViTDet backbone: decomposed relative-position attention vs a plain-loop numpy transcription of ViTDet's
`add_decomposed_rel_pos`, windowed blocks mix tokens only within a window, the simple feature pyramid's strides,
another input size than the init one resizes the position embedding and global tables as ViTDet (the paper recipe's
1024 px init applied to 512 px ADE batches)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dataseg_vitdet_b
from dataseg_jax.models import dataseg
from dataseg_jax.models import vit

H, W, C, HEADS = 3, 4, 8, 2


def numpy_rel_pos_attention(x, p):
  """ViTDet Attention with use_rel_pos=True, one query at a time: q.k / sqrt(d) + q.R_h[qy-ky+H-1] + q.R_w[qx-kx+W-1]."""
  dh = C // HEADS
  tokens = x.reshape(H * W, C).astype(np.float64)
  qkv = tokens @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  out = np.zeros((H * W, C))
  for n in range(HEADS):
    q = qkv[:, n * dh:(n + 1) * dh]
    k = qkv[:, C + n * dh:C + (n + 1) * dh]
    v = qkv[:, 2 * C + n * dh:2 * C + (n + 1) * dh]
    for i in range(H * W):
      qy, qx = divmod(i, W)
      logits = np.zeros(H * W)
      for j in range(H * W):
        ky, kx = divmod(j, W)
        logits[j] = (q[i] @ k[j] / np.sqrt(dh) + q[i] @ p["rel_pos_h"][qy - ky + H - 1]
                     + q[i] @ p["rel_pos_w"][qx - kx + W - 1])
      a = np.exp(logits - logits.max())
      out[i, n * dh:(n + 1) * dh] = (a / a.sum()) @ v
  return (out @ p["proj"]["kernel"] + p["proj"]["bias"]).reshape(H, W, C)


def test_rel_pos_attention_equals_numpy_loops():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, H, W, C)).astype(np.float32)
  attn = vit.RelPosAttention(HEADS, rel_pos=True)
  params = flax.core.meta.unbox(attn.init(jax.random.key(0), x)["params"])
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.5, params)  # rel-pos init is 0
  got = np.asarray(attn.apply({"params": params}, x))[0]
  np.testing.assert_allclose(got, numpy_rel_pos_attention(x[0], jax.tree.map(np.asarray, params)), atol=1e-4,
                             rtol=1e-4)


def test_windowed_block_mixes_tokens_only_within_windows_global_block_everywhere():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 5, 5, C)).astype(np.float32)  # 5x5 with window 2: padded to 6x6
  perturbed = x.copy()
  perturbed[0, 4, 4] += 10 * rng.normal(size=C)  # the bottom-right window holds (4, 4) alone
  for window, isolated in ((2, True), (0, False)):
    block = vit.Block(HEADS, 16, window, rel_pos=False)
    params = block.init(jax.random.key(0), x)
    diff = np.abs(np.asarray(block.apply(params, perturbed)) - np.asarray(block.apply(params, x))).sum(-1)[0]
    others = np.delete(diff.ravel(), 4 * 5 + 4)
    assert diff[4, 4] > 1e-3
    assert (others < 1e-5).all() if isolated else (others > 1e-5).all(), window


def test_simple_feature_pyramid_strides_and_width():
  model = vit.ViTDet(16, 32, 2, 2, 64, 2, (1,), False, False, out_dim=24)
  x = jnp.zeros((2, 64, 96, 3))
  shapes = jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))[0])
  assert shapes == {"res2": (2, 16, 24, 24), "res3": (2, 8, 12, 24), "res4": (2, 4, 6, 24), "res5": (2, 2, 3, 24)}


@pytest.mark.parametrize("size", [(40, 36), (12, 16)])  # token grids 10 x 9 (larger) and 3 x 4 (smaller) than 6 x 6
def test_other_input_size_resizes_pos_embed_and_global_tables_as_vitdet(size):
  """Init at 24 x 24 px (6 x 6 tokens of 4 px), apply at `size`: the same as the model initialised at `size` with the
  stored embedding resized bicubically and the global block's tables linearly (torch-exact numpy references); the
  windowed block's window-sized tables are used as they are."""
  rng = np.random.default_rng(2)
  model = vit.ViTDet(4, 16, 2, 2, 32, 2, (1,), True, False, out_dim=8)
  x = rng.normal(size=(1, *size, 3)).astype(np.float32)
  stored = flax.core.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 24, 24, 3)))["params"])
  stored = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.5, stored)  # random, tables too
  assert stored["pos_embed"].shape == (1, 6, 6, 16) and stored["block_1"]["attn"]["rel_pos_h"].shape == (11, 8)
  h, w = size[0] // 4, size[1] // 4
  resized = jax.tree.map(lambda a: a, stored)
  resized["pos_embed"] = vit.resize_pos_embed(stored["pos_embed"], (h, w))
  attn = resized["block_1"]["attn"]
  attn["rel_pos_h"], attn["rel_pos_w"] = (vit.resize_rel_pos(attn["rel_pos_h"], 2 * h - 1),
                                          vit.resize_rel_pos(attn["rel_pos_w"], 2 * w - 1))
  at_size = flax.core.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))["params"])
  assert jax.tree.map(np.shape, resized) == jax.tree.map(np.shape, at_size)
  apply = jax.jit(lambda params: model.apply({"params": params}, x))
  got, want = apply(stored), apply(resized)
  for name in want:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), atol=1e-5, rtol=1e-5, err_msg=name)


def test_stored_grid_is_used_as_it_is():
  pos, table = jnp.ones((1, 3, 4, 2)), jnp.ones((5, 2))
  assert vit.resize_grid(pos, 3, 4) is pos and vit.resize_rows(table, 5) is table


def test_vitdet_b_recipe_initialised_at_1024_applies_at_512():
  """configs/dataseg_vitdet_b.py initialises at data.image_size 1024 while its ADE batches are 512 px (shapes only)."""
  c = dataseg_vitdet_b.get_config()
  assert c.data.image_size == 1024 and c.data.datasets.ade.image_size == 512
  model = dataseg.DataSeg(c.model)
  emb, mask = jnp.zeros((3, c.model.embed_dim)), jnp.ones((1, 3), bool)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1024, 1024, 3), jnp.uint8), emb, mask)
  assert variables["params"]["backbone"]["pos_embed"].value.shape == (1, 64, 64, 768)
  out = jax.eval_shape(model.apply, variables, jnp.zeros((1, 512, 512, 3), jnp.uint8), emb, mask)
  assert out["pred_masks"].shape[-2:] == (128, 128)
