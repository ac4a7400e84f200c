"""Every config in configs/ loads and validates (bad values: tests/test_bad_input_config.py)."""
import pathlib
import runpy

import pytest

from data_pipelines import transfer
from dataseg_jax import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CASES = [("toy.py", None), ("toy.py", "toy_coco"), ("toy4.py", None), ("toy4.py", "toy_city"),
         ("dataseg_r50.py", None), ("dataseg_r50.py", "ade"), ("dataseg_vitdet_b.py", "coco"),
         ("dataseg_vitdet_l.py", "o365")] + [("transfer.py", b) for b in transfer.BENCHMARKS] + [
             ("transfer.py", "voc21,vitdet_l")]


def load(name, arg=None):
  return runpy.run_path(str(CONFIGS / name))["get_config"](arg)


@pytest.mark.parametrize("name,arg", CASES)
def test_config_loads_and_validates(name, arg):
  c = load(name, arg)
  config_lib.validate(c)
  assert len(c.data.datasets) >= 1
  if arg and name != "transfer.py":
    assert list(c.data.datasets) == [arg]


@pytest.mark.parametrize("name", ["toy.py", "dataseg_r50.py", "transfer.py"])
def test_unknown_config_argument_names_the_choices(name):
  with pytest.raises(ValueError, match="expected"):
    load(name, "no_such_dataset")
