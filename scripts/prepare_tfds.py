"""Prepares one dataset entry of a config as TFDS data (ArrayRecord, row order), read by training and evaluation.

  python scripts/prepare_tfds.py --config configs/dataseg_r50.py --config.data_dir=/datasets --dataset coco \
      --out ~/tensorflow_datasets

`config.data_dir` is the manual_dir: the entry's native files are read through the same readers as the direct
path; the `train` and `validation` splits go to OUT/<dataset>/<version>/. Train and evaluate from them with
`--config.data.datasets.<dataset>.tfds_dir=OUT` (relative to config.data_dir); see data_pipelines/tfds_builders.py.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from dataseg_jax import cli


def define_flags() -> None:
  """Command-line flags, as scripts/train.py's: --config FILE[:arg] and --config.KEY=VALUE overrides."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dataseg_r50.py[:arg]; "
                                  "--config.data_dir=DIR names the native files (the manual_dir).")
  flags.DEFINE_string("dataset", None, "Entry name in config.data.datasets.")
  flags.DEFINE_string("out", None, "TFDS data_dir to write to.")
  flags.mark_flags_as_required(["config", "dataset", "out"])


def main(argv):
  del argv
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top  # TensorFlow: after the flags

  f = flags.FLAGS
  try:
    print(tfds_builders.build(f.config, f.dataset, os.path.expanduser(f.out)).info)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
