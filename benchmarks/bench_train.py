"""Train-step throughput of DataSeg: steps/s, images/s and the MFU estimate, for the toy and R50 configs.

  python benchmarks/bench_train.py            # toy at 128 px batch 8; R50 at 512 px, batch 2, 100 queries
  python benchmarks/bench_train.py --quick    # fewer timed steps
  python benchmarks/bench_train.py --only r50 # one config (each runs in its own process: its own peak RSS)

`r50_dense` is `r50` with the dense criterion (config.loss.sampling='dense', stride 1): matching costs and mask
losses on every cell of the mask grid as matmuls instead of point samples.

Times the real jitted step (DataSeg forward, DaTaSeg criterion, gradients, AdamW) on synthetic batches in
the batch contract, cycling through the three datasets and their tasks, after one compile. FLOPs come from
XLA's cost analysis of the CPU lowering (`loop.step_flops`): MFU counts model FLOPs (3 x the forward pass)
and HFU everything the step does (criterion, remat recompute, optimizer), both over a known accelerator
peak (`dataseg_jax.hardware.PEAK_FLOPS`); on CPU only the achieved TFLOP/s is reported.
`benchmarks/bench.py` calls `run(quick)`.
"""
import argparse
import functools
import importlib.util
import json
import pathlib
import resource
import subprocess
import sys
import time
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax import contract
from dataseg_jax import hardware

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
TASKS = (contract.Task.SEMANTIC, contract.Task.PANOPTIC, contract.Task.BOX)
SEGMENTS = 20  # per image, as many as the peer's targets (benchmarks/bench_peer.py)


def load_config(name: str):
  """`get_config()` of `configs/<name>.py`."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def r50_config():
  """The R50 recipe at 512x512, batch 2, 100 queries (the size the peer benchmark uses)."""
  c = load_config("dataseg_r50")
  c.data.image_size = c.data.eval_size = 512
  c.data.batch_size = 2
  c.model.num_queries = 100
  if jax.default_backend() == "cpu":
    c.model.dtype = "float32"  # the peer runs float32 on the CPU; bf16 matmuls are emulated there
  return c


def toy_config():
  return load_config("toy")


def synthetic_vocab(num_datasets: int, classes_per_dataset: int, embed_dim: int, seed: int = 0):
  """Disjoint class blocks per dataset and random unit text embeddings `[C, E]`."""
  c = num_datasets * classes_per_dataset
  mask = np.zeros((num_datasets, c), bool)
  for d in range(num_datasets):
    mask[d, d * classes_per_dataset:(d + 1) * classes_per_dataset] = True
  emb = np.random.default_rng(seed).normal(size=(c, embed_dim)).astype(np.float32)
  vocab = types.SimpleNamespace(datasets=tuple(f"set{d}" for d in range(num_datasets)), class_mask=mask)
  return vocab, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def synthetic_batch(config, vocab, dataset: int, rng: np.random.Generator) -> dict:
  """A batch of one dataset in the batch contract: random rectangles as segments, boxes around them."""
  d = config.data
  b, size, n = d.batch_size, d.image_size, d.max_segments
  spec = contract.batch_spec(size, size, n, d.label_stride)
  batch = {k: np.zeros((b, *shape), dtype) for k, (shape, dtype) in spec.items()}
  batch["image"] = rng.integers(0, 256, batch["image"].shape).astype(np.uint8)
  batch["valid"][:] = True
  batch["dataset_id"][:] = dataset
  batch["task"][:] = TASKS[dataset % len(TASKS)]
  classes = np.flatnonzero(vocab.class_mask[dataset])
  h = size // d.label_stride
  batch["segment_map"][:] = contract.VOID
  segments = min(n, SEGMENTS)
  for i in range(b):
    for k in range(segments):
      y0, x0 = rng.integers(0, h // 2, 2)
      y1, x1 = y0 + rng.integers(h // 8, h // 2), x0 + rng.integers(h // 8, h // 2)
      if TASKS[dataset % len(TASKS)] != contract.Task.BOX:
        batch["segment_map"][i, y0:y1, x0:x1] = k
      batch["seg_box"][i, k] = np.array([y0, x0, y1, x1], np.float32) / h
    batch["seg_class"][i, :segments] = rng.choice(classes, segments)
    batch["seg_is_thing"][i, :segments] = True
    batch["seg_valid"][i, :segments] = True
    batch["seg_has_mask"][i, :segments] = TASKS[dataset % len(TASKS)] != contract.Task.BOX
  return batch


def bench(config, steps: int, classes_per_dataset: int = 50) -> dict:
  """Compile time, median step seconds, steps/s, images/s, TFLOP/s and MFU of the real train step."""
  from dataseg_jax.losses import criterion
  from dataseg_jax.models import dataseg
  from dataseg_jax import sharding as sharding_lib
  from dataseg_jax.train import loop, optimizer as optimizer_lib, step as step_lib

  vocab, emb = synthetic_vocab(3, classes_per_dataset, config.model.embed_dim)
  model = dataseg.DataSeg(config.model)
  loss_fn = lambda outputs, batch, rng: criterion.criterion(outputs, batch, config, rng)  # noqa: E731
  components = loop.Components(model, loss_fn, vocab, emb, make_iterator=None)
  mesh = sharding_lib.make_mesh(config)
  tx = optimizer_lib.make_optimizer(config)
  size = config.data.image_size
  _, shardings, create = loop.init_state(config, components, mesh, tx, (size, size, 3))
  state = create()
  del create  # as the training loop does: the initialiser's executable is not kept
  fn = functools.partial(step_lib.train_step, model=model, loss_fn=loss_fn, tx=tx,
                         schedule=optimizer_lib.learning_rate_schedule(config), ema_decay=0.0, num_datasets=3)
  jitted = step_lib.jit_train_step(fn, mesh, shardings, sharding_lib.batch_sharding(mesh))
  rng = np.random.default_rng(0)
  batches = [sharding_lib.global_batch(synthetic_batch(config, vocab, d, rng), mesh) for d in range(3)]
  tables = (jnp.asarray(emb), jnp.asarray(vocab.class_mask))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batches[0], *tables).compile()
  compile_s = time.perf_counter() - t0
  flops = loop.step_flops(jitted, state, batches[0], *tables)
  forward = jax.jit(lambda p, i, e, m: model.apply({"params": p}, i, e, m))
  forward_flops = loop.step_flops(forward, state.params, batches[0]["image"], tables[0],
                                  tables[1][batches[0]["dataset_id"]])
  hardware.release_freed_host_memory()  # as the training loop does after compiling
  state, metrics = compiled(state, batches[0], *tables)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batches[i % 3], *tables)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  out = {"image_size": size, "batch": config.data.batch_size, "num_queries": config.model.num_queries,
         "compile_s": round(compile_s, 1), "step_s": step_s, "steps_per_s": 1.0 / step_s,
         "images_per_s": config.data.batch_size / step_s, "loss": float(metrics["loss"]),
         "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
         "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
  peak = loop.peak_flops_per_device()
  if forward_flops:  # model FLOPs: forward + backward = 3 x forward (recompute and the criterion not counted)
    out["model_gflops_per_step"] = 3 * forward_flops / 1e9
    out["model_tflops_per_s"] = 3 * forward_flops / step_s / 1e12
    if peak:
      out["mfu"] = 3 * forward_flops / step_s / peak
  if flops:  # everything in the step: criterion, remat recompute and optimizer included
    out["xla_gflops_per_step"] = flops / 1e9
    out["xla_tflops_per_s_per_device"] = flops / step_s / 1e12
    if peak:
      out["hfu"] = flops / step_s / peak
  return out


def breakdown(config, classes_per_dataset: int = 50, repeats: int = 3) -> dict:
  """Median seconds of the step's parts, each jitted alone: the backbone's forward and forward+backward,
  the model's forward and forward+backward under a trivial loss (the mean of every output), and the
  criterion's forward+backward on the model's outputs."""
  from dataseg_jax.losses import criterion
  from dataseg_jax.models import dataseg

  from dataseg_jax.train import loop

  vocab, emb = synthetic_vocab(3, classes_per_dataset, config.model.embed_dim)
  model = dataseg.DataSeg(config.model)
  batch = jax.tree.map(jnp.asarray, synthetic_batch(config, vocab, 0, np.random.default_rng(0)))
  emb, mask = jnp.asarray(emb), jnp.asarray(vocab.class_mask)[batch["dataset_id"]]
  init = jax.jit(lambda: flax.core.meta.unbox(model.init(jax.random.key(0), batch["image"][:1], emb, mask[:1])))
  params = init()["params"]

  def timed(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    return float(np.median(times))

  def apply(p):
    return model.apply({"params": p}, batch["image"], emb, mask, train=True, rngs={"dropout": jax.random.key(1)})

  def mean_of_outputs(outputs):  # a trivial loss that reaches every output
    return sum(jnp.mean(x.astype(jnp.float32)) for x in jax.tree.leaves(outputs))

  backbone = dataseg.build_backbone(config.model, jnp.dtype(config.model.dtype))
  x = batch["image"].astype(jnp.dtype(config.model.dtype))
  feats = lambda p: mean_of_outputs(backbone.apply({"params": p}, x))  # noqa: E731
  outputs = jax.jit(apply)(params)
  loss = lambda o: criterion.criterion(o, batch, config, jax.random.key(2))[0]  # noqa: E731
  return {"backbone_fwd_s": timed(feats, params["backbone"]),
          "backbone_fwd_bwd_s": timed(jax.grad(feats), params["backbone"]),
          "model_fwd_s": timed(apply, params),
          "model_fwd_bwd_s": timed(jax.grad(lambda p: mean_of_outputs(apply(p))), params),
          "criterion_fwd_bwd_s": timed(jax.value_and_grad(loss), outputs),
          "model_gflops_fwd": (loop.step_flops(jax.jit(apply), params) or 0.0) / 1e9}


NAMES = ("toy", "r50", "r50_dense")


def bench_one(name: str, quick: bool) -> dict:
  if name == "toy":
    return bench(toy_config(), 3 if quick else 10)
  config = r50_config()
  if name == "r50_dense":
    config.loss.sampling = "dense"
  return bench(config, 2 if quick else 5, classes_per_dataset=150)


def run(quick: bool = False) -> dict:
  """`{'toy': {...}, 'r50': {...}, 'r50_dense': {...}}` (see `bench`); quick times 3 / 2 steps instead of 10 / 5.
  Each config runs in a fresh process, so that its peak RSS is its own, as the peer's is."""
  out = {}
  for name in NAMES:
    proc = subprocess.run([sys.executable, __file__, "--only", name] + (["--quick"] if quick else []),
                          stdout=subprocess.PIPE, text=True, check=True)  # its stderr passes through
    out[name] = json.loads(proc.stdout.strip().splitlines()[-1])[name]
  return out


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--only", choices=NAMES, help="one config, in this process")
  args = parser.parse_args()
  if args.only:
    print(json.dumps({args.only: bench_one(args.only, args.quick)}))  # one line: run() reads it
  else:
    print(json.dumps(run(args.quick), indent=2))
