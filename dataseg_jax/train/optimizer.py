"""AdamW with warmup + decay, a backbone learning-rate multiplier, decoupled weight decay and clipping.

The recipe is Mask2Former's, which DaTaSeg (Gu et al., NeurIPS 2023) follows [default: Mask2Former]:

  lr(t) = base_lr * w(t) * d(t)                               (detectron2 WarmupPolyLR form)
  w(t)  = min(1, (t + 1) / warmup_steps)                        linear warmup (1 when warmup_steps = 0) [ours:
                                                                Mask2Former's warm-up factor 1.0 makes it none]
  d(t)  = (1 - t / T) ** 0.9        schedule = 'poly'           T = config.total_steps
        = (1 + cos(pi * t / T)) / 2 schedule = 'cosine'
        = 1                         schedule = 'constant'

Parameters under the top-level `backbone` collection use `lr(t) * backbone_multiplier`. Gradients are clipped
to a global L2 norm of `clip_norm` over the whole model (Mask2Former's `full_model` clipping) before AdamW.
Weight decay applies to every parameter (kernels and biases, as detectron2's `build_optimizer`) except
(`weight_decay_mask`): normalisation scales and offsets (`WEIGHT_DECAY_NORM = 0`), what Mask2Former holds in
`nn.Embedding`s (`WEIGHT_DECAY_EMBED = 0`: the queries' features and positions, the decoder's level embedding),
ViTDet's absolute position embedding (its `pos_embed` override), and the classifier's shared background
embedding and temperature [paper's additions; an embedding and a scalar].
"""
import re

import jax
import jax.numpy as jnp
import optax

POLY_POWER = 0.9  # [default: Mask2Former / detectron2 WarmupPolyLR]


def learning_rate_schedule(config):
  """`t -> lr(t)` for the whole model (see the module docstring); `t` is the optimizer step; config.optimizer.schedule
  is one of config.SCHEDULES (config.validate refuses any other)."""
  o = config.optimizer
  base, warmup, total = float(o.learning_rate), int(o.warmup_steps), int(config.total_steps)

  def schedule(t):
    t = jnp.asarray(t, jnp.float32)
    warm = jnp.minimum(1.0, (t + 1.0) / warmup) if warmup > 0 else 1.0
    frac = jnp.clip(t / total, 0.0, 1.0)
    if o.schedule == "poly":
      decay = (1.0 - frac) ** POLY_POWER
    elif o.schedule == "cosine":
      decay = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:  # 'constant'
      decay = 1.0
    return base * warm * decay

  return schedule


def path_names(path) -> list[str]:
  """The key names along a `jax.tree_util` key path: `['backbone', 'stem', 'kernel']`."""
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def parameter_groups(params):
  """`'backbone'` for leaves under the top-level `backbone` key, `'rest'` otherwise (same tree as params)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "backbone" if path_names(path)[:1] == ["backbone"] else "rest", params)


# Parameters that are not decayed, by name (see the module docstring).
NO_DECAY_NAMES = ("query_feat", "query_pos", "pos_embed", "background", "log_temperature")
NO_DECAY_PATHS = (("transformer_decoder", "level_embed"),)  # the pixel decoder's is an nn.Parameter: decayed


def _is_norm(module: str) -> bool:
  """A normalisation layer's name: LayerNorm/GroupNorm modules are named '*norm*', BatchNorms 'bn*' / '*_bn'."""
  return "norm" in module or re.fullmatch(r"(.*_)?bn\d*", module) is not None


def weight_decay_mask(params):
  """True for the parameters that weight decay applies to (see the module docstring), same tree as params."""
  def decays(path, _):
    names = path_names(path)
    if names[-1] in NO_DECAY_NAMES or tuple(names[-2:]) in NO_DECAY_PATHS:
      return False
    return not (len(names) > 1 and _is_norm(names[-2]))

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW per parameter group with its own scaled schedule."""
  o = config.optimizer
  schedule = learning_rate_schedule(config)

  def adamw(multiplier):
    return optax.adamw(lambda t: schedule(t) * multiplier, weight_decay=o.weight_decay, mask=weight_decay_mask)

  parts = [optax.multi_transform({"backbone": adamw(float(o.backbone_multiplier)), "rest": adamw(1.0)},
                                 parameter_groups)]
  if o.clip_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(o.clip_norm))
  return optax.chain(*parts)
