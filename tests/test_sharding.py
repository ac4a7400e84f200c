"""Mesh and sharding rules (dataseg_jax/sharding.py); 8 forced CPU devices train like one device."""
import json
import math
import os
import pathlib
import runpy
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from dataseg_jax import config as config_lib
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.models import dataseg

TESTS = pathlib.Path(__file__).resolve().parent


def test_mesh_shape_resolves_minus_one_and_rejects_bad_products():
  assert sharding_lib.mesh_shape((-1, 1), 8, "replicate") == (8, 1)
  assert sharding_lib.mesh_shape((8, -1), 8, "fsdp") == (8, 1)
  assert sharding_lib.mesh_shape((4, -1), 8, "logical") == (4, 2)
  with pytest.raises(ValueError, match=r"shape=\(2, 4\): mesh.param_sharding='fsdp' shards nothing over 'model', "
                                       r"so its 4 devices would repeat the same work; use \(8, 1\)"):
    sharding_lib.mesh_shape((2, -1), 8, "fsdp")
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    sharding_lib.mesh_shape((2, 3), 8, "logical")
  with pytest.raises(ValueError, match="at most one entry"):
    sharding_lib.mesh_shape((-1, -1), 8, "logical")


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


def test_logical_names_map_to_mesh_axes_where_they_divide():
  sizes = {"data": 4, "model": 2}
  assert sharding_lib.logical_spec(("embed", "mlp"), (1024, 4096), sizes) == P("data", "model")
  assert sharding_lib.logical_spec(("mlp", "embed"), (4096, 1024), sizes) == P("model", "data")
  # 3 input channels do not split over 4 'data' devices: that axis stays whole
  assert sharding_lib.logical_spec((None, None, "conv_in", "conv_out"), (16, 16, 3, 1024), sizes) == \
      P(None, None, None, "model")
  # 'embed' takes 'data' first, so the input channels cannot use it too
  assert sharding_lib.logical_spec(("conv_in", "embed"), (1024, 256), sizes) == P(None, "data")
  assert sharding_lib.logical_spec(("embed", "mlp"), (1024, 4096), {"data": 8, "model": 1}) == P("data", None)
  assert sharding_lib.logical_spec(("embed", "mlp"), (16, 64), sizes) == P()  # under MIN_SHARD_SIZE
  assert sharding_lib.logical_spec(None, (1024, 4096), sizes) == P()  # no names: replicated


def vitl_config():
  return runpy.run_path(str(TESTS.parent / "configs" / "dataseg_vitdet_l.py"))["get_config"]()


def vitl_params(config):
  """DataSeg ViTDet-L's parameters with their logical-axis boxes, as shapes (`jax.eval_shape`, nothing computed)."""
  model = dataseg.DataSeg(config.model)
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.uint8)
  embeddings, mask = jnp.zeros((10, config.model.embed_dim)), jnp.ones((1, 10), bool)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
  return jax.eval_shape(lambda: model.init(rngs, images, embeddings, mask, train=False)["params"])


def test_logical_rule_on_vitdet_l_shards_every_block_tensor_parallel_and_fsdp():
  """The 24 ViT-L blocks (width 1024, MLP 4096, 16 heads) on a (4, 2) mesh: attention and MLP kernels split over
  'model' on their heads / MLP axis and over 'data' on the width; biases and norms replicated. Per device the
  whole model holds between 1/8 and 1/7.5 of its parameters (counted from the specs)."""
  config = vitl_config()
  boxed = vitl_params(config)
  sizes = {"data": 4, "model": 2}
  specs = sharding_lib.param_specs(boxed, sizes, "logical")
  backbone = specs["backbone"]
  assert sorted(k for k in backbone if k.startswith("block_")) == sorted(f"block_{i}" for i in range(24))
  for i in range(24):
    b = backbone[f"block_{i}"]
    assert b["attn"]["qkv"]["kernel"] == P("data", "model")  # [1024, 3 * 16 * 64]
    assert b["attn"]["proj"]["kernel"] == P("model", "data")
    assert b["fc1"]["kernel"] == P("data", "model")  # [1024, 4096]
    assert b["fc2"]["kernel"] == P("model", "data")
    for name in ("qkv", "proj"):
      assert b["attn"][name]["bias"] == P()
    assert b["norm1"]["scale"] == P() and b["fc1"]["bias"] == P()
  assert backbone["patch_embed"]["kernel"] == P(None, None, None, "model")  # [16, 16, 3, 1024]
  assert backbone["pos_embed"] == P(None, None, None, "data")
  shapes = jax.tree.leaves(flax.core.meta.unbox(boxed))
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert len(shapes) == len(flat_specs)
  total = sum(math.prod(a.shape) for a in shapes)
  per_device = sum(math.prod(a.shape) / math.prod(sizes[m] for m in spec if m) for a, spec in zip(shapes, flat_specs))
  assert 1 / 8 <= per_device / total < 1 / 7.5, (total, per_device)


def test_batch_size_must_split_over_data_axis():
  mesh = sharding_lib.make_mesh(config_lib.base_config())
  sharding_lib.check_batch_size(mesh.shape["data"] * 3, mesh)


MEMORY_SCRIPT = """
import json, sys, types
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import test_sharding as t
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.models import dataseg
from dataseg_jax.train import loop, optimizer as optimizer_lib

def state_bytes(shape, rule):
  config = t.vitl_config()
  config.mesh.shape, config.mesh.param_sharding = shape, rule
  mesh = sharding_lib.make_mesh(config)
  vocab = types.SimpleNamespace(class_mask=np.ones((1, 10), bool))
  components = loop.Components(dataseg.DataSeg(config.model), None, vocab,
                               np.zeros((10, config.model.embed_dim), np.float32), make_iterator=None)
  size = config.data.image_size
  tx = optimizer_lib.make_optimizer(config)
  abstract, shardings, _ = loop.init_state(config, components, mesh, tx, (size, size, 3))
  compiled = jax.jit(lambda s: s.step, in_shardings=(shardings,), keep_unused=True).lower(abstract).compile()
  leaves = jax.tree.leaves(abstract)
  return {"measured": compiled.memory_analysis().argument_size_in_bytes,
          "whole": sum(a.size * a.dtype.itemsize for a in leaves),
          "state_from_specs": sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in leaves)}

runs = {f"{s[0]}x{s[1]}/{r}": state_bytes(s, r)
        for s, r in (((8, 1), "replicate"), ((8, 1), "fsdp"), ((4, 2), "logical"), ((8, 1), "logical"))}
print("RESULT=" + json.dumps(runs))
"""


def run_on_8_cpu_devices(script: str) -> dict:
  """Runs `script` in a fresh process with 8 forced CPU devices; returns the JSON it prints after 'RESULT='."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script, str(TESTS)], capture_output=True, text=True, env=env,
                        timeout=300)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")]
  assert lines, proc.stderr[-3000:]
  return json.loads(lines[0][len("RESULT="):])


def test_vitdet_l_train_state_per_device_is_an_eighth_under_fsdp_and_logical():
  """ViTDet-L's train state (params and AdamW's two moments) on 8 CPU devices: the compiled executable's
  per-device argument bytes (XLA's memory analysis) equal the sum of the shard shapes, the whole state when
  replicated, and within 5 % of an eighth of it under 'fsdp' on (8, 1) and 'logical' on (4, 2) and (8, 1) (the
  figures of docs/scaling.md)."""
  r = run_on_8_cpu_devices(MEMORY_SCRIPT)
  whole = r["8x1/replicate"]["whole"]
  assert r["8x1/replicate"]["measured"] == whole
  for name in ("8x1/fsdp", "4x2/logical", "8x1/logical"):
    assert r[name]["measured"] == r[name]["state_from_specs"]
    assert whole / 8 <= r[name]["measured"] <= 1.05 * whole / 8, (name, r[name]["measured"] / whole)


SHARDED_SCRIPT = """
import json, sys, tempfile, types
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
import test_train_step as t
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.train import checkpointing, loop, optimizer as optimizer_lib
sharding_lib.MIN_SHARD_SIZE = 16  # the tiny model's kernels are small; shard them anyway

def specs(tree):
  return sorted({str(x.sharding.spec) for x in jax.tree.leaves(tree) if x.ndim})

def config_of(shape, rule):
  config = t.tiny_config()
  config.mesh.shape, config.mesh.param_sharding = shape, rule
  config.optimizer.ema_decay = 0.9
  return config

def run(shape, rule, devices):
  mesh, jitted, state, tables = t.setup(config_of(shape, rule), devices=devices)
  rng = np.random.default_rng(0)
  losses = []
  for i in range(4):
    state, m = jitted(state, sharding_lib.global_batch(t.make_batch(rng, 8, i % 3), mesh), *tables)
    losses.append(float(m["loss"]))
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
  return (losses, flat.tolist(), specs(state.params), specs(state.opt_state), specs(state.ema)), state

def restored_as_fsdp(state):
  \"\"\"Saves `state` and restores it into the (8, 1) 'fsdp' train state: (every array equal, params' specs).\"\"\"
  workdir = tempfile.mkdtemp()
  config = config_of((-1, 1), "fsdp")
  manager = checkpointing.make_manager(workdir, config)
  checkpointing.save(manager, 4, state, {"position": 4}, force=True)
  manager.wait_until_finished()
  vocab = types.SimpleNamespace(datasets=t.DATASETS, class_mask=t.CLASS_MASK)
  components = loop.Components(t.TinySeg(), t.tiny_loss, vocab, np.zeros((t.C, t.E), np.float32), None)
  abstract, _, _ = loop.init_state(config, components, sharding_lib.make_mesh(config),
                                   optimizer_lib.make_optimizer(config), (t.SIZE, t.SIZE, 3))
  restored, _ = checkpointing.restore(checkpointing.make_manager(workdir), 4, abstract, workdir)
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(state)),
                                                  jax.tree.leaves(jax.device_get(restored))))
  return same, specs(restored.params)

one, _ = run((1, 1), "replicate", jax.devices()[:1])
rep, _ = run((8, 1), "replicate", None)
fsdp, _ = run((-1, 1), "fsdp", None)
logical, state = run((4, 2), "logical", None)
print("RESULT=" + json.dumps({"devices": jax.device_count(), "one": one, "rep": rep, "fsdp": fsdp,
                              "logical": logical, "restored": restored_as_fsdp(state)}))
"""


def test_8_device_mesh_on_cpu_matches_one_device():
  """Losses and parameters after 4 steps agree to rtol 1e-5 (float32 reductions in a different order) on (8, 1)
  replicated, (8, 1) 'fsdp' and (4, 2) 'logical'; the AdamW moments and the EMA are sharded as the params, and
  a checkpoint of the 'logical' state restores into the 'fsdp' one."""
  r = run_on_8_cpu_devices(SHARDED_SCRIPT)
  assert r["devices"] == 8
  for name in ("rep", "fsdp", "logical"):
    np.testing.assert_allclose(r[name][0], r["one"][0], rtol=1e-5)
    np.testing.assert_allclose(r[name][1], r["one"][1], rtol=1e-5, atol=1e-6)
    assert r[name][3] == r[name][4] == r[name][2], name
  assert r["rep"][2] == ["P()"]
  assert any("'data'" in s for s in r["fsdp"][2]) and not any("'model'" in s for s in r["fsdp"][2])
  # conv [3, 3, 3, 8]: 3 input channels do not split over 4; query_embed [5, 8]; classifier [8, 8]
  assert r["logical"][2] == ["P('data', 'model')", "P()", "P(None, 'data')", "P(None, None, None, 'model')"]
  # a checkpoint written under (4, 2) 'logical' restores, array for array, into the (8, 1) 'fsdp' layout
  assert r["restored"] == [True, r["fsdp"][2]]
