"""The benchmarks' timer, shared by the `bench_*.py` files beside it (imported as a sibling module)."""
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
  """Median wall-clock seconds of `repeats` calls of `fn()`, which must return only when its work is done
  (benchmarks pass `lambda: jax.block_until_ready(f(x))`)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(statistics.median(times))
