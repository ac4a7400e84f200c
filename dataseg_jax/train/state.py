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


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params (Polyak averaging)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
