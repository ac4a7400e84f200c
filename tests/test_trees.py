"""The one tree flattener: '/'-joined keys, round trip, mappings of every kind, the separator refused in a key."""
import json
import re

import flax
import ml_collections
import numpy as np
import pytest

from dataseg_jax import trees
from dataseg_jax.train import loop


def test_flatten_joins_paths_and_unflatten_inverts_it():
  x, y, z = np.arange(3), np.ones((2, 2)), 7
  tree = {"backbone": {"conv1": {"kernel": x, "bias": y}}, "head": {"w": z}, "top": x, "empty": {}}
  flat = trees.flatten(tree)
  assert list(flat) == ["backbone/conv1/kernel", "backbone/conv1/bias", "head/w", "top"]  # tree order, {} vanishes
  assert flat["backbone/conv1/bias"] is y and flat["head/w"] == 7  # leaves as they are
  back = trees.unflatten(flat)
  assert set(back) == {"backbone", "head", "top"} and back["backbone"]["conv1"]["bias"] is y
  assert trees.flatten(back) == flat


def test_flatten_walks_frozendict_and_configdict():
  frozen = flax.core.FrozenDict({"a": {"b": 1, "c": {"d": 2}}})
  assert trees.flatten(frozen) == {"a/b": 1, "a/c/d": 2}
  config = ml_collections.ConfigDict({"optimizer": {"learning_rate": 1e-4, "decay": [1, 2]}, "seed": 0})
  assert trees.flatten(config, sep=".") == {"optimizer.learning_rate": 1e-4, "optimizer.decay": [1, 2], "seed": 0}
  assert trees.unflatten(trees.flatten(config, sep="."), sep=".") == config.to_dict()


def test_flatten_config_matches_an_independent_walk():
  config = ml_collections.ConfigDict({"a": {"b": 1, "c": (2, 3), "d": {"e": "x", "f": None}}, "g": True})
  want = {"a.b": 1, "a.c": json.dumps((2, 3)), "a.d.e": "x", "a.d.f": json.dumps(None), "g": True}
  assert loop.flatten_config(config) == want


@pytest.mark.parametrize("sep", ["/", "."])
def test_a_key_holding_the_separator_is_refused(sep):
  with pytest.raises(ValueError, match=re.escape(f"key 'outer{sep}a{sep}b' contains '{sep}'")):
    trees.flatten({"outer": {f"a{sep}b": 1}}, sep=sep)
