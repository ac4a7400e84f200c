"""ViTDet backbone: decomposed relative-position attention vs a plain-loop numpy transcription of ViTDet's
`add_decomposed_rel_pos`, windowed blocks mix tokens only within a window, the simple feature pyramid's strides."""
import flax
import jax
import jax.numpy as jnp
import numpy as np

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
