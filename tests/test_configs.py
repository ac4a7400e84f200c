"""Every config in configs/ loads and validates; bad values stop at start with the key's name."""
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


@pytest.mark.parametrize("key,value,message", [
    ("model.backbone.name", "swin", "config.model.backbone.name"),
    ("model.num_queries", 0, "config.model.num_queries"),
    ("data.max_segments", 500, "config.data.max_segments"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("model.classifier", "mlp", "config.model.classifier"),
    ("data.mixture_mode", "random", "config.data.mixture_mode"),
    ("data.image_size", 100, "config.data.image_size"),
    ("data.datasets.toy_ade.image_size", 48, "config.data.datasets.toy_ade.image_size"),
    ("log_every_steps", 0, "config.log_every_steps"),
    ("checkpoint_every_steps", -1, "config.checkpoint_every_steps"),
    ("optimizer.schedule", "step", "config.optimizer.schedule"),
    ("mesh.param_sharding", "zero3", "config.mesh.param_sharding"),
    ("data.datasets.toy_ade.ratio", -1.0, "config.data.datasets.toy_ade.ratio"),
    ("loss.oversample_ratio", 0.5, "config.loss.oversample_ratio"),
    ("loss.importance_sample_ratio", 1.5, "config.loss.importance_sample_ratio"),
    ("data.datasets.toy_heldout.eval_tasks", ("semantc",), "config.data.datasets.toy_heldout.eval_tasks"),
    ("data.datasets.toy_o365.val_instances", "", "config.data.datasets.toy_o365: instance evaluation"),
])
def test_bad_value_names_the_key(key, value, message):
  c = load("toy.py")
  node = c
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    config_lib.validate(c)
