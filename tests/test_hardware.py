"""The host allocator re-exec and the accelerator peak table."""
import os
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


def test_peak_flops_by_device_name():
  assert hardware.peak_flops("NVIDIA H200") == 989e12
  assert hardware.peak_flops("TPU v5 lite") == 197e12
  assert hardware.peak_flops("cpu") is None
