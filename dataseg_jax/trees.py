"""Nested mappings <-> flat dicts with joined keys: the one flattener of parameter trees (checkpoint .npz files,
the export's `params.npz`), configs (training's hyperparameter record) and benchmark results.

  flatten({'a': {'b': x}, 'c': y}) == {'a/b': x, 'c': y};  unflatten(flatten(t)) == t
A node is a mapping when it has `.items()` (dict, flax FrozenDict, ml_collections ConfigDict); every other value is
a leaf, kept as it is. Empty mappings have no leaf and vanish. Pure Python (no numpy, jax or flax here).
"""


def flatten(tree, sep: str = "/") -> dict:
  """{'a': {'b': x}} -> {'a' + sep + 'b': x}, leaves in the tree's order. A key holding `sep` is a ValueError: its
  flat key could not be split back."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if sep in str(k):
        raise ValueError(f"key {prefix + str(k)!r} contains {sep!r}, the separator of flattened keys; rename it")
      if hasattr(v, "items"):
        walk(v, f"{prefix}{k}{sep}")
      else:
        out[f"{prefix}{k}"] = v

  walk(tree, "")
  return out


def unflatten(flat: dict, sep: str = "/") -> dict:
  """{'a' + sep + 'b': x} -> {'a': {'b': x}}, the inverse of `flatten` (nested plain dicts)."""
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
