"""The device mesh ('data', 'model'), sharding rules for parameter trees and global batches.

Sharding is data in the config (big_vision's `sharding.py` idea): `config.mesh.shape` gives the mesh and
`config.mesh.param_sharding` the rule for every parameter (the train state's EMA and optimizer moments follow
their parameter, train/state.py):

- `'replicate'`: every array on every device;
- `'fsdp'`: the largest axis of each array that the `'data'` axis size divides is sharded over `'data'`
  (ZeRO-3 style), by shape alone;
- `'logical'`: the logical axis names the model puts on its parameters (`nn.with_logical_partitioning`, listed
  in models/dataseg.py) map to mesh axes by `LOGICAL_RULES`: the widths of MLPs, attention heads, output
  channels and the text projection over `'model'` (tensor parallel), the model width, input channels and class
  rows over `'data'` (FSDP). An axis whose length the mesh axis size does not divide stays whole, and a
  parameter without names (biases, norms) is replicated.

Under every rule an array smaller than `MIN_SHARD_SIZE` elements stays replicated. Only `'logical'` shards
over `'model'`, so a `'model'` axis larger than 1 needs it (`mesh_shape` refuses it otherwise: those devices
would repeat the same work). Batches are sharded on their leading axis over `'data'`. In a multi-host run each
process holds its own slice of the global batch and `jax.make_array_from_process_local_data` builds the global
array; `maybe_initialize_distributed` starts `jax.distributed` when the config or the environment asks for it.
"""
import logging
import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "model")
MIN_SHARD_SIZE = 2 ** 14  # elements; smaller arrays are cheaper to replicate than to gather
# (logical axis name, mesh axis) in order of precedence (flax `logical_to_mesh_axes`: a name takes the first
# rule whose mesh axis no other axis of the same array holds yet).
LOGICAL_RULES = (
    ("mlp", "model"), ("heads", "model"), ("conv_out", "model"), ("vocab_embed", "model"),  # tensor parallel
    ("embed", "data"), ("conv_in", "data"), ("classes", "data"),                          # FSDP
)


def _launched_as_many_processes() -> bool:
  """True when a launcher's environment says this process is one of several."""
  env = os.environ
  return bool(env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
              or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def maybe_initialize_distributed(config) -> bool:
  """Calls `jax.distributed.initialize()` when `config.distributed` is set or a launcher's env says so.

  The coordinator, process count and index come from the cluster (TPU pod metadata, SLURM, Open MPI), or
  from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (e.g. for local multi-process runs).
  Must run before anything touches a device. Returns whether it initialised.
  """
  if jax.distributed.is_initialized() or not (config.get("distributed", False) or _launched_as_many_processes()):
    return False
  kwargs = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                               ("process_id", "JAX_PROCESS_ID")) if v in os.environ}
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def mesh_shape(shape, num_devices: int, param_sharding: str) -> tuple[int, int]:
  """Resolves one `-1` in `config.mesh.shape` to the remaining devices; checks the product, and that a
  `'model'` axis larger than 1 comes with the one rule that shards over it (`param_sharding='logical'`)."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(AXES):
    raise ValueError(f"config.mesh.shape must have {len(AXES)} entries for axes {AXES}, got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape={shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh.shape={shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh.shape={shape} needs {math.prod(shape)} devices but {num_devices} are "
                     f"available; use -1 for the 'data' axis to take all of them")
  if shape[1] != 1 and param_sharding != "logical":
    raise ValueError(f"config.mesh.shape={shape}: mesh.param_sharding={param_sharding!r} shards nothing over "
                     f"'model', so its {shape[1]} devices would repeat the same work; use ({num_devices}, 1) (or "
                     "(-1, 1)) with mesh.param_sharding='fsdp', or mesh.param_sharding='logical' (tensor "
                     "parallel over 'model')")
  return shape


def make_mesh(config, devices=None) -> Mesh:
  """A `('data', 'model')` mesh over all (or the given) devices, both axes `AxisType.Auto`.

  jax 0.10 defaults `jax.make_mesh` to Explicit axes; Auto keeps the compiler free to propagate
  shardings inside the step, which is what `jax.jit(in_shardings=..., out_shardings=...)` expects.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(config.mesh.shape, len(devices), config.mesh.param_sharding)
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def fsdp_spec(shape, data_size: int) -> P:
  """PartitionSpec sharding the largest axis of `shape` divisible by `data_size` over 'data'."""
  if data_size == 1 or math.prod(shape) < MIN_SHARD_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % data_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "data"
      return P(*spec)
  return P()


def logical_spec(names, shape, axis_sizes: dict, rules=LOGICAL_RULES) -> P:
  """PartitionSpec of an array with logical axis `names`: each name's mesh axis by `rules`, kept only where the
  mesh axis has more than one device and divides the array's length on that axis."""
  if names is None or math.prod(shape) < MIN_SHARD_SIZE:
    return P()
  mesh_axes = nn.logical_to_mesh_axes(names, rules)
  return P(*(a if a is not None and axis_sizes[a] > 1 and n % axis_sizes[a] == 0 else None
             for a, n in zip(mesh_axes, shape)))


def is_boxed(x) -> bool:
  """True for a parameter with logical axis names (a flax `LogicallyPartitioned` box)."""
  return isinstance(x, nn.LogicallyPartitioned)


def param_specs(params, axis_sizes: dict, rule: str):
  """PartitionSpec per parameter under `config.mesh.param_sharding` = `rule` (module docstring).

  `params` is `model.init(...)['params']` (arrays or `jax.eval_shape`'s shapes) with its logical-axis boxes;
  the result has the unboxed tree's structure. `axis_sizes` maps mesh axis names to sizes (`mesh.shape`);
  `rule` is one of config.PARAM_SHARDINGS (config.validate refuses any other).
  """

  def one(leaf):
    names, shape = (leaf.names, leaf.value.shape) if is_boxed(leaf) else (None, np.shape(leaf))
    if rule == "replicate":
      return P()
    if rule == "fsdp":
      return fsdp_spec(shape, axis_sizes["data"])
    return logical_spec(names, shape, axis_sizes)

  return jax.tree.map(one, params, is_leaf=is_boxed)


def param_shardings(params, mesh: Mesh, rule: str):
  """NamedSharding per parameter of a boxed `params` tree (see `param_specs`) on `mesh`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, dict(mesh.shape), rule),
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over 'data', everything else replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the 'data' axis and over processes."""
  data = mesh.shape["data"]
  if global_batch % data:
    raise ValueError(f"config.data.batch_size={global_batch} is not divisible by the mesh 'data' axis "
                     f"({data} devices); pick a multiple of {data}")
  if global_batch % jax.process_count():
    raise ValueError(f"config.data.batch_size={global_batch} is not divisible by the process count "
                     f"{jax.process_count()}")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's numpy slice of the batch -> global jax arrays sharded over 'data' (async transfer).

  `jax.make_array_from_process_local_data` places each process's rows on its own devices; with one process
  it is a sharded `device_put`.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def global_array_from_whole(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array laid out as `sharding` from `x`, which every process holds whole (evaluation batches): each
  process places the pieces of its own devices."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def prefetch_to_mesh(iterator, mesh: Mesh, size: int):
  """Yields `(global batch, iterator state after it)`, keeping `size` transfers in flight (flax's prefetch idea).

  The host iterator runs ahead of the step by `size` batches, so its position is read right after each batch
  is drawn (`iterator.get_state()`) and travels with that batch: a checkpoint at step `s` stores the position
  after batch `s`, not after the prefetched ones.
  """
  queue = []
  for batch in iterator:
    queue.append((global_batch(batch, mesh), iterator.get_state()))
    if len(queue) > size:
      yield queue.pop(0)
  while queue:
    yield queue.pop(0)
