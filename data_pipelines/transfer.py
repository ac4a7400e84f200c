"""Direct-transfer benchmarks: native layouts -> the layouts our readers take, plus their vocabularies.

DaTaSeg evaluates a trained model on datasets it never saw by swapping in their class-name embeddings,
with no tuning [paper]. This module converts each benchmark's native files once (images are symlinked,
labels rewritten) and gives the `config.data.datasets` entry that evaluates it (ratio 0: evaluation only).

Label conventions. Every semantic benchmark is written in the `semantic_png` layout
(`<out>/images/validation/NAME.{jpg,png}` + `<out>/annotations/validation/NAME.png`, 8-bit grayscale)
with 0 = ignore and k + 1 = class k of the names file (`reduce_zero_label=True`):

| key | names file | native source | native ignore -> 0 |
|---|---|---|---|
| voc21 | voc21.txt (background + 20) | VOC2012 `SegmentationClass/*.png` (palette indices 0..20) | 255 (object borders) |
| voc20 | voc21.txt without background | the same; background becomes ignore | 0 and 255 |
| pascal_context59 | pascal_context59.txt | VOC2010 `SegmentationClassContext/*.png` (0 = background, 1..59; mmsegmentation's conversion) | 0 |
| cityscapes | cityscapes19.txt | `gtFine/<split>/<city>/*_gtFine_labelIds.png` (labelIds 0..33) | every labelId without a trainId |
| cityscapes_panoptic | from the JSON (19 categories) | `gtFine/cityscapes_panoptic_<split>.json` + PNGs (cityscapesscripts `createPanopticImgs`) | crowd segments and id 0 |
| coco_semantic | from the JSON (133 categories) | COCO panoptic val2017 (no conversion; evaluated with the semantic task) | crowd segments and id 0 |

Cityscapes labelId -> trainId is the official table of cityscapesscripts `labels.py`. Cityscapes panoptic is
rewritten as a COCO panoptic JSON with integer image ids and a flat folder of image links (the original has
string ids and images in per-city folders); its PNGs are read in place. Pascal Context 459 has a names file
(`pascal_context459.txt`, label k = line k, 0 = ignore) but its 16-bit labels do not fit the 8-bit
`semantic_png` reader, so there is no converter for it here.

  python -m data_pipelines.transfer --benchmark voc21 --src VOCdevkit/VOC2012 --out data/transfer/voc21

Pure Python, numpy and PIL (no tf, no flax).
"""
import argparse
import json
import os
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

VOCAB_DIR = pathlib.Path(__file__).resolve().parents[1] / "dataseg_jax" / "vocab"
SPLIT_DIRS = {"train": "training", "val": "validation"}

# cityscapesscripts/helpers/labels.py: (labelId, trainId) for the 19 evaluated classes.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def names_file(name: str) -> str:
  """Path of a vocabulary file shipped in dataseg_jax/vocab/ (e.g. 'voc21.txt')."""
  path = VOCAB_DIR / name
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; it ships with dataseg_jax/vocab")
  return str(path)


def lut(mapping: dict, default: int = -1) -> np.ndarray:
  """{native value: written value} -> int16 [256] look-up table; `default` (-1: unexpected) elsewhere."""
  table = np.full(256, default, np.int16)
  for k, v in mapping.items():
    table[k] = v
  return table


VOC21_LUT = lut({**{k: k + 1 for k in range(21)}, 255: 0})
VOC20_LUT = lut({**{k: k for k in range(21)}, 255: 0})
PASCAL_CONTEXT59_LUT = lut({k: k for k in range(60)})
CITYSCAPES_LUT = lut({k: v + 1 for k, v in CITYSCAPES_TRAIN_IDS.items()}, default=0)


def convert_label(src, dst, table: np.ndarray) -> None:
  """Native label PNG (palette or grayscale indices) -> 8-bit grayscale PNG through `table`."""
  with Image.open(src) as im:
    if im.mode not in ("P", "L"):
      raise ValueError(f"{src}: label PNG mode {im.mode}; expected class indices (mode 'P' or 'L')")
    native = np.asarray(im)
  out = table[native]
  if (out < 0).any():
    bad = sorted(set(native[out < 0].tolist()))
    raise ValueError(f"{src}: label values {bad[:10]} are not in this benchmark's classes; is it the right "
                     "annotation folder?")
  Image.fromarray(out.astype(np.uint8), mode="L").save(dst)


def _link(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Symlinks src to dst (copies where links are not allowed); an existing dst is replaced."""
  if dst.is_symlink() or dst.exists():
    dst.unlink()
  try:
    os.symlink(src.resolve(), dst)
  except OSError:
    shutil.copyfile(src, dst)


def _require(path: pathlib.Path, what: str, layout: str) -> pathlib.Path:
  if not path.exists():
    raise FileNotFoundError(f"{what} {path} not found; expected {layout}")
  return path


def _write_semantic(pairs, out, split: str, table: np.ndarray) -> int:
  """(image, label) paths -> `<out>/images/<split dir>/` links and converted `<out>/annotations/<split dir>/`."""
  out = pathlib.Path(out)
  images, labels = out / "images" / SPLIT_DIRS[split], out / "annotations" / SPLIT_DIRS[split]
  images.mkdir(parents=True, exist_ok=True)
  labels.mkdir(parents=True, exist_ok=True)
  for image, label, stem in pairs:
    _link(image, images / (stem + image.suffix))
    convert_label(label, labels / (stem + ".png"), table)
  return len(pairs)


def _voc_pairs(root: pathlib.Path, split: str, labels_dir: str, list_dir: str, layout: str) -> list:
  ids = _require(root / "ImageSets" / list_dir / f"{split}.txt", "image list", layout).read_text().split()
  pairs = []
  for i in ids:
    image = _require(root / "JPEGImages" / f"{i}.jpg", "image", layout)
    pairs.append((image, _require(root / labels_dir / f"{i}.png", "label", layout), i))
  return pairs


def prepare_voc(src, out, split: str = "val", with_background: bool = True) -> int:
  """VOC2012 (`JPEGImages`, `SegmentationClass`, `ImageSets/Segmentation/<split>.txt`) -> semantic_png."""
  layout = "<VOC2012>/JPEGImages/ID.jpg, SegmentationClass/ID.png, ImageSets/Segmentation/<split>.txt"
  pairs = _voc_pairs(pathlib.Path(src), split, "SegmentationClass", "Segmentation", layout)
  return _write_semantic(pairs, out, split, VOC21_LUT if with_background else VOC20_LUT)


def prepare_pascal_context59(src, out, split: str = "val") -> int:
  """VOC2010 with mmsegmentation's `SegmentationClassContext` (0 = background, 1..59) -> semantic_png."""
  layout = ("<VOC2010>/JPEGImages/ID.jpg, SegmentationClassContext/ID.png (tools/convert_datasets/"
            "pascal_context.py of mmsegmentation), ImageSets/SegmentationContext/<split>.txt")
  pairs = _voc_pairs(pathlib.Path(src), split, "SegmentationClassContext", "SegmentationContext", layout)
  return _write_semantic(pairs, out, split, PASCAL_CONTEXT59_LUT)


def _cityscapes_images(root: pathlib.Path, split: str) -> dict:
  layout = "<cityscapes>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png"
  images = sorted(_require(root / "leftImg8bit" / split, "image folder", layout).glob("*/*_leftImg8bit.png"))
  if not images:
    raise FileNotFoundError(f"no images in {root / 'leftImg8bit' / split}; expected {layout}")
  return {p.name[:-len("_leftImg8bit.png")]: p for p in images}


def prepare_cityscapes(src, out, split: str = "val") -> int:
  """Cityscapes fine labelIds -> semantic_png with the 19 trainId classes."""
  root = pathlib.Path(src)
  layout = "<cityscapes>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
  pairs = []
  for stem, image in _cityscapes_images(root, split).items():
    label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
    pairs.append((image, _require(label, "label", layout), stem))
  return _write_semantic(pairs, out, split, CITYSCAPES_LUT)


def prepare_cityscapes_panoptic(src, out, split: str = "val") -> int:
  """cityscapesscripts panoptic JSON (string image ids) -> COCO panoptic JSON with integer ids + image links."""
  root, out = pathlib.Path(src), pathlib.Path(out)
  layout = ("<cityscapes>/gtFine/cityscapes_panoptic_<split>.json and gtFine/cityscapes_panoptic_<split>/ "
            "(python -m cityscapesscripts.preparation.createPanopticImgs)")
  data = json.loads(_require(root / "gtFine" / f"cityscapes_panoptic_{split}.json", "panoptic JSON",
                             layout).read_text())
  _require(root / "gtFine" / f"cityscapes_panoptic_{split}", "panoptic PNG folder", layout)  # checked, not read here
  images = _cityscapes_images(root, split)
  image_dir = out / "images" / split
  image_dir.mkdir(parents=True, exist_ok=True)
  new_ids, new_images = {}, []
  for im in sorted(data["images"], key=lambda m: str(m["id"])):
    stem = str(im["id"])
    if stem not in images:
      raise FileNotFoundError(f"image {stem}_leftImg8bit.png of the panoptic JSON is not in "
                              f"{root / 'leftImg8bit' / split}")
    new_ids[im["id"]] = len(new_images) + 1
    _link(images[stem], image_dir / images[stem].name)
    new_images.append({**im, "id": new_ids[im["id"]], "file_name": images[stem].name})
  annotations = [{**a, "image_id": new_ids[a["image_id"]]} for a in data["annotations"]]
  out.mkdir(parents=True, exist_ok=True)
  (out / f"panoptic_{split}.json").write_text(json.dumps(
      {"images": new_images, "annotations": annotations, "categories": data["categories"]}))
  return len(new_images)


def entry_kwargs(key: str, prepared: str = "", coco_root: str = "coco", cityscapes_root: str = "cityscapes") -> dict:
  """Keyword arguments of `config.dataset_entry` evaluating benchmark `key` (ratio 0: evaluation only).

  `prepared` is the `--out` folder of the conversion (relative paths are joined to config.data_dir).
  Use: `c.data.datasets.voc21 = config_lib.dataset_entry(**transfer.entry_kwargs('voc21', 'transfer/voc21'))`.
  """
  semantic = dict(format="semantic_png", task="semantic", reduce_zero_label=True, ratio=0.0,
                  val_images=f"{prepared}/images/validation", val_annotations=f"{prepared}/annotations/validation",
                  eval_tasks=("semantic",))
  if key == "voc21":
    return dict(semantic, names=names_file("voc21.txt"), thing_classes=names_file("voc_things.txt"))
  if key == "voc20":
    return dict(semantic, names=names_file("voc_things.txt"), thing_classes=names_file("voc_things.txt"))
  if key == "pascal_context59":
    return dict(semantic, names=names_file("pascal_context59.txt"))
  if key == "cityscapes":
    return dict(semantic, names=names_file("cityscapes19.txt"), thing_classes=names_file("cityscapes_things.txt"))
  if key == "cityscapes_panoptic":
    return dict(format="coco_panoptic", task="panoptic", ratio=0.0, val_images=f"{prepared}/images/val",
                val_annotations=f"{prepared}/panoptic_val.json",
                val_panoptic_dir=f"{cityscapes_root}/gtFine/cityscapes_panoptic_val", eval_tasks=("panoptic",))
  if key == "coco_semantic":
    return dict(format="coco_panoptic", task="semantic", ratio=0.0, val_images=f"{coco_root}/val2017",
                val_annotations=f"{coco_root}/annotations/panoptic_val2017.json",
                val_panoptic_dir=f"{coco_root}/annotations/panoptic_val2017", eval_tasks=("semantic",))
  raise ValueError(f"unknown transfer benchmark {key!r}; expected one of {BENCHMARKS}")


PREPARE = {
    "voc21": prepare_voc,
    "voc20": lambda src, out, split="val": prepare_voc(src, out, split, with_background=False),
    "pascal_context59": prepare_pascal_context59,
    "cityscapes": prepare_cityscapes,
    "cityscapes_panoptic": prepare_cityscapes_panoptic,
}
BENCHMARKS = tuple(PREPARE) + ("coco_semantic",)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--benchmark", required=True, choices=sorted(PREPARE))
  p.add_argument("--src", required=True, help="the benchmark's native root (see the table in the module docstring)")
  p.add_argument("--out", required=True, help="folder to write (images are symlinked)")
  p.add_argument("--split", default="val", choices=sorted(SPLIT_DIRS))
  args = p.parse_args(argv)
  try:
    n = PREPARE[args.benchmark](args.src, args.out, args.split)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"{args.benchmark}: {n} {args.split} images -> {args.out}; evaluate with "
        f"dataset_entry(**transfer.entry_kwargs({args.benchmark!r}, {args.out!r}))")
  return 0


if __name__ == "__main__":
  sys.exit(main())
