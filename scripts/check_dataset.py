"""Validates the datasets of a config before training: layout, images, labels, boxes, empty images.

  python scripts/check_dataset.py --config configs/toy.py [--dataset toy_ade] [--out DIR] [--config.data_dir=...]

For each dataset entry (or just --dataset) and each configured split (train only when ratio > 0) it builds
the same index the training pipeline builds (`data_pipelines.registry.build_index`, every bad item counted
rather than fatal) and decodes every example through the pipeline's own `decode_example`, so it finds exactly
what training would trip on: a missing folder or file, an undecodable or truncated image, a label PNG of
another size or with a value outside the names file, an unknown category, an empty annotation list, a box of
zero or negative size, not finite or outside its image, an image entry without its size, an annotation without a
required key, a file name that is absolute or leaves its folder, a label file that does not decode; and the rules of
the entry's format (its module's `check_example` in `data_pipelines/formats/`: semantic_png checks every panoptic PNG
of `val_panoptic_annotations` and warns on a label map that is all void). It prints, per split, counts, class
frequencies and every problem with its file and the fix, writes a few overlay pictures to --out (default
./check_dataset/), reports progress and ETA on stderr every 30 s, and exits 1 when there are errors, 0 when there are
only warnings.
Empty images (no annotation, or a label map that is all void) are warnings (training skips or learns
nothing from them); everything else is an error.
"""
import collections
import os
import sys

from absl import flags, logging
from ml_collections import config_flags
import numpy as np
from PIL import Image, ImageDraw

from dataseg_jax import cli
from dataseg_jax import config as config_lib
from dataseg_jax import progress as progress_lib

WARNINGS = ("empty_annotations",)
# Failures inside `pipeline.decode_example`: (text of its assertion, reason); anything else is 'undecodable_image', or
# 'undecodable_label' when the image decodes and its label file does not (`pipeline.failing_file`).
# (Grayscale, RGBA and CMYK images are decoded as RGB, as in detectron2, so they are no problem.)
_DECODE_REASONS = (("outside the", "label_out_of_range"), ("size differs", "label_size_mismatch"))
_UNDECODABLE_FIX = ("The file is corrupt or truncated (or not an image); re-export or re-download it, or remove "
                    "it (training with on_bad_example='skip' skips it).")


def decode_problem(path: str, error, culprit: str = None) -> tuple:
  """A failed `decode_example` of image `path` -> (reason, message with the file and the fix); `culprit` is the file
  that failed (its label file when the image itself decodes)."""
  msg = " ".join(str(error.message).split())
  for text, reason in _DECODE_REASONS:
    if text in msg:  # the pipeline's own assertion ("... Summarized data: b'<message>' b'<file>'")
      detail = [t.strip(" \"'") for t in msg.split("Summarized data:")[-1].split(" b")]
      return reason, f"{path}: {' '.join(t for t in detail if t and t != path)}"
  if culprit and culprit != path:
    return "undecodable_label", f"{culprit} (the label of {path}): {msg[:200]}. {_UNDECODABLE_FIX}"
  return "undecodable_image", f"{path}: {msg[:200]}. {_UNDECODABLE_FIX}"


def check_split(config, name: str, split: str, out_dir: str, num_overlays: int) -> tuple:
  """-> (problems [(severity, reason, message)], class counts {name: n}, number of images)."""
  import tensorflow as tf
  from data_pipelines import formats, pipeline, readers, registry

  bad = readers.BadInput("skip", f"{name}/{split}")
  try:
    index = registry.build_index(config, name, split, bad=bad)
  except (FileNotFoundError, ValueError) as e:
    return [("error", "layout", str(e))], {}, 0
  problems = [("warning" if r in WARNINGS else "error", r, m) for r, m in bad.messages]
  entry = registry.resolve_entry(config, name)
  fmt = formats.get(index.format)
  tables = pipeline.Tables(index)
  counts = collections.Counter()
  progress = progress_lib.Progress(f"{name}/{split}", len(index), lambda line: print(line, file=sys.stderr))
  for r in range(len(index)):
    if r:
      progress.update(r)
    try:
      ex = pipeline.decode_example(index, tables, r, bool(entry.reduce_zero_label))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      problems.append(("error",) + decode_problem(index.image_paths[r], e, pipeline.failing_file(index, r)))
      continue
    except Exception as e:  # pylint: disable=broad-except  # e.g. pycocotools on a malformed segmentation
      problems.append(("error", "bad_annotation", f"{index.image_paths[r]}: its annotation does not decode "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); fix or drop it"))
      continue
    classes, found = fmt.check_example(index, r, ex)
    counts.update(classes)
    problems += found
    if r < num_overlays:
      save_overlay(ex, index.vocab.names, os.path.join(out_dir, f"{name}_{split}_{r}.png"))
  return problems, counts, len(index)


def save_overlay(ex, names, path) -> None:
  """The image with its label map tinted (one colour per segment) and its boxes drawn with class names."""
  image = ex["image"].numpy().astype(np.float32)
  if ex["idmap"] is not None:
    idmap = ex["idmap"].numpy()
    colours = np.random.default_rng(0).integers(0, 255, (max(int(idmap.max()) + 1, 1), 3))
    m = idmap >= 0
    image[m] = 0.5 * image[m] + 0.5 * colours[idmap[m]]
  pic = Image.fromarray(image.astype(np.uint8))
  draw = ImageDraw.Draw(pic)
  if not ex["has_mask"]:
    for box, c in zip(ex["boxes"].numpy(), ex["seg_class"].numpy()):
      draw.rectangle([float(v) for v in box], outline=(255, 255, 0))
      draw.text((float(box[0]) + 2, float(box[1]) + 1), names[c], fill=(255, 255, 0))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pic.save(path)


def check(config, names, out_dir: str, num_overlays: int = 3, echo=print) -> tuple:
  """Checks datasets `names` of `config`, reporting through `echo`; -> (number of errors, of warnings)."""
  unknown = [n for n in names if n not in config.data.datasets]
  if unknown:
    raise ValueError(f"--dataset {unknown[0]} is not in the config; expected one of {list(config.data.datasets)}")
  errors = warnings = 0
  try:  # what training checks at start: a bad key stops it there
    config_lib.validate(config)
  except ValueError as e:
    echo(f"\nERROR config: {e}")
    errors += 1
  from data_pipelines import registry  # pylint: disable=g-import-not-at-top  # TensorFlow: after the flags
  try:  # the union vocabulary training builds first: names that clash within a dataset, missing names files
    registry.build_vocab(config)
  except (ValueError, FileNotFoundError) as e:
    echo(f"\nERROR vocabulary: {e}")
    errors += 1
  for name in names:
    entry = config.data.datasets[name]
    splits = [s for s in ("train", "val") if entry[f"{s}_images"] and (s == "val" or entry.ratio > 0)]
    for split in splits:
      problems, counts, n = check_split(config, name, split, out_dir, num_overlays)
      by_reason = collections.Counter(r for _, r, _ in problems)
      echo(f"\n{name}/{split}: {n} images, {sum(counts.values())} segments"
           + (f"; problems: {dict(by_reason)}" if problems else "; no problems"))
      if counts:
        echo("  class frequencies (segments; semantic_png: one per class present): " +
             ", ".join(f"{c} {k}" for c, k in sorted(counts.items(), key=lambda kv: -kv[1])))
      for severity, reason, message in problems:
        echo(f"  {severity.upper()} {reason}: {message}")
      errors += sum(s == "error" for s, _, _ in problems)
      warnings += sum(s == "warning" for s, _, _ in problems)
  echo(f"\n{errors} errors, {warnings} warnings; overlays in {os.path.abspath(out_dir)}")
  return errors, warnings


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import `check` without them."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].")
  flags.DEFINE_string("dataset", None, "Only this dataset entry (default: all).")
  flags.DEFINE_string("out", "check_dataset", "Folder for overlay pictures.")
  flags.DEFINE_integer("overlays", 3, "Overlay pictures per split.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  names = [f.dataset] if f.dataset else list(f.config.data.datasets)
  try:
    errors, _ = check(f.config, names, f.out, f.overlays)
  except ValueError as e:
    sys.exit(f"error: {e}")
  sys.exit(1 if errors else 0)


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
