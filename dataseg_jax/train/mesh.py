"""The device mesh ('data', 'model'), sharding rules for parameter trees and global batches.

Sharding is data in the config (big_vision's `sharding.py` idea): `config.mesh.shape` gives the mesh and
`config.mesh.param_sharding` the rule for every array of the train state:

- `'replicate'`: every array on every device;
- `'fsdp'`: the largest axis of each array that the `'data'` axis size divides is sharded over `'data'`
  (ZeRO-3 style); arrays smaller than `FSDP_MIN_SIZE` elements or with no divisible axis stay replicated.

No rule shards over `'model'` yet, so its size must be 1 (`mesh_shape` refuses more: those devices would repeat
the same work). Batches are sharded on their leading axis over `'data'`. In a multi-host run each
process holds its own slice of the global batch and `jax.make_array_from_process_local_data` builds the global
array; `maybe_initialize_distributed` starts `jax.distributed` when the config or the environment asks for it.
"""
import logging
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "model")
FSDP_MIN_SIZE = 2 ** 14  # elements; smaller arrays are cheaper to replicate than to gather


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


def mesh_shape(shape, num_devices: int) -> tuple[int, int]:
  """Resolves one `-1` in `config.mesh.shape` to the remaining devices; checks the product."""
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
  if shape[1] != 1:
    raise ValueError(f"config.mesh.shape={shape}: no parameter or batch axis is sharded over 'model' yet, so its "
                     f"{shape[1]} devices would repeat the same work; use ({num_devices}, 1) (or (-1, 1)) and "
                     "mesh.param_sharding='fsdp' to spread the parameters over the devices")
  return shape


def make_mesh(config, devices=None) -> Mesh:
  """A `('data', 'model')` mesh over all (or the given) devices, both axes `AxisType.Auto`.

  jax 0.10 defaults `jax.make_mesh` to Explicit axes; Auto keeps the compiler free to propagate
  shardings inside the step, which is what `jax.jit(in_shardings=..., out_shardings=...)` expects.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(config.mesh.shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def fsdp_spec(shape, data_size: int) -> P:
  """PartitionSpec sharding the largest axis of `shape` divisible by `data_size` over 'data'."""
  if data_size == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % data_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "data"
      return P(*spec)
  return P()


def state_shardings(abstract_tree, mesh: Mesh, rule: str):
  """NamedSharding per leaf of a (shape-dtype) tree under `config.mesh.param_sharding` = `rule`: 'replicate' or
  'fsdp' (config.validate refuses any other)."""
  data_size = mesh.shape["data"]

  def one(leaf):
    if rule == "replicate":
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), data_size))

  return jax.tree.map(one, abstract_tree)


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
