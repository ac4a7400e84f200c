"""Mesh and sharding rules (dataseg_jax/sharding.py); 8 forced CPU devices train like one device."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from dataseg_jax import config as config_lib
from dataseg_jax import sharding as sharding_lib

TESTS = pathlib.Path(__file__).resolve().parent


def test_mesh_shape_resolves_minus_one_and_rejects_bad_products():
  assert sharding_lib.mesh_shape((-1, 1), 8) == (8, 1)
  assert sharding_lib.mesh_shape((8, -1), 8) == (8, 1)
  with pytest.raises(ValueError, match=r"shape=\(2, 4\): .*its 4 devices would repeat the same work; use \(8, 1\)"):
    sharding_lib.mesh_shape((2, -1), 8)
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    sharding_lib.mesh_shape((2, 3), 8)
  with pytest.raises(ValueError, match="at most one entry"):
    sharding_lib.mesh_shape((-1, -1), 8)


def test_mesh_axes_are_data_model_and_auto():
  mesh = sharding_lib.make_mesh(config_lib.base_config())
  assert mesh.axis_names == ("data", "model")
  assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_fsdp_shards_the_largest_divisible_axis():
  assert sharding_lib.fsdp_spec((256, 1024), 4) == P(None, "data")
  assert sharding_lib.fsdp_spec((1024, 258), 4) == P("data", None)
  assert sharding_lib.fsdp_spec((258, 258), 4) == P()  # nothing divisible
  assert sharding_lib.fsdp_spec((64,), 4) == P()  # too small to be worth it
  assert sharding_lib.fsdp_spec((256, 1024), 1) == P()


def test_batch_size_must_split_over_data_axis():
  mesh = sharding_lib.make_mesh(config_lib.base_config())
  sharding_lib.check_batch_size(mesh.shape["data"] * 3, mesh)


SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import test_train_step as t
from dataseg_jax import sharding as sharding_lib
sharding_lib.FSDP_MIN_SIZE = 16  # the tiny model's kernels are small; shard them anyway

def run(shape, rule, devices):
  config = t.tiny_config()
  config.mesh.shape, config.mesh.param_sharding = shape, rule
  config.optimizer.ema_decay = 0.9
  mesh, jitted, state, tables = t.setup(config, devices=devices)
  rng = np.random.default_rng(0)
  losses = []
  for i in range(4):
    state, m = jitted(state, sharding_lib.global_batch(t.make_batch(rng, 8, i % 3), mesh), *tables)
    losses.append(float(m["loss"]))
  specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.params)})
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
  return losses, flat.tolist(), specs

one = run((1, 1), "replicate", jax.devices()[:1])
rep = run((8, 1), "replicate", None)
fsdp = run((-1, 1), "fsdp", None)
print("RESULT=" + json.dumps({"devices": jax.device_count(), "one": one, "rep": rep, "fsdp": fsdp}))
"""


def test_8_device_mesh_on_cpu_matches_one_device():
  """Losses and parameters after 4 steps agree to rtol 1e-5 (float32 reductions in a different order)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(TESTS)], capture_output=True, text=True,
                        env=env, timeout=300)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")]
  assert lines, proc.stderr[-3000:]
  r = json.loads(lines[0][len("RESULT="):])
  assert r["devices"] == 8
  for name in ("rep", "fsdp"):
    np.testing.assert_allclose(r[name][0], r["one"][0], rtol=1e-5)
    np.testing.assert_allclose(r[name][1], r["one"][1], rtol=1e-5, atol=1e-6)
  assert any("data" in s for s in r["fsdp"][2])  # fsdp really sharded something
  assert r["rep"][2] == ["P()"]
