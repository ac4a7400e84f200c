"""The train state: everything a restart needs besides the data iterator position.

`TrainState` is a pytree (flax `struct.dataclass`), so it goes through `jax.jit` shardings, donation and
orbax unchanged. The RNG is a raw `uint32[2]` key (checkpointable as a plain array); the step's key is
`fold_in(rng, step)`, so a resumed run draws the same randomness as an uninterrupted one.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """params: model parameters (float32); opt_state: optax state; step: int32 [] steps taken (skipped
  ones included); rng: uint32 [2]; ema: exponential moving average of params, or None when
  `optimizer.ema_decay = 0`; nonfinite_streak / nonfinite_total: int32 [] consecutive / all skipped updates."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema: Any
  nonfinite_streak: jax.Array
  nonfinite_total: jax.Array


def create(params, tx: optax.GradientTransformation, rng: jax.Array, ema_decay: float) -> TrainState:
  """A fresh state at step 0; `ema` starts as a copy of `params` when EMA is on."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
      ema=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
      nonfinite_streak=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32))


def shardings(abstract_state: TrainState, param_shardings, tx: optax.GradientTransformation, replicated):
  """Sharding per leaf of `abstract_state` (a `jax.eval_shape` of `create`): the params and EMA in
  `param_shardings`, each per-parameter optimizer array (AdamW's moments) in its parameter's sharding
  (`optax.tree_map_params`), everything else (step, rng, counts) `replicated`."""
  def follow(leaf, sharding):  # a parameter group's moments hold `MaskedNode`s for the other group's params
    return leaf if isinstance(leaf, optax.MaskedNode) else sharding

  opt = optax.tree_map_params(tx, follow, abstract_state.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated,
                              is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return abstract_state.replace(
      step=replicated, params=param_shardings, opt_state=opt, rng=replicated,
      ema=None if abstract_state.ema is None else param_shardings,
      nonfinite_streak=replicated, nonfinite_total=replicated)


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params (Polyak averaging)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
