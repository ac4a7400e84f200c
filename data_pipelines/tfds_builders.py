"""TFDS builders (manual_dir) for the training formats: prepare TFRecords once from the native files.

  python -m data_pipelines.tfds_builders --config configs/toy.py --dataset toy_ade --out ~/tensorflow_datasets

`config.data_dir` is the manual_dir: the builder reads the entry's native files through the same
readers as the direct path (`readers`, with the same bad-input policy) and writes `train` and
`validation` splits. Features: `image` (encoded as on disk), `label` (semantic_png: the uint8
PNG; coco_panoptic: the RGB-id PNG; absent for box formats), `image_id`, and `segments` (per
segment: panoptic `id`, dataset-local `class`, `crowd`, `box` pixel x0 y0 x1 y1). Builders are
built from a config entry and skip TFDS's global registration (nothing registered by side effect).
"""
import argparse

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import registry

_SPLITS = {"train": "train", "validation": "val"}


class NativeFormatBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One dataset entry of a config -> a TFDS dataset named after the entry."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: image, label PNG, segments table."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the dataset in its native layout under config.data_dir "
                                  "(see data_pipelines/readers.py) and pass that as manual_dir.")

  def __init__(self, *, config, dataset: str, **kwargs):
    self._cfg, self._dataset = config, dataset
    self._entry = registry.resolve_entry(config, dataset)
    self.name = dataset
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "image_id": np.int64,
        "segments": tfds.features.Sequence({
            "id": np.int32, "class": np.int32, "crowd": np.bool_,
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32)}),
    }
    if self._entry.format == "semantic_png":
      features["label"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    elif self._entry.format == "coco_panoptic":
      features["label"] = tfds.features.Image(shape=(None, None, 3), encoding_format="png")
    vocab = registry.dataset_vocab(self._entry)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(class_names=list(vocab.names), is_thing=list(vocab.is_thing),
                                        format=self._entry.format, task=self._entry.task))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {tfds_split: self._generate_examples(split) for tfds_split, split in _SPLITS.items()
            if self._entry[f"{split}_images"]}

  def _generate_examples(self, split):
    index = registry.build_index(self._cfg, self._dataset, split)
    for r in range(len(index)):
      lo, hi = index.seg_splits[r], index.seg_splits[r + 1]
      ex = {
          "image": index.image_paths[r],
          "image_id": index.image_ids[r],
          "segments": {"id": index.seg_ids[lo:hi], "class": index.seg_class[lo:hi],
                       "crowd": index.seg_crowd[lo:hi], "box": index.boxes[lo:hi]},
      }
      if index.label_paths[r]:
        ex["label"] = index.label_paths[r]
      yield int(index.image_ids[r]) if index.format != "semantic_png" else r, ex


def build(config, dataset: str, out_dir: str) -> NativeFormatBuilder:
  """Prepares dataset `dataset` of `config` under `out_dir` and returns the builder."""
  builder = NativeFormatBuilder(config=config, dataset=dataset, data_dir=out_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.data_dir))
  return builder


def main():
  import importlib.util  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file, e.g. configs/toy.py")
  p.add_argument("--dataset", required=True, help="entry name in config.data.datasets")
  p.add_argument("--out", required=True, help="TFDS data_dir to write to")
  args = p.parse_args()
  spec = importlib.util.spec_from_file_location("user_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  builder = build(module.get_config(), args.dataset, args.out)
  print(builder.info)


if __name__ == "__main__":
  main()
