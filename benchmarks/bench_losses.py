"""Benchmarks the criterion and the on-device Hungarian matching (against a scipy loop on the same costs).

  python benchmarks/bench_losses.py            # paper settings: B=16, Q=100, N=100, 512x512 input, C=600
  python benchmarks/bench_losses.py --quick    # one decoder layer and 1024 points, for a CPU laptop

Criterion: 512x512 input -> 128x128 mask logits, C = 600 union classes, 10 layers (9 decoder layers and
the initial prediction, deep supervision), 12544 loss and matching points; a batch that mixes all four
tasks. Times are medians of forward + backward after compilation, on whatever device JAX uses.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from dataseg_jax import config as config_lib
from dataseg_jax import hardware
from dataseg_jax.contract import Task
from dataseg_jax.losses import criterion as criterion_lib
from dataseg_jax.losses import matching
from dataseg_jax.ops import assignment

import timing  # benchmarks/timing.py (a script's own folder comes first on sys.path)


def synthetic_inputs(rng, layers, batch, queries, segments, classes, image, stride=4):
  """Random outputs and a contract batch with `segments` rectangles per image, tasks cycled."""
  h = image // stride
  outputs = {"pred_logits": jnp.asarray(rng.normal(size=(layers, batch, queries, classes + 1)), jnp.float32),
             "pred_masks": jnp.asarray(rng.normal(size=(layers, batch, queries, h, h)) * 3, jnp.bfloat16)}
  seg_map = np.full((batch, image, image), -1, np.int32)
  boxes = np.zeros((batch, segments, 4), np.float32)
  for b in range(batch):
    for k in range(segments):
      y0, x0 = rng.integers(0, image - 16, 2)
      hh, ww = rng.integers(8, image // 4, 2)
      seg_map[b, y0:y0 + hh, x0:x0 + ww] = k
      boxes[b, k] = [y0 / image, x0 / image, min(y0 + hh, image) / image, min(x0 + ww, image) / image]
  task = np.array([list(Task)[b % 4] for b in range(batch)], np.int32)
  seg_map[task == Task.BOX] = -1
  batch_dict = {"task": task, "segment_map": seg_map,
                "seg_class": rng.integers(0, classes, (batch, segments)).astype(np.int32),
                "seg_is_thing": rng.random((batch, segments)) < 0.5, "seg_box": boxes,
                "seg_valid": np.ones((batch, segments), bool),
                "seg_has_mask": np.broadcast_to((task != Task.BOX)[:, None], (batch, segments)).copy()}
  return outputs, jax.tree.map(jnp.asarray, batch_dict)


def bench_criterion(quick: bool = False, sampling: str = "points") -> dict:
  """Criterion forward+backward seconds at the paper's sizes (one decoder layer and 1024 points if quick), with
  `sampling` 'points' (importance-sampled points) or 'dense' (every cell of the mask grid, config.loss.sampling)."""
  b, q, n, classes, image = 16, 100, 100, 600, 512
  layers = 1 if quick else 10
  config = config_lib.base_config()
  config.loss.sampling = sampling
  if quick:
    config.loss.num_points = config.matcher.num_points = 1024
  outputs, batch = synthetic_inputs(np.random.default_rng(0), layers, b, q, n, classes, image)
  grad_fn = jax.jit(jax.value_and_grad(lambda o, k: criterion_lib.criterion(o, batch, config, k)[0]))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = grad_fn.lower(outputs, key).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(outputs, key))  # warm-up
  return {"criterion_shape": f"L={layers} B={b} Q={q} N={n} C={classes} masks={image // 4}x{image // 4} "
                             f"sampling={sampling} points={config.loss.num_points}",
          "criterion_fwd_bwd_s": timing.median_seconds(lambda: jax.block_until_ready(compiled(outputs, key)),
                                                         3 if quick else 1),
          "criterion_compile_s": compile_s}


def bench_matching(b: int = 16, q: int = 100, n: int = 100, real: int = 20) -> dict:
  """Jitted batched Hungarian matching vs a scipy loop on the host, on the same random costs.

  dense: every one of the n targets real. padded: `real` of them real and the rest padding, as a training
  batch's (`matching.assignment_cost`), against scipy on the real [q, real] submatrices, as Mask2Former's
  matcher calls it. `device_solver` is the accelerators' solver (`assignment.device_match`) on this platform
  (on the CPU, `hungarian_match` itself calls scipy).
  """
  rng = np.random.default_rng(0)
  costs = rng.normal(size=(b, q, n)).astype(np.float32)
  valid = np.arange(n) < real
  padded = np.asarray(jax.vmap(matching.assignment_cost, (0, None, None))(
      jnp.asarray(rng.normal(size=(b, q, n)).astype(np.float32)), jnp.ones(q, bool), jnp.asarray(valid)))
  match_fn = jax.jit(matching.hungarian_match_batch)
  solver_fn = jax.jit(jax.vmap(assignment.device_match))
  callback_fn = jax.jit(assignment.scipy_match)  # scipy through a host callback, from the device

  def timed(fn, x):  # the first calls after compiling are slower (threads and their heaps start): 3 skipped
    x = jnp.asarray(x)
    for _ in range(3):
      jax.block_until_ready(fn(x))
    return timing.median_seconds(lambda: jax.block_until_ready(fn(x)), 20)

  def optimal(fn, c, cols):
    got = np.asarray(fn(jnp.asarray(c)))
    return all(np.isclose(c[i][got[i][cols], cols].sum(), c[i][:, cols][linear_sum_assignment(c[i][:, cols])].sum(),
                          rtol=1e-5) for i in range(b))

  out = {"matching_shape": f"B={b} Q={q} N={n}, padded: {real} of {n} targets real",
         "matching_device_s": timed(match_fn, costs),
         "matching_scipy_loop_s": timing.median_seconds(lambda: [linear_sum_assignment(c) for c in costs], 20),
         "matching_scipy_callback_s": timed(callback_fn, costs),
         "matching_device_solver_s": timed(solver_fn, costs),
         "matching_padded_device_s": timed(match_fn, padded),
         "matching_padded_scipy_loop_s": timing.median_seconds(
             lambda: [linear_sum_assignment(c[:, valid]) for c in padded], 20),
         "matching_padded_device_solver_s": timed(solver_fn, padded)}
  out["matching_speedup_vs_scipy"] = out["matching_scipy_loop_s"] / out["matching_device_s"]
  out["matching_padded_speedup_vs_scipy"] = out["matching_padded_scipy_loop_s"] / out["matching_padded_device_s"]
  every = np.arange(n)
  out["matching_equal_cost"] = bool(optimal(match_fn, costs, every) and optimal(solver_fn, costs, every)
                                    and optimal(match_fn, padded, every[valid])
                                    and optimal(solver_fn, padded, every[valid]))
  return out


def run(quick: bool = False) -> dict:
  """Criterion forward+backward seconds and matching seconds (on device vs scipy), as a flat dict."""
  return {"device": jax.devices()[0].device_kind, "quick": quick, **bench_criterion(quick), **bench_matching()}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args()
  print(json.dumps(run(args.quick), indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
