"""AdamW recipe: the schedule against a numpy transcription, backbone multiplier, decay mask, clipping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax import config as config_lib
from dataseg_jax.train import optimizer as optimizer_lib


def cfg(schedule="poly", warmup=10, total=100, clip=0.0, wd=0.0, mult=0.1):
  c = config_lib.base_config()
  c.total_steps = total
  o = c.optimizer
  o.schedule, o.warmup_steps, o.clip_norm, o.weight_decay, o.backbone_multiplier = schedule, warmup, clip, wd, mult
  o.learning_rate = 1e-3
  return c


def reference_lr(t, schedule, warmup, total, base=1e-3):
  """detectron2 WarmupPolyLR / cosine, written out in numpy."""
  warm = min(1.0, (t + 1) / warmup) if warmup else 1.0
  frac = min(t / total, 1.0)
  decay = {"poly": (1 - frac) ** 0.9, "cosine": 0.5 * (1 + np.cos(np.pi * frac)), "constant": 1.0}[schedule]
  return base * warm * decay


@pytest.mark.parametrize("schedule", ["poly", "cosine", "constant"])
def test_schedule_matches_numpy_transcription(schedule):
  fn = optimizer_lib.learning_rate_schedule(cfg(schedule))
  for t in (0, 4, 9, 10, 50, 99, 100, 150):
    np.testing.assert_allclose(float(fn(t)), reference_lr(t, schedule, 10, 100), rtol=1e-5, atol=1e-9)  # float32 cos near pi


def params():
  return {"backbone": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
          "transformer_decoder": {"kernel": jnp.ones((3, 4)), "query_embed": jnp.ones((2, 4)),
                                  "norm": {"scale": jnp.ones(4)}}}


def test_backbone_update_is_scaled_by_the_multiplier():
  p = params()
  tx = optimizer_lib.make_optimizer(cfg(warmup=0, mult=0.1))
  grads = {k: {n: jnp.full_like(v, 0.5) if not isinstance(v, dict) else {"scale": jnp.full_like(v["scale"], 0.5)}
               for n, v in d.items()} for k, d in p.items()}
  updates, _ = tx.update(grads, tx.init(p), p)
  # Adam's first step moves every coordinate by lr * sign(g) (bias-corrected m / sqrt(v) = 1).
  np.testing.assert_allclose(updates["transformer_decoder"]["kernel"], -1e-3, rtol=1e-4)
  np.testing.assert_allclose(updates["backbone"]["kernel"], -1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["toy", "vit_relpos", "r50"])
def test_weight_decay_mask_on_the_model_follows_mask2former(name):
  """On DataSeg's own parameter tree: every kernel and bias is decayed except those of normalisation layers,
  the nn.Embedding counterparts (query features and positions, the decoder's level embedding), ViTDet's position
  embedding and the classifier's background and temperature; the pixel decoder's level embedding (an
  nn.Parameter in Mask2Former) and the mask-embedding MLP are decayed."""
  import flax
  from test_models_dataseg import inputs, tiny
  from dataseg_jax.models import dataseg
  m, size = tiny(name)
  shapes = jax.eval_shape(dataseg.DataSeg(m).init, jax.random.key(0), *inputs(m, size))
  params = flax.core.meta.unbox(shapes["params"])
  mask = {"/".join(optimizer_lib.path_names(p)): v
          for p, v in jax.tree_util.tree_flatten_with_path(optimizer_lib.weight_decay_mask(params))[0]}
  batch_norms = ("bn1", "bn2", "bn3", "downsample_bn")  # ResNet's; the LayerNorms and GroupNorms are '*norm*'
  expected_off = {k for k in mask if "norm" in k.split("/")[-2] or k.split("/")[-2] in batch_norms}
  expected_off |= {k for k in mask if k.split("/")[-1] in ("query_feat", "query_pos", "pos_embed", "background",
                                                            "log_temperature")}
  expected_off.add("transformer_decoder/level_embed")
  assert {k for k, v in mask.items() if not v} == expected_off
  assert mask["pixel_decoder/level_embed"] and mask["transformer_decoder/mask_embed/layer0/kernel"]
  assert mask["transformer_decoder/layer_0/linear1/bias"] and not mask["transformer_decoder/decoder_norm/scale"]
  assert len(expected_off) > 10 and sum(mask.values()) > 20


def test_weight_decay_applies_where_the_mask_says():
  mask = optimizer_lib.weight_decay_mask(params())
  assert mask["backbone"]["kernel"] and mask["backbone"]["bias"] and mask["transformer_decoder"]["kernel"]
  assert not mask["transformer_decoder"]["norm"]["scale"]
  p = params()
  tx = optimizer_lib.make_optimizer(cfg(warmup=0, wd=0.5, mult=1.0))
  zeros = {k: {n: (jnp.zeros_like(v) if not isinstance(v, dict) else {"scale": jnp.zeros(4)}) for n, v in d.items()}
           for k, d in p.items()}
  updates, _ = tx.update(zeros, tx.init(p), p)
  np.testing.assert_allclose(updates["backbone"]["kernel"], -1e-3 * 0.5 * 1.0, rtol=1e-5)  # -lr * wd * p
  np.testing.assert_allclose(updates["transformer_decoder"]["norm"]["scale"], 0.0)


def test_gradients_are_clipped_to_global_norm():
  p = {"w": jnp.zeros(4)}
  c = cfg(warmup=0, clip=1.0, mult=1.0)
  tx = optimizer_lib.make_optimizer(c)
  state = tx.init(p)
  big = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50 -> clipped to [0.6, 0.8, 0, 0]
  _, state = tx.update(big, state, p)
  mu = state[1].inner_states["rest"].inner_state[0].mu["w"]
  np.testing.assert_allclose(mu, 0.1 * np.array([0.6, 0.8, 0.0, 0.0]), rtol=1e-5)  # Adam b1 = 0.9
