"""Direct-transfer evaluation [paper]: a trained model on a benchmark it never saw, with that benchmark's class
names swapped in as its classifier and no tuning.

  python scripts/prepare_transfer.py --benchmark voc21 --src VOCdevkit/VOC2012 --out /datasets/transfer/voc21
  python scripts/eval.py --config configs/transfer.py:voc21 --workdir workdirs/r50 --config.data_dir=/datasets
  python scripts/eval.py --config configs/transfer.py:cityscapes_panoptic,vitdet_b --workdir workdirs/vitb \
      --config.data_dir=/datasets

`arg` = BENCHMARK[,MODEL]: BENCHMARK one of data_pipelines.transfer.BENCHMARKS (voc21, voc20,
pascal_context59, pascal_context459, ade847, cityscapes, cityscapes_panoptic, coco_semantic); MODEL the
trained recipe (r50 default, vitdet_b, vitdet_l) so the checkpoint's shapes match. Prepared benchmarks are
expected at `transfer/<BENCHMARK>` under data_dir (COCO at `coco/`, Cityscapes at `cityscapes/`).
Paper (DaTaSeg, largest model): VOC 94.7 mIoU, Pascal Context-59 51.4, Pascal Context-459 11.6, COCO semantic
62.9, Cityscapes 30.0 PQ (none listed for ADE20K-847).
"""
import runpy
import pathlib

import ml_collections

from data_pipelines import transfer
from dataseg_jax import config as config_lib

MODELS = ("r50", "vitdet_b", "vitdet_l")


def get_config(arg=None):
  bench, _, model = (arg or "").partition(",")
  if bench not in transfer.BENCHMARKS:
    raise ValueError(f"configs/transfer.py:{arg}: expected BENCHMARK[,MODEL] with BENCHMARK one of "
                     f"{transfer.BENCHMARKS} and MODEL one of {MODELS}")
  model = model or "r50"
  if model not in MODELS:
    raise ValueError(f"configs/transfer.py:{arg}: MODEL must be one of {MODELS}")
  c = runpy.run_path(str(pathlib.Path(__file__).with_name(f"dataseg_{model}.py")))["get_config"]()
  c.data.datasets = ml_collections.ConfigDict(
      {bench: config_lib.dataset_entry(**transfer.entry_kwargs(bench, f"transfer/{bench}"))})
  return c
