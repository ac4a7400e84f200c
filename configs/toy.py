"""Toy three-dataset benchmark: trains on 2 CPU cores in minutes (`make demo`).

  python scripts/make_toy_data.py --out data/toy
  python scripts/train.py --config configs/toy.py --workdir workdirs/toy
  python scripts/eval.py --config configs/toy.py --workdir workdirs/toy

Expected (800 steps, seed 0, `make demo` on 2 CPU cores of an AMD EPYC, 2026-12-07): toy_ade 38.3 mIoU, toy_coco
27.5 PQ, toy_o365 5.2 mask AP from boxes only, toy_ade 30.9 PQ from semantic labels only, held-out classes 7.3 mIoU
(chance 3.0); another CPU model gives other numbers (README, Reproducibility); docs/results.md has longer runs
(toy_ade 66.9 mIoU jointly at 4500 steps).

Datasets (written by make_toy_data.py in native formats): toy_ade (semantic PNGs), toy_coco
(COCO panoptic), toy_o365 (COCO detection JSON, boxes only; held-out instance masks for the
weak-transfer evaluation).
"""
import ml_collections

from dataseg_jax import config as config_lib


def toy_datasets() -> ml_collections.ConfigDict:
  """The default mixture's entries (toy_ade, toy_coco, toy_o365 and the evaluation-only toy_heldout), with paths
  relative to `config.data_dir`."""
  ds = ml_collections.ConfigDict()
  ds.toy_ade = config_lib.dataset_entry(
      format="semantic_png", task="semantic",
      train_images="toy_ade/images/training",
      train_annotations="toy_ade/annotations/training",
      val_images="toy_ade/images/validation",
      val_annotations="toy_ade/annotations/validation",
      val_panoptic_annotations="toy_ade/panoptic_val.json", val_panoptic_dir="toy_ade/panoptic_val",
      names="toy_ade/names.txt", thing_classes="toy_ade/things.txt",
      reduce_zero_label=True, ratio=1.0, eval_tasks=("semantic", "panoptic"))
  ds.toy_coco = panoptic_entry("toy_coco")
  ds.toy_o365 = detection_entry("toy_o365")
  ds.toy_heldout = config_lib.dataset_entry(
      format="semantic_png", task="semantic",
      val_images="toy_heldout/images/validation",
      val_annotations="toy_heldout/annotations/validation",
      names="toy_heldout/names.txt", thing_classes="toy_heldout/things.txt",
      reduce_zero_label=True, ratio=0.0, eval_tasks=("semantic",))  # evaluation only: open vocabulary
  return ds


def panoptic_entry(name: str) -> ml_collections.ConfigDict:
  return config_lib.dataset_entry(
      format="coco_panoptic", task="panoptic",
      train_images=f"{name}/train",
      train_annotations=f"{name}/annotations/panoptic_train.json",
      train_panoptic_dir=f"{name}/annotations/panoptic_train",
      val_images=f"{name}/val",
      val_annotations=f"{name}/annotations/panoptic_val.json",
      val_panoptic_dir=f"{name}/annotations/panoptic_val",
      ratio=1.0, eval_tasks=("panoptic",))


def detection_entry(name: str) -> ml_collections.ConfigDict:
  return config_lib.dataset_entry(
      format="coco_detection", task="box",
      train_images=f"{name}/train",
      train_annotations=f"{name}/annotations/train.json",
      val_images=f"{name}/val",
      val_annotations=f"{name}/annotations/val.json",
      val_instances=f"{name}/annotations/val_instances.json",
      ratio=1.0, eval_tasks=("instance",))


def diagnostic_datasets() -> ml_collections.ConfigDict:
  """The datasets of docs/results.md's diagnostics (`make_toy_data.py --control`), selected by name: the control's
  toy_coco and toy_o365 without a class of toy_ade's (`configs/toy.py:toy_ade+toy_coco_disjoint+toy_o365_disjoint`)
  and the synonym test's toy_coco without person and car (`configs/toy.py:toy_ade+toy_coco_nosyn+toy_o365`)."""
  ds = ml_collections.ConfigDict()
  ds.toy_coco_disjoint = panoptic_entry("toy_coco_disjoint")
  ds.toy_o365_disjoint = detection_entry("toy_o365_disjoint")
  ds.toy_coco_nosyn = panoptic_entry("toy_coco_nosyn")
  return ds


def get_config(arg=None):
  """`arg` names the datasets to train, joined by '+' (default: the mixture of `toy_datasets`): one for a
  single-dataset baseline, e.g. `configs/toy.py:toy_ade`, or a subset or the control, e.g.
  `configs/toy.py:toy_ade+toy_coco`."""
  c = config_lib.base_config()
  c.total_steps = 800
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.data_dir = "data/toy"  # root of relative dataset paths

  m = c.model
  m.backbone.name = "resnet"
  m.backbone.depth = 10         # tiny 4-stage ResNet (one basic block per stage)
  m.backbone.width = 16
  m.hidden_dim = 64
  m.mask_dim = 64
  m.num_queries = 24
  m.pixel_decoder.num_layers = 2
  m.pixel_decoder.num_heads = 4
  m.pixel_decoder.ffn_dim = 128
  m.decoder.num_layers = 3
  m.decoder.num_heads = 4
  m.decoder.ffn_dim = 128
  m.dtype = "float32"
  # A 0.01 temperature lets 10-class vocabularies be told apart by a 0.04-cosine tilt of queries otherwise
  # orthogonal to every text embedding, which carries over to no other name; at 0.07 the queries must align with
  # their class's text (docs/results.md: renamed classes, held-out classes). Inference at 0.01 keeps the class
  # probabilities sharp for the 0.8 thresholds of panoptic inference.
  m.temperature = 0.07
  m.inference_temperature = 0.01

  c.loss.num_points = 1024
  c.matcher.num_points = 1024

  d = c.data
  d.image_size = 128
  d.eval_size = 128
  d.max_segments = 24
  d.min_scale = 0.6             # the world's textures have periods of 5-8 px: scaled by 0.1 they would vanish
  d.max_scale = 1.4
  d.batch_size = 8
  d.eval_batch_size = 8
  d.datasets = toy_datasets()
  if arg:
    catalogue = toy_datasets()
    catalogue.update(diagnostic_datasets())
    d.datasets = config_lib.select_dataset(catalogue, arg, "configs/toy.py")

  o = c.optimizer
  o.learning_rate = 3e-4
  o.warmup_steps = 50
  o.clip_norm = 1.0
  o.backbone_multiplier = 1.0
  return c
