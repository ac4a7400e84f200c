"""Parameter trees <-> flat `.npz` files with '/'-joined keys (what scripts/convert_weights.py writes).

  save_params_npz("backbone.npz", params)            # {'conv1': {'kernel': ...}, ...}
  params = load_params_npz("backbone.npz")           # the same nested dict of numpy arrays
  merged = merge_into(variables["params"]["backbone"], params)   # shapes checked key by key
"""
import numpy as np

from dataseg_jax import trees


def save_params_npz(path, params) -> None:
  """Nested dict of arrays -> .npz with one array per '/'-joined path (`trees.flatten`)."""
  np.savez(path, **trees.flatten(params))


def load_params_npz(path) -> dict:
  """The inverse of `save_params_npz`: nested dict of numpy arrays."""
  with np.load(path) as f:
    return trees.unflatten({k: f[k] for k in f.files})


def merge_into(params, loaded: dict, where: str = "params") -> dict:
  """`params` (a nested dict, e.g. a freshly initialised backbone) with every leaf of `loaded` replacing its own.

  Raises ValueError naming the key when `loaded` has a key `params` lacks or a shape differs, so a checkpoint for
  another depth or width fails at start.
  """
  out = dict(params)
  for k, v in loaded.items():
    if k not in params:
      raise ValueError(f"{where}/{k}: not in the model's parameters (have {sorted(params)[:8]}...); was the "
                       f"checkpoint converted for this config.model.backbone?")
    if isinstance(v, dict):
      out[k] = merge_into(params[k], v, f"{where}/{k}")
    else:
      if tuple(params[k].shape) != tuple(v.shape):  # arrays, tracers and ShapeDtypeStructs alike
        raise ValueError(f"{where}/{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(params[k].shape)}")
      out[k] = v.astype(np.float32)
  return out
