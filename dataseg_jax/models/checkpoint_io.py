"""Parameter trees <-> flat `.npz` files with '/'-joined keys (what scripts/convert_weights.py writes).

  save_params_npz("backbone.npz", params)            # {'conv1': {'kernel': ...}, ...}
  params = load_params_npz("backbone.npz")           # the same nested dict of numpy arrays
  merged = merge_into(variables["params"]["backbone"], params)   # shapes checked key by key
"""
import numpy as np


def flatten_params(tree, prefix: str = "") -> dict:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_params(v, key + "/"))
    else:
      out[key] = np.asarray(v)
  return out


def unflatten_params(flat: dict) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_params_npz(path, params) -> None:
  np.savez(path, **flatten_params(params))


def load_params_npz(path) -> dict:
  with np.load(path) as f:
    return unflatten_params({k: f[k] for k in f.files})


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
