"""Host and accelerator facts: peak dense bf16 FLOP/s for MFU, the CPU model and cores, the host allocator setting
XLA-CPU wants, and the persistent compilation cache.

`PEAK_FLOPS` is keyed by a substring of the device's name (`jax.Device.device_kind`,
`torch.cuda.get_device_name()`); values from the vendors' data sheets, dense (no sparsity). Pure Python: the
PyTorch peer benchmark uses it too.
"""
import ctypes
import os
import pathlib
import platform
import sys

PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6": 918e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(device_name: str) -> float | None:
  """Peak dense bf16 FLOP/s of the first `PEAK_FLOPS` key contained in `device_name`; None when unknown."""
  return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """The CPU's model name and vector extensions (from Linux's `cpuinfo`; {} where it cannot be read): XLA and the
  PyTorch peer use AVX-512 and AMX differently, so their ratio depends on the host as well as on the code, and
  XLA-CPU compiles for the extensions it finds, so a training run repeats bit for bit only on the same model (README,
  Reproducibility)."""
  try:
    info = pathlib.Path(cpuinfo).read_text()
  except OSError:
    return {}
  first = info.split("\n\n")[0]  # the first processor's block
  fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = fields.get("flags", "").split()
  return {"cpu_model": f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model "
                       f"{fields.get('model', '?')})",
          "cpu_vector": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)}



def host_cores() -> int:
  """The CPU cores this process may run on (its affinity: `taskset`, a container's cpuset), which is XLA-CPU's thread
  count; all of the machine's where the OS cannot say (e.g. macOS)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

HUGE_PAGE_MALLOC = "glibc.malloc.hugetlb=1"


def use_huge_pages_for_host_buffers() -> None:
  """Re-executes the running script once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (Linux, glibc >= 2.35).

  XLA-CPU allocates its temporaries afresh for every step, and with 4 KiB pages the first touch of each
  page of each buffer faults: on the R50 train step (512 px, batch 2, 2 cores) that was 30 % of the time
  (10.6 s -> 7.3 s with transparent huge pages for malloc; the PyTorch peer gains 2 %). The tunable is read
  only at process start, hence the re-exec (same interpreter, same argv). A no-op when the tunable is
  already set, elsewhere than Linux/glibc, or with DATASEG_NO_REEXEC=1. Call it first thing in a script's
  `__main__`, never from library code.
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if (not _glibc() or "glibc.malloc.hugetlb" in tunables
      or os.environ.get("DATASEG_NO_REEXEC") == "1"):
    return
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_MALLOC}" if tunables else HUGE_PAGE_MALLOC
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def _glibc() -> bool:
  return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def release_freed_host_memory() -> None:
  """Returns the C heap's freed pages to the OS (glibc `malloc_trim`); a no-op elsewhere.

  Compiling the R50 train step leaves about 0.6 GiB freed but still resident in malloc's heap, which
  otherwise adds to the peak of every step after it. Call it after compiling.
  """
  if _glibc():
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def use_compilation_cache(path: str) -> str | None:
  """Turns on JAX's persistent compilation cache in `path` (config.compilation_cache_dir; '' = off), so that a
  restart (a preempted run resuming, an evaluation after training) loads compiled programs instead of compiling
  them again: ViT-B's train step took 70-140 s to compile on an H200. A directory already set (the
  JAX_COMPILATION_CACHE_DIR environment variable, or the caller, e.g. the test suite) wins. XLA caches no
  program with a host callback, so on the CPU the train step (scipy matching) compiles every time; its
  initialiser and the evaluation's programs are cached. Returns the directory in use, None when off.
  """
  import jax  # here, not at the top: this module stays importable without jax (the PyTorch peer benchmark)

  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if not path:
    return None
  path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  return path

