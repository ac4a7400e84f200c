"""DaTaSeg, ResNet-50: co-training on ADE20K semantic, COCO panoptic and Objects365 boxes.

  python scripts/train.py --config configs/dataseg_r50.py --workdir workdirs/r50 \
      --config.data_dir=/path/to/datasets
  python scripts/eval.py --config configs/dataseg_r50.py --workdir workdirs/r50 \
      --config.data_dir=/path/to/datasets

Single-dataset baselines: `configs/dataseg_r50.py:ade`, `:coco`, `:o365`.
Expected layout under data_dir (see docs/datasets.md): ADEChallengeData2016/, coco/ (train2017,
val2017, annotations/panoptic_{train,val}2017.json + PNG folders), objects365/ (train/, val/,
zhiyuan_objv2_{train,val}.json, and instance_masks_1k.json: the 1,000 val images with masks the DaTaSeg authors
annotated, COCO JSON, for the box-to-mask weak transfer; without it set `--config.data.datasets.o365.eval_tasks=()`).
Paper results (largest model, arXiv 2306.01736): ADE20K 54.0 mIoU, COCO 53.5 PQ. Our R50 numbers:
not yet measured (no accelerator in this project so far); Mask2Former R50 reaches 47.2 / 51.9.
"""
from dataseg_jax import config as config_lib


def get_config(arg=None):
  """`arg`: '' for the three-dataset mixture, or one of ade / coco / o365 for a single-dataset baseline."""
  return config_lib.paper_recipe(arg, "configs/dataseg_r50.py")
