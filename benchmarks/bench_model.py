"""Benchmarks the DataSeg forward and forward+backward (jitted, timed after compilation) and peak RSS.

  python benchmarks/bench_model.py            # toy (128x128, batch 8) and R50 (512x512, batch 2, 100 queries)
  python benchmarks/bench_model.py --quick    # toy only

toy: configs/toy.py model. r50: configs/dataseg_r50.py model (ResNet-50, 6 deformable layers, 9 decoder
layers, 100 queries) in float32. 40 union classes. The backward pass is of a stand-in loss (mean squared
mask logits + mean log-softmax of the logits) so the model alone is timed; benchmarks/bench_train.py times the
real step. Peak RSS is the process's high-water mark after that config ran (ru_maxrss).
"""
import argparse
import json
import resource
import runpy
import pathlib
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax import hardware
from dataseg_jax.models import dataseg

import timing  # benchmarks/timing.py (a script's own folder comes first on sys.path)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
NUM_CLASSES = 40


def bench_config(model_config, size: int, batch: int, repeats: int) -> dict:
  model = dataseg.DataSeg(model_config)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.uint8)
  embeddings = jnp.asarray(rng.normal(size=(NUM_CLASSES, model_config.embed_dim)), jnp.float32)
  class_mask = jnp.ones((batch, NUM_CLASSES), bool)
  params = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(0), images, embeddings, class_mask)["params"])

  def loss(p):
    out = model.apply({"params": p}, images, embeddings, class_mask)
    return jnp.mean(out["pred_masks"] ** 2) + jnp.mean(jax.nn.log_softmax(out["pred_logits"], -1))

  result = {"image_size": size, "batch": batch, "queries": model_config.num_queries, "dtype": model_config.dtype,
            "params_m": round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 2)}
  for name, fn in (("forward", jax.jit(lambda p: model.apply({"params": p}, images, embeddings, class_mask))),
                   ("forward_backward", jax.jit(jax.grad(loss)))):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params))
    result[f"{name}_compile_s"] = round(time.perf_counter() - t0, 2)
    result[f"{name}_s"] = round(timing.median_seconds(lambda: jax.block_until_ready(fn(params)), repeats), 4)
  result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
  return result


def run(quick: bool = False) -> dict:
  """{'toy': {...}, 'r50': {...}} (r50 skipped when quick), times in seconds."""
  toy = runpy.run_path(str(CONFIGS / "toy.py"))["get_config"]()
  results = {"device": jax.devices()[0].platform, "toy": bench_config(toy.model, 128, 8, 5 if quick else 10)}
  if not quick:
    r50 = runpy.run_path(str(CONFIGS / "dataseg_r50.py"))["get_config"]()
    r50.model.dtype = "float32"
    results["r50"] = bench_config(r50.model, 512, 2, 3)
  return results


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true")
  print(json.dumps(run(p.parse_args().quick), indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
