"""The worked example of docs/datasets.md: the toy benchmark plus a fourth dataset, added with config only.

  python scripts/make_toy_data.py --out data/toy        # also writes data/toy/toy_city (COCO instances)
  python scripts/check_dataset.py --config configs/toy4.py --dataset toy_city
  python scripts/train.py --config configs/toy4.py --workdir workdirs/toy4
  python scripts/eval.py --config configs/toy4.py --workdir workdirs/toy4

toy_city is COCO instances JSON (RLE masks) in its own label space: 'vehicle', 'pedestrian', 'puppy' are
new names (synonyms of other datasets' 'car', 'person', 'dog': their text embeddings are close, not
shared), 'boat' is shared with toy_o365 (one row of the union vocabulary, one embedding).
"""
import runpy
import pathlib

from dataseg_jax import config as config_lib


def get_config(arg=None):
  c = runpy.run_path(str(pathlib.Path(__file__).with_name("toy.py")))["get_config"]()
  c.data.datasets.toy_city = config_lib.dataset_entry(
      format="coco_instances", task="instance",
      train_images="toy_city/train", train_annotations="toy_city/annotations/train_instances.json",
      val_images="toy_city/val", val_annotations="toy_city/annotations/val_instances.json",
      ratio=1.0, eval_tasks=("instance",))
  if arg:
    c.data.datasets = config_lib.select_dataset(c.data.datasets, arg, "configs/toy4.py")
  return c
