"""Shared test setup: CPU only, persistent compilation cache, deterministic numpy RNG."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
# the repository's cache, for this process and the scripts tests start (config.compilation_cache_dir yields to it)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REFDATA = REPO.parent / "shared" / "refdata"

jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def refdata():
  """The shared real-format fixtures (../shared/refdata), read in place; skipped when absent."""
  if not REFDATA.is_dir():
    pytest.skip(f"shared reference data not found at {REFDATA}")
  return REFDATA
