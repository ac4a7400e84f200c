"""Accelerator benchmarks: matching speed-up over scipy and whole-step MFU of the ViT-B recipe in bf16.

  python benchmarks/bench_gpu.py --out bench_gpu.json             # everything, in priority order
  python benchmarks/bench_gpu.py --out bench_gpu.json --budget_s 400

Runs on whatever accelerator JAX sees (`benchmarks/bench.py` is the CPU suite). In order, each written to
`--out` as soon as it finishes so that a run cut short keeps what it measured:
  matching     B=16, Q=100, N=100: the jitted batched Hungarian matching vs a scipy loop on the host, with
               every target real and with 20 of 100 real (the rest padding, as in training)
  vitb_parts   the step's parts timed alone (bench_train.breakdown) for the ViT-B recipe without remat
  vitb_remat   configs/dataseg_vitdet_b.py as the paper trains it: 1024x1024, batch 16, 100 queries,
               bf16 activations, remat per ViT block
  vitb_remat_dense  the same with the dense criterion (config.loss.sampling='dense')
  vitb         vitb_remat without remat
  criterion    the criterion alone at the paper's sizes (10 layers, B=16, 12544 points)
  criterion_dense  the same with the dense criterion (every cell of the 128x128 mask grid)
  r50          configs/dataseg_r50.py at 1024x1024, batch 16, bf16
MFU counts model FLOPs (3 x the forward pass) over the device's dense bf16 peak (`dataseg_jax.hardware.PEAK_FLOPS`); HFU
counts everything XLA does in the compiled step. A variant is skipped once `--budget_s` has passed.
"""
import argparse
import json
import pathlib
import time

import jax

from dataseg_jax import hardware

import bench_losses  # the sibling files of benchmarks/ (a script's own folder comes first on sys.path)
import bench_train


def vitb_config(remat: bool, sampling: str = "points"):
  c = bench_train.load_config("dataseg_vitdet_b")
  c.model.backbone.remat = remat
  c.loss.sampling = sampling
  c.data.image_size = c.data.eval_size = 1024
  c.data.batch_size = 16
  c.model.num_queries = 100
  c.model.dtype = "bfloat16"
  return c


def r50_config():
  c = bench_train.load_config("dataseg_r50")
  c.data.image_size = c.data.eval_size = 1024
  c.data.batch_size = 16
  c.model.dtype = "bfloat16"
  return c


VARIANTS = {
    "matching": bench_losses.bench_matching,
    "vitb_parts": lambda: bench_train.breakdown(vitb_config(remat=False), classes_per_dataset=150),
    "vitb_remat": lambda: bench_train.bench(vitb_config(remat=True), 5, classes_per_dataset=150),
    "vitb_remat_dense": lambda: bench_train.bench(vitb_config(remat=True, sampling="dense"), 5, classes_per_dataset=150),
    "vitb": lambda: bench_train.bench(vitb_config(remat=False), 5, classes_per_dataset=150),
    "criterion": bench_losses.bench_criterion,
    "criterion_dense": lambda: bench_losses.bench_criterion(sampling="dense"),
    "r50": lambda: bench_train.bench(r50_config(), 5, classes_per_dataset=150),
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="bench_gpu.json")
  p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
  p.add_argument("--budget_s", type=float, default=float("inf"), help="start no variant after this many seconds")
  args = p.parse_args()
  start = time.perf_counter()
  results = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "num_devices": jax.device_count()}
  out = pathlib.Path(args.out)
  for name in args.only.split(","):
    if time.perf_counter() - start > args.budget_s:
      results[name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
      continue
    t0 = time.perf_counter()
    try:
      results[name] = VARIANTS[name]()
    except Exception as e:  # a failing variant must not lose the others' numbers
      results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(results, indent=1))
    print(name, json.dumps(results[name]), flush=True)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
