"""Shared helpers of the data tests (no tests here): a small toy benchmark and its config."""
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import toy  # noqa: E402
from scripts import make_toy_data  # noqa: E402


def write_toy(out, train=24, val=8, size=64, seed=0):
  make_toy_data.write(str(out), train=train, val=val, size=size, seed=seed)
  return pathlib.Path(out)


def toy_config(data_dir, size=64, batch=4, mode="per_batch", max_segments=24):
  c = toy.get_config()
  c.data_dir = str(data_dir)
  c.data.image_size = size
  c.data.eval_size = size
  c.data.batch_size = batch
  c.data.eval_batch_size = batch
  c.data.mixture_mode = mode
  c.data.max_segments = max_segments
  c.model.num_queries = max(c.model.num_queries, max_segments)
  return c



def write_semantic_png(root, images, labels, name="tiny", classes=5):
  """A tiny semantic_png dataset `root/name` (pixel k = class k, 255 void) and a config with only its entry.

  `images` / `labels`: {file name: PIL image}, written to `images/training/` and `annotations/training/`
  (label names end in `.png`, with the stem of their image); names.txt names `classes` classes c0, c1, ...
  The val split is the same folders, so training, evaluation and TFDS preparation all read these files.
  """
  from dataseg_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  base = pathlib.Path(root) / name
  for folder, files in (("images", images), ("annotations", labels)):
    (base / folder / "training").mkdir(parents=True, exist_ok=True)
    for f, im in files.items():
      im.save(base / folder / "training" / f)
  (base / "names.txt").write_text("".join(f"c{i}\n" for i in range(classes)))
  c = toy_config(root)
  c.data.datasets = {name: config_lib.dataset_entry(
      format="semantic_png", task="semantic", train_images=f"{name}/images/training",
      train_annotations=f"{name}/annotations/training", val_images=f"{name}/images/training",
      val_annotations=f"{name}/annotations/training", names=f"{name}/names.txt", ratio=1.0,
      eval_tasks=("semantic",))}
  return c
