"""AdamW recipe: the schedule against a numpy transcription, backbone multiplier, decay mask, clipping."""
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


def test_unknown_schedule_names_the_key():
  with pytest.raises(ValueError, match="config.optimizer.schedule"):
    optimizer_lib.learning_rate_schedule(cfg("step"))


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


def test_weight_decay_applies_to_kernels_only():
  mask = optimizer_lib.weight_decay_mask(params())
  assert mask["backbone"]["kernel"] and mask["transformer_decoder"]["kernel"]
  assert not mask["backbone"]["bias"] and not mask["transformer_decoder"]["query_embed"]
  assert not mask["transformer_decoder"]["norm"]["scale"]
  p = params()
  tx = optimizer_lib.make_optimizer(cfg(warmup=0, wd=0.5, mult=1.0))
  zeros = {k: {n: (jnp.zeros_like(v) if not isinstance(v, dict) else {"scale": jnp.zeros(4)}) for n, v in d.items()}
           for k, d in p.items()}
  updates, _ = tx.update(zeros, tx.init(p), p)
  np.testing.assert_allclose(updates["backbone"]["kernel"], -1e-3 * 0.5 * 1.0, rtol=1e-5)  # -lr * wd * p
  np.testing.assert_allclose(updates["backbone"]["bias"], 0.0)


def test_gradients_are_clipped_to_global_norm():
  p = {"w": jnp.zeros(4)}
  c = cfg(warmup=0, clip=1.0, mult=1.0)
  tx = optimizer_lib.make_optimizer(c)
  state = tx.init(p)
  big = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50 -> clipped to [0.6, 0.8, 0, 0]
  _, state = tx.update(big, state, p)
  mu = state[1].inner_states["rest"].inner_state[0].mu["w"]
  np.testing.assert_allclose(mu, 0.1 * np.array([0.6, 0.8, 0.0, 0.0]), rtol=1e-5)  # Adam b1 = 0.9
