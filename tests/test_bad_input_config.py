"""Bad config values stop at start with the key's name, what it must be and a value to pass instead.

One row per key: `config.validate` checks every retention, schedule and size key once (dataseg_jax/config.py).
"""
import pathlib
import re
import runpy

import ml_collections
import pytest

from data_pipelines import registry
from dataseg_jax import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def toy_config():
  return runpy.run_path(str(CONFIGS / "toy.py"))["get_config"]()


def set_key(config, key: str, value) -> None:
  node = config
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value


@pytest.mark.parametrize("key,value,message", [
    ("model.backbone.name", "swin", "config.model.backbone.name"),
    ("model.num_queries", 0, "config.model.num_queries"),
    ("model.num_queries", -3, "config.model.num_queries: must be >= 1, got -3"),
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
    ("mesh.shape", (2, 4), "config.mesh.shape: a 'model' axis of 4 devices needs mesh.param_sharding='logical' (the "
     "one rule that shards over 'model'), got 'replicate'; use (-1, 1) otherwise"),
    ("data.datasets.toy_ade.ratio", -1.0, "config.data.datasets.toy_ade.ratio"),
    ("loss.oversample_ratio", 0.5, "config.loss.oversample_ratio"),
    ("loss.importance_sample_ratio", 1.5, "config.loss.importance_sample_ratio"),
    ("data.datasets.toy_heldout.eval_tasks", ("semantc",), "config.data.datasets.toy_heldout.eval_tasks"),
    ("data.datasets.toy_o365.val_instances", "", "config.data.datasets.toy_o365: instance evaluation"),
    # retention, schedule and size keys (issue 24)
    ("keep_checkpoints", 0, "config.keep_checkpoints: must be >= 1 (the latest N checkpoints are kept; 0 would "
     "delete every one), got 0; e.g. --config.keep_checkpoints=3 (the default)"),
    ("total_steps", 0, "config.total_steps: must be >= 1, got 0"),
    ("optimizer.learning_rate", -1e-3, "config.optimizer.learning_rate: must be a finite number > 0, got -0.001; "
     "e.g. --config.optimizer.learning_rate=0.0001 (the default)"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate: must be a finite number > 0, got 0.0"),
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate: must be a finite number > 0, got nan"),
    ("optimizer.warmup_steps", -5, "config.optimizer.warmup_steps: must be >= 0 (0: no warm-up), got -5"),
    ("optimizer.weight_decay", -0.05, "config.optimizer.weight_decay: must be >= 0, got -0.05"),
    ("optimizer.backbone_multiplier", -0.1, "config.optimizer.backbone_multiplier: must be >= 0"),
    ("optimizer.clip_norm", -1.0, "config.optimizer.clip_norm: must be >= 0 (0: no clipping), got -1.0"),
    ("optimizer.ema_decay", 1.0, "config.optimizer.ema_decay: must be in [0, 1) (0: no EMA), got 1.0"),
    ("optimizer.max_nonfinite_steps", 0, "config.optimizer.max_nonfinite_steps: must be >= 1, got 0"),
    ("data.batch_size", 0, "config.data.batch_size: must be >= 1 (the global batch, split over the 'data' devices), "
     "got 0"),
    ("data.eval_batch_size", 0, "config.data.eval_batch_size: must be >= 1"),
    ("data.image_size", 0, "config.data.image_size: must be a positive multiple of 32"),
    ("data.eval_size", 100, "config.data.eval_size: must be a positive multiple of 32"),
    ("data.label_stride", 0, "config.data.label_stride: must be >= 1, got 0"),
    ("data.label_stride", 3, "config.data.label_stride: 3 does not divide data.image_size=128"),
    ("data.min_scale", 0.0, "config.data.min_scale: must be > 0, got 0.0"),
    ("data.max_scale", 0.05, "config.data.max_scale: must be >= data.min_scale=0.6, got 0.05"),
    ("data.prefetch", -1, "config.data.prefetch: must be >= 0, got -1"),
    ("data.on_bad_example", "ignore", "config.data.on_bad_example: must be one of ('error', 'skip'), got 'ignore'"),
    ("eval.on_bad_example", "warn", "config.eval.on_bad_example: must be one of ('error', 'skip'), got 'warn'"),
    ("eval.max_examples", -1, "config.eval.max_examples: must be >= 0 (0: the whole split), got -1"),
    ("eval.instance_topk", 0, "config.eval.instance_topk: must be >= 1, got 0"),
    ("eval.num_overlays", -1, "config.eval.num_overlays: must be >= 0, got -1"),
    ("eval.object_mask_threshold", 1.5, "config.eval.object_mask_threshold: must be in [0, 1], got 1.5"),
    ("loss.class_weight", -2.0, "config.loss.class_weight: must be >= 0, got -2.0"),
    ("loss.num_points", 0, "config.loss.num_points: must be >= 1, got 0"),
    ("matcher.num_points", 0, "config.matcher.num_points: must be >= 1, got 0"),
    ("profile_at_step", -1, "config.profile_at_step: must be >= 0 (0: no profile), got -1"),
])
def test_bad_value_names_the_key(key, value, message):
  c = toy_config()
  set_key(c, key, value)
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    config_lib.validate(c)


@pytest.mark.parametrize("key,value,message", [
    ("data.batch_size", 6, "config.data.batch_size: 6 does not split over config.mesh.shape[0]=4 'data' devices; "
     "pick a multiple of 4"),
    ("data.eval_batch_size", 2, "config.data.eval_batch_size: 2 does not split over config.mesh.shape[0]=4"),
])
def test_batch_sizes_must_split_over_the_configured_data_devices(key, value, message):
  c = toy_config()
  c.mesh.shape = (4, 1)
  c.data.batch_size, c.data.eval_batch_size = 8, 8
  config_lib.validate(c)
  set_key(c, key, value)
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    config_lib.validate(c)


def test_prepared_tfds_data_of_coco_instances_trains_only_boxes():
  """Prepared TFDS data holds no coco_instances masks: a trained entry with task 'instance' would learn from empty
  masks, so config.validate refuses it; as boxes, from the native files, or evaluation only, it passes."""
  c = toy_config()
  c.data.datasets.toy_city = config_lib.dataset_entry(
      format="coco_instances", task="instance", train_images="toy_city/train",
      train_annotations="toy_city/annotations/train_instances.json", tfds_dir="tfds")
  with pytest.raises(ValueError, match="^" + re.escape(
      "config.data.datasets.toy_city.tfds_dir: prepared TFDS data holds no coco_instances masks (only boxes), so it "
      "cannot train task 'instance'; train it from the native files (tfds_dir='') or with task='box'")):
    config_lib.validate(c)
  for key, value in (("task", "box"), ("tfds_dir", ""), ("ratio", 0.0)):
    ok = c.copy_and_resolve_references()
    ok.data.datasets.toy_city[key] = value
    config_lib.validate(ok)


@pytest.mark.parametrize("entries", ["none", "unused"])
def test_a_config_without_a_dataset_to_train_or_evaluate_is_refused(entries):
  c = toy_config()
  if entries == "none":
    c.data.datasets = ml_collections.ConfigDict()
  else:
    for e in c.data.datasets.values():
      e.ratio, e.eval_tasks = 0.0, ()
  c.best_checkpoint_metric = ""
  config_lib.validate(c)  # a run may feed its own batches and vocabulary
  with pytest.raises(ValueError, match=r"^config\.data\.datasets: no entry has ratio > 0 or eval_tasks \(entries: "):
    registry.build_vocab(c)


@pytest.mark.parametrize("key, value, message", [
    ("task", "semantics", "config.data.datasets.toy_o365.task: unknown task 'semantics'; expected one of"),
    ("task", "semantic", "config.data.datasets.toy_o365.task: 'semantic' cannot be trained from coco_detection; "
     "expected one of"),
    ("val_panoptic_annotations", "pan.json", "config.data.datasets.toy_o365.val_panoptic_annotations: is for "),
])
def test_an_entry_whose_format_cannot_train_its_task_or_read_its_files_is_refused(key, value, message):
  c = toy_config()
  config_lib.validate(c)
  c.data.datasets.toy_o365[key] = value
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    config_lib.validate(c)
