"""The host allocator re-exec, the heap trim, the compilation cache, the accelerator peak table and the CPU model."""
import ctypes
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from dataseg_jax import hardware

SCRIPT = """
import os, sys
from dataseg_jax import hardware
print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
hardware.use_huge_pages_for_host_buffers()
print("run", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


def _run(tmp_path, **env):
  script = tmp_path / "script.py"
  script.write_text(SCRIPT)
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DATASEG_NO_REEXEC")}
  out = subprocess.run([sys.executable, str(script), "a", "--b=1"], env={**base, **env}, capture_output=True,
                       text=True, check=True)
  return out.stdout.splitlines()


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_script_reexecs_once_with_huge_page_malloc_and_its_arguments(tmp_path):
  lines = _run(tmp_path)
  assert lines == ["start None", f"start {hardware.HUGE_PAGE_MALLOC}",
                   f"run {hardware.HUGE_PAGE_MALLOC} ['a', '--b=1']"]
  lines = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")  # kept, and extended
  assert lines[-1] == f"run glibc.malloc.arena_max=2:{hardware.HUGE_PAGE_MALLOC} ['a', '--b=1']"


def test_no_reexec_when_set_or_disabled(tmp_path):
  assert _run(tmp_path, GLIBC_TUNABLES=hardware.HUGE_PAGE_MALLOC)[-1].startswith(f"run {hardware.HUGE_PAGE_MALLOC} ")
  assert _run(tmp_path, DATASEG_NO_REEXEC="1") == ["start None", "run None ['a', '--b=1']"]


CACHE_SCRIPT = """
import os, sys
import jax
from dataseg_jax import hardware
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(hardware.use_compilation_cache(sys.argv[1]))
jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()
"""


@pytest.mark.parametrize("given,env,expected", [
    ("~/cache", None, "HOME/cache"),  # the config's directory, user-expanded, filled by the first compile
    ("", None, None),  # off
    ("~/cache", "TMP/env_cache", "TMP/env_cache"),  # a directory set before (JAX_COMPILATION_CACHE_DIR) wins
])
def test_compilation_cache_directory_and_precedence(tmp_path, given, env, expected):
  script = tmp_path / "cache.py"
  script.write_text(CACHE_SCRIPT)
  home = tmp_path / "home"
  base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  base.update(HOME=str(home), DATASEG_NO_REEXEC="1", JAX_PLATFORMS="cpu")
  if env:
    base["JAX_COMPILATION_CACHE_DIR"] = env.replace("TMP", str(tmp_path))
  out = subprocess.run([sys.executable, str(script), given], env=base, capture_output=True, text=True, check=True)
  want = expected and expected.replace("HOME", str(home)).replace("TMP", str(tmp_path))
  assert out.stdout.strip() == str(want)
  if want:
    assert any(pathlib.Path(want).iterdir()), "the first compile wrote no cache entry"
  assert not (home / "cache").exists() or want == str(home / "cache")


def test_peak_flops_by_device_name():
  assert hardware.peak_flops("NVIDIA H200") == 989e12
  assert hardware.peak_flops("TPU v5 lite") == 197e12
  assert hardware.peak_flops("cpu") is None


def _resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_freed_host_memory_returns_freed_heap_pages():
  libc = ctypes.CDLL("libc.so.6")
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  chunk, count = 64 * 1024, 3200  # 200 MiB of heap chunks (below the mmap threshold)
  blocks = [libc.malloc(chunk) for _ in range(count)]
  for b in blocks:
    ctypes.memset(b, 1, chunk)
  guard = libc.malloc(chunk)  # keeps the top of the heap in use, so free() alone cannot shrink it
  for b in blocks:
    libc.free(b)
  before = _resident_bytes()
  hardware.release_freed_host_memory()
  released = before - _resident_bytes()
  libc.free(guard)
  assert released > 100 * 2**20, released



def test_cpu_model_reads_the_first_processor_of_cpuinfo(tmp_path):
  """cpu_model / cpu_vector come from cpuinfo's first processor; {} where it cannot be read."""
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Test CPU\n"
                  "flags\t\t: fpu avx2 avx512f amx_bf16\n\nprocessor\t: 1\nmodel name\t: Other CPU\nflags\t\t: fpu\n")
  assert hardware.cpu_model(str(info)) == {"cpu_model": "Test CPU (family 6 model 207)",
                                           "cpu_vector": "avx2 avx512f amx_bf16"}
  assert hardware.cpu_model(str(tmp_path / "missing")) == {}
