"""Converts one direct-transfer benchmark from its native layout into one our readers take (images symlinked,
labels rewritten), to evaluate a trained model on it with no tuning.

  python scripts/prepare_transfer.py --benchmark voc21 --src VOCdevkit/VOC2012 --out /datasets/transfer/voc21

The benchmarks, their native sources and label conventions are the table of data_pipelines/transfer.py;
configs/transfer.py evaluates a converted one (coco_semantic needs no conversion). Every file read from an id of
an image list and every file written stay inside their folder (`paths.inside`): an id that is absolute or climbs
out of its folder ('../../x') is an error naming the list file, and nothing is written outside --out.
"""
import sys

from absl import flags

from data_pipelines import transfer
from dataseg_jax import cli


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so importing the module defines none."""
  flags.DEFINE_enum("benchmark", None, sorted(transfer.PREPARE), "The benchmark to convert (the table in "
                    "data_pipelines/transfer.py; coco_semantic needs no conversion).")
  flags.DEFINE_string("src", None, "The benchmark's native root (the table in data_pipelines/transfer.py).")
  flags.DEFINE_string("out", None, "Folder to write (images are symlinked).")
  flags.DEFINE_enum("split", "val", sorted(transfer.SPLIT_DIRS), "Which split to convert.")
  flags.mark_flags_as_required(["benchmark", "src", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    n = transfer.PREPARE[f.benchmark](f.src, f.out, f.split)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"{f.benchmark}: {n} {f.split} images -> {f.out}; evaluate with "
        f"dataset_entry(**transfer.entry_kwargs({f.benchmark!r}, {f.out!r}))")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
