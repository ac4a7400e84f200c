"""Direct-transfer benchmarks: native layouts -> the layouts our readers take, plus their vocabularies.

DaTaSeg evaluates a trained model on datasets it never saw by swapping in their class-name embeddings,
with no tuning [paper]. This module converts each benchmark's native files once (images are symlinked,
labels rewritten) and gives the `config.data.datasets` entry that evaluates it (ratio 0: evaluation only).

Label conventions. Every semantic benchmark of at most 255 classes is written in the `semantic_png` layout
(`<out>/images/validation/NAME.{jpg,png}` + `<out>/annotations/validation/NAME.png`, 8-bit grayscale)
with 0 = ignore and k + 1 = class k of the names file (`reduce_zero_label=True`). The two with more classes
(Pascal Context 459, ADE20K-847) have 16-bit labels, which the 8-bit `semantic_png` reader refuses (tf.data
decodes its labels as uint8), so they are written as COCO panoptic files evaluated with the semantic task:
`<out>/images/val/` links, `<out>/panoptic_val/NAME.png` (RGB segment ids, one segment per class present,
id = category id = class k + 1, 0 = ignore) and `<out>/panoptic_val.json`; images whose labels are all ignore
are left out (they add nothing to mIoU).

| key | names file | native source | native ignore -> 0 |
|---|---|---|---|
| voc21 | voc21.txt (background + 20) | VOC2012 `SegmentationClass/*.png` (palette indices 0..20) | 255 (object borders) |
| voc20 | voc21.txt without background | the same; background becomes ignore | 0 and 255 |
| pascal_context59 | pascal_context59.txt | VOC2010 `SegmentationClassContext/*.png` (0 = background, 1..59; mmsegmentation's conversion) | 0 |
| pascal_context459 | pascal_context459.txt | `pascal_ctx_d2/annotations_ctx459/<split>/*.tif` (16-bit 0..458: raw Pascal Context label - 1; ODISE's `prepare_pascal_ctx_full_sem_seg.py`) | 65535 (raw 0, unlabelled) |
| ade847 | ade847.txt | `ADE20K_2021_17_01/annotations_detectron2/<split>/*.tif` (16-bit trainIds 0..846; MaskFormer's `prepare_ade20k_full_sem_seg.py`) | 65535 |
| cityscapes | cityscapes19.txt | `gtFine/<split>/<city>/*_gtFine_labelIds.png` (labelIds 0..33) | every labelId without a trainId |
| cityscapes_panoptic | from the JSON (19 categories) | `gtFine/cityscapes_panoptic_<split>.json` + PNGs (cityscapesscripts `createPanopticImgs`) | crowd segments and id 0 |
| coco_semantic | from the JSON (133 categories) | COCO panoptic val2017 (no conversion; evaluated with the semantic task) | crowd segments and id 0 |

Cityscapes labelId -> trainId is the official table of cityscapesscripts `labels.py`. Cityscapes panoptic is
rewritten as a COCO panoptic JSON with integer image ids and a flat folder of image links (the original has
string ids and images in per-city folders); its PNGs are read in place. Names of the 16-bit benchmarks:
`pascal_context459.txt` lists Pascal Context's 459 labels in order (line k = raw label k, so .tif value v is
line v + 1; as ODISE's `openseg_labels/pascal_context_459.txt`, with 'pottedplant', 'tvmonitor' spelt 'potted
plant', 'tv monitor' as in voc21.txt); `ade847.txt` is MaskFormer's
`ADE20K_SEM_SEG_FULL_CATEGORIES` in trainId order (line k + 1 = trainId k), where 10 classes whose first name
another class also has are led by a synonym instead (docs/datasets.md lists them), since classes are told
apart by their first name (`vocabulary.normalise_name`).

  python scripts/prepare_transfer.py --benchmark voc21 --src VOCdevkit/VOC2012 --out data/transfer/voc21

Every file read from an id of an image list and every file written are joined to their folder by the one path rule
(`paths.inside`): an id that is absolute or climbs out of its folder ('../../x') is an error naming the list file, and
nothing is written outside the output folder.

Pure Python, numpy and PIL (no tf, no flax).
"""
import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image

from data_pipelines import paths
from dataseg_jax import panoptic_ids
from dataseg_jax.vocab import names as names_lib

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


D2_IGNORE = 65535  # detectron2's 16-bit semantic labels (.tif): ignore_label=65535, else class index
LABEL16_MODES = ("I;16", "I;16L", "I;16B", "I")
# Semantic benchmarks of more than 255 classes, written as COCO panoptic files: key -> names file.
WIDE_SEMANTIC = {"pascal_context459": "pascal_context459.txt", "ade847": "ade847.txt"}

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
    where = f"{out}: the outputs of {image}"
    _link(image, paths.inside(images, stem + image.suffix, where))
    convert_label(label, paths.inside(labels, stem + ".png", where), table)
  return len(pairs)


def _voc_pairs(root: pathlib.Path, split: str, labels_dir: str, list_dir: str, layout: str) -> list:
  """(image, label, id) of every id of the split's image list; an id that leaves its folder is a ValueError."""
  image_list = _require(root / "ImageSets" / list_dir / f"{split}.txt", "image list", layout)
  pairs = []
  for line, i in enumerate(image_list.read_text().splitlines(), start=1):
    i = i.strip()
    if not i:
      continue
    where = f"{image_list}: line {line} (id {i!r})"
    image = _require(paths.inside(root / "JPEGImages", f"{i}.jpg", where), "image", layout)
    pairs.append((image, _require(paths.inside(root / labels_dir, f"{i}.png", where), "label", layout), i))
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


def read_label16(path) -> np.ndarray:
  """16-bit single-channel label image (detectron2's .tif) -> int64 [H, W]; any other mode is a ValueError."""
  with Image.open(path) as im:
    if im.mode not in LABEL16_MODES:
      raise ValueError(f"{path}: label mode {im.mode}; expected 16-bit class indices (mode 'I;16', as detectron2's "
                       "prepare scripts write them); is it the right annotation folder?")
    return np.asarray(im).astype(np.int64)


def segment_ids(label: np.ndarray, num_classes: int, path) -> np.ndarray:
  """Class indices [H, W] (0..K-1, `D2_IGNORE` = ignore) -> segment ids: class k -> k + 1, ignore -> 0.

  Any other value is a ValueError naming the file; nothing is clipped or wrapped.
  """
  bad = ((label >= num_classes) & (label != D2_IGNORE)) | (label < 0)
  if bad.any():
    raise ValueError(f"{path}: label values {sorted(set(label[bad].tolist()))[:10]} are not in this benchmark's "
                     f"{num_classes} classes (0..{num_classes - 1}, {D2_IGNORE} = ignore); is it the right "
                     "annotation folder?")
  return np.where(label == D2_IGNORE, 0, label + 1)


def write_panoptic_png(ids: np.ndarray, dst) -> list:
  """Segment ids [H, W] (0 = void) -> COCO panoptic RGB PNG (id = R + 256 G + 256^2 B); its segments_info."""
  rgb = panoptic_ids.id_to_rgb(ids)
  Image.fromarray(rgb, mode="RGB").save(dst)
  segments = []
  for i in np.unique(ids[ids > 0]).tolist():
    ys, xs = np.nonzero(ids == i)
    x0, y0 = int(xs.min()), int(ys.min())
    segments.append({"id": i, "category_id": i, "iscrowd": 0, "area": len(ys),
                     "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]})
  return segments


def _d2_pairs(images: pathlib.Path, labels: pathlib.Path, layout: str) -> list:
  """(image, label, stem) for every `images/*.jpg` with its `labels/<stem>.tif` (detectron2's sem_seg layout)."""
  pairs = [(im, _require(labels / f"{im.stem}.tif", "label", layout), im.stem)
           for im in sorted(_require(images, "image folder", layout).glob("*.jpg"))]
  if not pairs:
    raise FileNotFoundError(f"no images in {images}; expected {layout}")
  return pairs


def _write_panoptic(pairs, out, split: str, names: str) -> int:
  """(image, 16-bit label, stem) -> `<out>/images/<split>/` links, `<out>/panoptic_<split>/` PNGs and JSON.

  Categories are the lines of names file `names` (id k + 1, all stuff); an image whose label is all ignore is
  left out. Returns the number of images written.
  """
  out = pathlib.Path(out)
  classes = names_lib.read_names(names)
  image_dir, png_dir = out / "images" / split, out / f"panoptic_{split}"
  image_dir.mkdir(parents=True, exist_ok=True)
  png_dir.mkdir(parents=True, exist_ok=True)
  images, annotations = [], []
  for image, label, stem in pairs:
    ids = segment_ids(read_label16(label), len(classes), label)
    if not ids.any():
      continue
    where = f"{out}: the outputs of {image}"
    segments = write_panoptic_png(ids, paths.inside(png_dir, f"{stem}.png", where))
    _link(image, paths.inside(image_dir, image.name, where))
    images.append({"id": len(images) + 1, "file_name": image.name, "height": ids.shape[0], "width": ids.shape[1]})
    annotations.append({"image_id": len(images), "file_name": f"{stem}.png", "segments_info": segments})
  categories = [{"id": k + 1, "name": n, "isthing": 0} for k, n in enumerate(classes)]
  (out / f"panoptic_{split}.json").write_text(json.dumps(
      {"images": images, "annotations": annotations, "categories": categories}))
  return len(images)


def prepare_pascal_context459(src, out, split: str = "val") -> int:
  """Pascal Context full labels (`pascal_ctx_d2`: 16-bit .tif, 0..458, 65535 ignore) -> COCO panoptic files."""
  root = pathlib.Path(src)
  layout = (f"<pascal_ctx_d2>/images/{SPLIT_DIRS[split]}/ID.jpg and annotations_ctx459/{SPLIT_DIRS[split]}/ID.tif "
            "(datasets/prepare_pascal_ctx_full_sem_seg.py of ODISE)")
  pairs = _d2_pairs(root / "images" / SPLIT_DIRS[split], root / "annotations_ctx459" / SPLIT_DIRS[split], layout)
  return _write_panoptic(pairs, out, split, names_file(WIDE_SEMANTIC["pascal_context459"]))


def prepare_ade847(src, out, split: str = "val") -> int:
  """ADE20K full (`ADE20K_2021_17_01`: 16-bit .tif trainIds 0..846, 65535 ignore) -> COCO panoptic files."""
  root = pathlib.Path(src)
  layout = (f"<ADE20K_2021_17_01>/images_detectron2/{SPLIT_DIRS[split]}/NAME.jpg and annotations_detectron2/"
            f"{SPLIT_DIRS[split]}/NAME.tif (datasets/prepare_ade20k_full_sem_seg.py of MaskFormer)")
  pairs = _d2_pairs(root / "images_detectron2" / SPLIT_DIRS[split],
                    root / "annotations_detectron2" / SPLIT_DIRS[split], layout)
  return _write_panoptic(pairs, out, split, names_file(WIDE_SEMANTIC["ade847"]))


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
    _link(images[stem], paths.inside(image_dir, images[stem].name, f"{out}: the image of {stem}"))
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
  if key in WIDE_SEMANTIC:
    return dict(format="coco_panoptic", task="semantic", ratio=0.0, names=names_file(WIDE_SEMANTIC[key]),
                val_images=f"{prepared}/images/val", val_annotations=f"{prepared}/panoptic_val.json",
                val_panoptic_dir=f"{prepared}/panoptic_val", eval_tasks=("semantic",))
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
    "pascal_context459": prepare_pascal_context459,
    "ade847": prepare_ade847,
    "cityscapes": prepare_cityscapes,
    "cityscapes_panoptic": prepare_cityscapes_panoptic,
}
BENCHMARKS = tuple(PREPARE) + ("coco_semantic",)

