"""Writes the toy benchmark in native formats: one visual world seen through several datasets (deterministic).

  python scripts/make_toy_data.py --out data/toy [--control] [--size 128 --seed 0]

The world (`WORLD`): a class is a texture (stuff) or a shape and a texture (things), with a typical hue. Everything
else varies per instance: the colour (the class's hue jittered by about a tenth of the colour wheel, so that it
narrows a class down to a few without naming it; any saturation and brightness), scale, rotation, aspect,
per-instance and per-image lighting, blur, noise, and unlabelled distractors (void in every annotation). Every dataset is drawn from this one world,
so a class learned from one dataset is the same class in another, which is what makes joint training able to
help (docs/results.md measures whether it does). The datasets, by default sizes (training / validation images):

  OUT/toy_ade      (60 / 300) semantic PNGs, ADEChallengeData2016 layout; names.txt, things.txt; panoptic ground
                   truth of the validation split (panoptic_val.json + panoptic_val/*.png, COCO panoptic format,
                   category id = label value) for the weak-transfer panoptic evaluation. Ten of its twelve classes
                   are also in toy_coco under the same names; curtain and lamp are its own.
  OUT/toy_coco     (2000 / 300) COCO panoptic JSON + RGB-id PNGs (a few iscrowd segments), COCO-style names that
                   normalise to toy_ade's ('sky-other-merged' -> sky) and three classes of its own.
  OUT/toy_o365     (4000 / 300) COCO detection JSON (boxes only), plus annotations/val_instances.json with RLE
                   masks of the val images (weak-transfer instance evaluation); things only, two of them under
                   synonyms ('human' for person, 'automobile' for car: other rows of the union vocabulary).
  OUT/toy_heldout  (- / 200) semantic PNGs with classes held out of every training vocabulary (kitten, parrot,
                   canoe, beach: smaller or finer variants of cat, bird, boat and sand; their names are also in
                   OUT/heldout_names.txt), whose vocabulary leaves the trained originals out (open vocabulary).
  OUT/toy_city     (200 / 64) COCO instances JSON (RLE masks) in a fourth label space ('vehicle', 'pedestrian',
                   'puppy', 'boat'): the worked example of docs/datasets.md.
  --control:       the diagnostic datasets of docs/results.md, as toy_coco and toy_o365 (same sizes, same formats,
                   same world): OUT/toy_coco_disjoint and OUT/toy_o365_disjoint, with classes that toy_ade does not
                   have and scenes without any of toy_ade's classes (the control, where joint training has nothing
                   to share); OUT/toy_coco_nosyn, toy_coco without person and car in its vocabulary or its scenes,
                   so that toy_ade's person and car are taught besides toy_ade only by toy_o365, under the synonyms
                   human and automobile (the synonym test: text against learned classifier).

`--train N` / `--val N` set every dataset's split to N images (tests use a few); `--ade_train N` sets only
toy_ade's training split (docs/results.md calibrates the world with 60 against 600); `--only` writes a subset.
"""
import functools
import json
import multiprocessing
import os
import pathlib
import sys

from absl import flags
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from dataseg_jax import cli
from dataseg_jax import panoptic_ids

# name -> (texture, shape); shape None = stuff. Colour is not part of a class.
WORLD = {
    # stuff: a texture each
    "sky": ("gradient", None), "grass": ("stripes", None), "water": ("waves", None), "road": ("dashes", None),
    "wall": ("bricks", None), "curtain": ("folds", None), "sand": ("speckle", None), "snow": ("flakes", None),
    "mud": ("crosshatch", None), "gravel": ("blobs", None), "carpet": ("grid", None), "floor": ("checker", None),
    "fence": ("diagonal", None),
    # things: a shape and a texture each
    "car": ("stripes", "square"), "person": ("flat", "disc"), "dog": ("dots", "triangle"),
    "chair": ("checker", "cross"), "bottle": ("zigzag", "hexagon"), "lamp": ("flat", "ring"),
    "cat": ("flat", "star"), "bird": ("dots", "crescent"), "boat": ("stripes", "trapezoid"),
    "umbrella": ("rings", "dome"), "kite": ("checker", "arrow"), "clock": ("rings", "disc"),
    "cup": ("flat", "tee"), "horse": ("zigzag", "ell"), "book": ("dots", "bar"),
}
# Held-out classes: variants of trained classes under related names that no training vocabulary uses: things drawn
# at 0.6x the size, stuff with a texture twice as fine (`VARIANT_SCALE`).
VARIANTS = {"kitten": "cat", "parrot": "bird", "canoe": "boat", "beach": "sand"}
WORLD.update({name: WORLD[of] for name, of in VARIANTS.items()})
VARIANT_SCALE = 0.6
# dataset -> {local name: world class}
VOCABS = {
    "toy_ade": {n: n for n in ("sky", "grass", "water", "road", "wall", "curtain", "car", "person", "dog", "chair",
                               "bottle", "lamp")},
    "toy_coco": {"sky-other-merged": "sky", "grass-merged": "grass", "water-other": "water", "road": "road",
                 "wall-other-merged": "wall", "sand": "sand", "snow": "snow", "person": "person", "car": "car",
                 "dog": "dog", "chair": "chair", "bottle": "bottle", "cat": "cat", "bird": "bird"},
    "toy_o365": {"human": "person", "automobile": "car", "dog": "dog", "chair": "chair", "bottle": "bottle",
                 "cat": "cat", "bird": "bird", "boat": "boat", "umbrella": "umbrella"},
    "toy_coco_disjoint": {n: n for n in ("sand", "snow", "mud", "gravel", "carpet", "floor", "fence", "cat", "bird",
                                         "boat", "umbrella", "kite", "clock", "cup")},
    "toy_o365_disjoint": {n: n for n in ("cat", "bird", "boat", "umbrella", "kite", "clock", "cup", "horse", "book")},
    "toy_city": {"vehicle": "car", "pedestrian": "person", "puppy": "dog", "boat": "boat"},
    "toy_heldout": {n: n for n in ("sky", "beach", "grass", "person", "car", "kitten", "parrot", "canoe")},
}
# The synonym test's toy_coco: without the classes that toy_o365 names by synonyms of toy_ade's names (person, car).
SYNONYM_CLASSES = {c for n, c in VOCABS["toy_o365"].items()
                   if c in VOCABS["toy_ade"].values() and n not in VOCABS["toy_ade"]}
VOCABS["toy_coco_nosyn"] = {n: c for n, c in VOCABS["toy_coco"].items() if c not in SYNONYM_CLASSES}
HELDOUT = tuple(VARIANTS)
# dataset -> (format, default training images, default validation images). New datasets go last: a dataset's
# position seeds its images (`_image_rng`), so appending leaves every existing file as it was.
DATASETS = {
    "toy_ade": ("semantic", 60, 300), "toy_coco": ("panoptic", 2000, 300), "toy_o365": ("detection", 4000, 300),
    "toy_heldout": ("semantic", 0, 200), "toy_city": ("instances", 200, 64),
    "toy_coco_disjoint": ("panoptic", 2000, 300), "toy_o365_disjoint": ("detection", 4000, 300),
    "toy_coco_nosyn": ("panoptic", 2000, 300),
}
CONTROL = ("toy_coco_disjoint", "toy_o365_disjoint")
DIAGNOSTIC = CONTROL + ("toy_coco_nosyn",)  # written with --control only
BACKGROUNDS = ("road", "sand", "wall", "grass")  # unlabelled backgrounds of datasets without stuff classes
CONTROL_BACKGROUNDS = ("sand", "mud", "gravel", "carpet")  # ... of the control's, which avoid toy_ade's classes


def is_thing(world_class: str) -> bool:
  return WORLD[world_class][1] is not None


HUE_JITTER = 0.06  # standard deviation of a class's hue per instance, as a fraction of the colour wheel


def class_hue(world_class: str) -> float:
  """The class's typical hue in [0, 1): the world's classes spread around the colour wheel in `WORLD` order, a
  variant (`VARIANTS`) sharing its original's."""
  names = [n for n in WORLD if n not in VARIANTS]
  return (names.index(VARIANTS.get(world_class, world_class)) * 0.382) % 1.0  # golden-ratio spacing


def random_colour(rng, hue: float | None = None) -> np.ndarray:
  """A colour of hue `hue` jittered by HUE_JITTER (any hue when None), saturation 0.35-1 and value 0.5-1, as RGB
  float [3] in 0-255."""
  h = rng.uniform(0, 1) if hue is None else (hue + HUE_JITTER * rng.standard_normal()) % 1.0
  s, v = rng.uniform(0.35, 1.0), rng.uniform(0.5, 1.0)
  k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
  return 255 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def pattern(kind: str, yy: np.ndarray, xx: np.ndarray, rng, period: float) -> np.ndarray:
  """Brightness pattern in about [0.5, 1.3] of texture `kind` at coordinates (yy, xx) (already rotated, in
  pixels), with its characteristic period in pixels; random phase."""
  phase = rng.uniform(0, 2 * np.pi)
  f = 2 * np.pi / period
  if kind == "gradient":
    return 1.15 - 0.45 * (yy - yy.min()) / max(float(np.ptp(yy)), 1.0)
  if kind == "stripes":
    return 0.8 + 0.25 * np.sign(np.sin(xx * f + phase))
  if kind == "waves":
    return 0.85 + 0.25 * np.sin(xx * f * 0.5 + 2.0 * np.sin(yy * f * 0.6) + phase)
  if kind == "dashes":
    return 1.0 + 0.3 * ((np.sin(yy * f * 0.5 + phase) > 0.8) & (np.sin(xx * f * 0.7) > 0))
  if kind == "bricks":
    row = np.floor(yy / period)
    return 1.0 - 0.45 * (((yy % period) < 1.2) | (((xx + period * (row % 2)) % (2 * period)) < 1.2))
  if kind == "folds":
    return 0.75 + 0.35 * np.abs(np.sin(xx * f * 0.35 + phase))
  if kind == "speckle":
    return 0.75 + 0.45 * rng.random(yy.shape, dtype=np.float32)
  if kind == "flakes":
    return 0.85 + 0.6 * (rng.random(yy.shape, dtype=np.float32) > 0.93)
  if kind == "crosshatch":
    return 1.0 - 0.35 * ((np.sin((xx + yy) * f) > 0.85) | (np.sin((xx - yy) * f) > 0.85))
  if kind == "blobs":
    coarse = rng.random((int(yy.shape[0] / period) + 2, int(yy.shape[1] / period) + 2), dtype=np.float32)
    return 0.7 + 0.55 * ndimage.zoom(coarse, period, order=1)[:yy.shape[0], :yy.shape[1]]
  if kind == "grid":
    return 1.0 - 0.4 * (((yy % period) < 1.0) | ((xx % period) < 1.0))
  if kind == "checker":
    return 0.75 + 0.4 * ((np.floor(yy / period) + np.floor(xx / period)) % 2)
  if kind == "diagonal":
    return 0.8 + 0.3 * np.sign(np.sin((xx + yy) * f * 0.7 + phase))
  if kind == "dots":
    return 1.0 - 0.5 * ((np.sin(xx * f * 1.4 + phase) > 0.6) & (np.sin(yy * f * 1.4) > 0.6))
  if kind == "zigzag":
    return 0.8 + 0.3 * np.sign(np.sin(yy * f + 2.5 * np.abs(((xx / period) % 2) - 1)))
  if kind == "rings":
    cy, cx = yy.mean(), xx.mean()
    return 0.8 + 0.3 * np.sign(np.sin(np.hypot(yy - cy, xx - cx) * f))
  if kind == "flat":
    return np.ones(yy.shape, np.float32)
  raise ValueError(kind)


def texture(world_class: str, h: int, w: int, rng, angle: float = 0.0, period_scale: float = 1.0,
            y0: int = 0, x0: int = 0) -> np.ndarray:
  """[h, w, 3] float: the class's texture in a colour of its hue (`random_colour`), its pattern rotated by `angle`,
  on the window at (y0, x0) of the image."""
  yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
  c, s = np.cos(angle), np.sin(angle)
  ry, rx = c * yy - s * xx, s * yy + c * xx
  period = rng.uniform(5.0, 8.0) * period_scale
  m = pattern(WORLD[world_class][0], ry, rx, rng, period)
  return random_colour(rng, class_hue(world_class))[None, None] * m[..., None]


def shape_mask(shape: str, h: int, w: int, cy: float, cx: float, r: float, angle: float = 0.0,
               aspect: float = 1.0) -> np.ndarray:
  """Boolean [h, w] mask of `shape` centred at (cy, cx), radius r, rotated by `angle`, stretched by `aspect`."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  c, s = np.cos(angle), np.sin(angle)
  dy0, dx0 = yy - cy, xx - cx
  dy, dx = (c * dy0 - s * dx0) * np.sqrt(aspect), (s * dy0 + c * dx0) / np.sqrt(aspect)
  rad, ang = np.hypot(dy, dx), np.arctan2(dy, dx)
  if shape == "square":
    return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
  if shape == "disc":
    return rad <= r
  if shape == "ring":
    return (rad <= r) & (rad >= r * 0.55)
  if shape == "triangle":
    return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
  if shape == "star":
    return rad <= r * (0.5 + 0.5 * np.cos(2.5 * ang) ** 2)
  if shape == "cross":
    return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
  if shape == "hexagon":
    return np.cos(np.pi / 6) * r >= np.max(np.abs(np.stack(
        [dx * np.cos(a) + dy * np.sin(a) for a in (0, np.pi / 3, 2 * np.pi / 3)])), axis=0)
  if shape == "crescent":
    return (rad <= r) & (np.hypot(dy, dx - 0.45 * r) > 0.8 * r)
  if shape == "trapezoid":
    return (np.abs(dy) <= r * 0.55) & (np.abs(dx) <= r * (0.6 + 0.4 * (dy + r * 0.55) / (1.1 * r)))
  if shape == "dome":
    return (rad <= r) & (dy <= 0.1 * r)
  if shape == "arrow":
    return (((np.abs(dy) <= r * 0.22) & (dx >= -r) & (dx <= 0.1 * r))
            | ((dx >= 0.1 * r) & (dx <= r) & (np.abs(dy) <= (r - dx) * 0.9)))
  if shape == "tee":
    return (((dy >= -r) & (dy <= -0.45 * r) & (np.abs(dx) <= r))
            | ((np.abs(dx) <= 0.3 * r) & (dy >= -r) & (dy <= r)))
  if shape == "ell":
    return (((dx >= -r) & (dx <= -0.35 * r) & (np.abs(dy) <= r))
            | ((dy >= 0.35 * r) & (dy <= r) & (dx >= -r) & (dx <= r)))
  if shape == "bar":
    return (np.abs(dy) <= r * 0.35) & (np.abs(dx) <= r)
  raise ValueError(shape)


def _distractor(h: int, w: int, rng) -> np.ndarray:
  """Boolean [h, w] mask of an unlabelled blob: a random convex polygon."""
  cy, cx = rng.uniform(0, h), rng.uniform(0, w)
  r = rng.uniform(0.05, 0.15) * min(h, w)
  angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  inside = np.hypot(yy - cy, xx - cx) <= 1.6 * r
  for a in angles:  # intersection of half-planes tangent at random angles
    inside &= (yy - cy) * np.sin(a) + (xx - cx) * np.cos(a) <= r
  return inside


def draw_scene(vocab: dict, h: int, w: int, rng, backgrounds=BACKGROUNDS):
  """One image of the world through a dataset's vocabulary.

  Returns (image uint8 [h, w, 3], stuff label [h, w] (local index, -1 void), instances [(local index, visible
  mask)]). Stuff: 1-3 bands with wavy borders; then 0-2 unlabelled distractors (void); then 1-6 things, later
  ones occluding earlier ones; then lighting, blur and noise over the whole image.
  """
  names = list(vocab)
  stuff = [i for i, n in enumerate(names) if not is_thing(vocab[n])]
  things = [i for i, n in enumerate(names) if is_thing(vocab[n])]
  img = np.zeros((h, w, 3), np.float32)
  label = np.full((h, w), -1, np.int32)
  pool = [(i, vocab[names[i]]) for i in stuff] or [(-1, n) for n in backgrounds]  # unlabelled when no stuff
  n_bands = rng.integers(1, min(3, len(pool)) + 1)
  chosen = [pool[j] for j in rng.choice(len(pool), size=n_bands, replace=False)]
  cuts = np.sort(rng.uniform(0.2, 0.8, n_bands - 1)) * h
  xx = np.arange(w)
  bounds = [np.zeros(w)] + [c + 6 * np.sin(xx * 0.08 + rng.uniform(0, 6)) for c in cuts] + [np.full(w, h)]
  yy = np.arange(h)[:, None]
  for b, (cls, world) in enumerate(chosen):
    region = (yy >= bounds[b][None]) & (yy < bounds[b + 1][None])
    scale = 0.5 if world in VARIANTS else 1.0
    img[region] = texture(world, h, w, rng, angle=rng.uniform(-0.3, 0.3), period_scale=scale)[region]
    label[region] = cls
  for _ in range(rng.integers(0, 3)):
    m = _distractor(h, w, rng)
    img[m] = (random_colour(rng)[None] * (0.6 + 0.8 * rng.random((int(m.sum()), 1)))).clip(0, 255)
    label[m] = -1
  instances = []
  for _ in range(rng.integers(1, 7)):
    cls = int(rng.choice(things))
    world = vocab[names[cls]]
    r = rng.uniform(0.08, 0.2) * min(h, w) * (VARIANT_SCALE if world in VARIANTS else 1.0)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    angle, aspect = rng.uniform(0, 2 * np.pi), float(np.exp(rng.uniform(-0.3, 0.3)))
    m = shape_mask(WORLD[world][1], h, w, cy, cx, r, angle, aspect)
    if not m.any():
      continue
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    window = m[y0:y1, x0:x1]
    patch = texture(world, y1 - y0, x1 - x0, rng, angle, 1.0, y0, x0) * rng.uniform(0.8, 1.2)
    img[y0:y1, x0:x1][window] = patch[window]
    instances = [(c, mm & ~m) for c, mm in instances]
    instances.append((cls, m))
  instances = [(c, m) for c, m in instances if m.sum() >= 12]
  ramp_y, ramp_x = rng.uniform(-1, 1, 2)
  light = rng.uniform(0.8, 1.15) + 0.2 * (ramp_y * (yy / h - 0.5) + ramp_x * (xx[None] / w - 0.5))
  img *= light[..., None]
  if rng.random() < 0.3:
    img = ndimage.gaussian_filter(img, sigma=(rng.uniform(0.3, 0.8),) * 2 + (0,))
  img += rng.uniform(2, 6) * rng.standard_normal(img.shape, dtype=np.float32)
  return np.clip(img, 0, 255).astype(np.uint8), label, instances


def _bbox(m):
  ys, xs = np.nonzero(m)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _image_rng(seed: int, dataset: str, split: str, i: int):
  """The generator of image i of a split: independent of how many images or processes there are."""
  key = [seed, list(DATASETS).index(dataset), ("train", "val").index(split), i]
  return np.random.default_rng(key)


def _size(size: int, rng):
  return size, int(round(size * rng.uniform(0.8, 1.25) / 8)) * 8


def _backgrounds(dataset: str):
  return CONTROL_BACKGROUNDS if dataset in CONTROL else BACKGROUNDS


def semantic_image(dataset: str, split: str, size: int, seed: int, root: str, i: int) -> dict:
  """Writes image i of a semantic split (ADE layout; label k + 1 for local class k, 0 void) and, for validation,
  its panoptic ground truth; returns its panoptic JSON entries (None for training)."""
  rng = _image_rng(seed, dataset, split, i)
  vocab = VOCABS[dataset]
  h, w = _size(size, rng)
  img, label, inst = draw_scene(vocab, h, w, rng, _backgrounds(dataset))
  for cls, m in inst:
    label[m] = cls
  folder = "training" if split == "train" else "validation"
  stem = f"ADE_{split}_{i + 1:08d}"
  base = pathlib.Path(root)
  Image.fromarray(img).save(base / "images" / folder / f"{stem}.jpg", quality=92)
  Image.fromarray((label + 1).astype(np.uint8)).save(base / "annotations" / folder / f"{stem}.png")
  if split == "train":
    return None
  isthing = [int(is_thing(vocab[n])) for n in vocab]
  rgb, info = semantic_panoptic(label, inst, isthing)
  Image.fromarray(rgb).save(base / "panoptic_val" / f"{stem}.png")
  return {"image": {"id": i + 1, "file_name": f"{stem}.jpg", "height": h, "width": w},
          "annotation": {"image_id": i + 1, "file_name": f"{stem}.png", "segments_info": info}}


def semantic_panoptic(label, instances, isthing):
  """Panoptic ground truth of a semantic label map -> (RGB PNG uint8 [h, w, 3], segments_info).

  Stuff class k: one segment of all its pixels; things: one segment per drawn instance (its visible,
  labelled pixels), so touching instances of a class stay apart and an occluded one split in two stays
  one. Id = (k + 1) * 1000 + j (j: instance number; 0 for stuff), 0 void; category id = k + 1.
  """
  ids = np.zeros(label.shape, np.int64)
  info = []
  segs = [(int(k), label == k) for k in np.unique(label[label >= 0]) if not isthing[k]]
  segs += [(c, m & (label == c)) for c, m in instances]
  count = {}
  for k, m in segs:
    if not m.any():
      continue
    j = count[k] = count.get(k, -1) + 1
    sid = (k + 1) * 1000 + j
    ids[m] = sid
    info.append({"id": sid, "category_id": k + 1, "iscrowd": 0, "isthing": int(isthing[k]),
                 "bbox": _bbox(m), "area": int(m.sum())})
  rgb = panoptic_ids.id_to_rgb(ids)
  return rgb, info


def category_ids(dataset: str) -> dict:
  """Local name -> category id: 1..K in vocabulary order."""
  return {n: k + 1 for k, n in enumerate(VOCABS[dataset])}


def panoptic_image(dataset: str, split: str, size: int, seed: int, root: str, i: int) -> dict:
  """Writes image i of a COCO panoptic split (RGB PNG, id = R + 256 G + 256^2 B; ~8% of thing segments iscrowd);
  returns its JSON entries."""
  rng = _image_rng(seed, dataset, split, i)
  vocab = VOCABS[dataset]
  names, ids = list(vocab), category_ids(dataset)
  h, w = _size(size, rng)
  img, label, inst = draw_scene(vocab, h, w, rng, _backgrounds(dataset))
  pan = np.zeros((h, w), np.int64)
  segs = []
  for cls in np.unique(label[label >= 0]):
    m = label == cls
    for _, im in inst:
      m &= ~im
    if m.sum():
      segs.append((int(cls), m, 0))
  segs += [(c, m, int(rng.random() < 0.08)) for c, m in inst]
  info = []
  for j, (cls, m, crowd) in enumerate(segs):
    sid = int(rng.integers(64, 2 ** 24 - 64)) // 64 * 64 + j  # distinct ids, all three channels used
    pan[m] = sid
    info.append({"id": sid, "category_id": ids[names[cls]], "iscrowd": crowd, "bbox": _bbox(m),
                 "area": int(m.sum())})
  image_id = i + 1
  fname = f"{image_id:012d}"
  base = pathlib.Path(root)
  Image.fromarray(img).save(base / split / f"{fname}.jpg", quality=92)
  rgb = panoptic_ids.id_to_rgb(pan)
  Image.fromarray(rgb).save(base / "annotations" / f"panoptic_{split}" / f"{fname}.png")
  return {"image": {"id": image_id, "file_name": f"{fname}.jpg", "height": h, "width": w},
          "annotation": {"image_id": image_id, "file_name": f"{fname}.png", "segments_info": info}}


def detection_image(dataset: str, split: str, size: int, seed: int, root: str, i: int, prefix: str = "obj365"):
  """Writes image i of a detection split; returns its image entry and its annotations with RLE masks (without
  ids: the caller numbers them)."""
  rng = _image_rng(seed, dataset, split, i)
  vocab = VOCABS[dataset]
  names, ids = list(vocab), category_ids(dataset)
  h, w = _size(size, rng)
  img, _, inst = draw_scene(vocab, h, w, rng, _backgrounds(dataset))
  fname = f"{prefix}_{split}_{i + 1:06d}.jpg"
  Image.fromarray(img).save(pathlib.Path(root) / split / fname, quality=92)
  anns = []
  for cls, m in inst:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    anns.append({"image_id": i + 1, "category_id": ids[names[cls]], "bbox": _bbox(m), "area": int(m.sum()),
                 "iscrowd": 0, "segmentation": rle})
  return {"image": {"id": i + 1, "file_name": fname, "height": h, "width": w}, "annotations": anns}


def _generate(pool, fn, count: int) -> list:
  """[fn(i) for i in range(count)], on the pool's processes when there is one."""
  if pool is None:
    return [fn(i) for i in range(count)]
  return pool.map(fn, range(count), chunksize=max(1, count // (8 * os.cpu_count())))


def write_semantic(out: pathlib.Path, name: str, splits, size: int, seed: int, pool) -> None:
  """ADE layout; the validation split also gets panoptic_val.json + panoptic_val/ (see `semantic_panoptic`)."""
  vocab = VOCABS[name]
  root = out / name
  cats = [{"id": k + 1, "name": n, "isthing": int(is_thing(vocab[n]))} for k, n in enumerate(vocab)]
  for split, n in splits:
    folder = "training" if split == "train" else "validation"
    (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    if split == "val":
      (root / "panoptic_val").mkdir(parents=True, exist_ok=True)
    entries = _generate(pool, functools.partial(semantic_image, name, split, size, seed, str(root)), n)
    if split == "val":
      (root / "panoptic_val.json").write_text(json.dumps(
          {"info": {"description": f"{name} panoptic"}, "licenses": [], "categories": cats,
           "images": [e["image"] for e in entries], "annotations": [e["annotation"] for e in entries]}))
  (root / "names.txt").write_text("\n".join(vocab) + "\n")
  (root / "things.txt").write_text("\n".join(n for n in vocab if is_thing(vocab[n])) + "\n")


def write_panoptic(out: pathlib.Path, name: str, splits, size: int, seed: int, pool) -> None:
  vocab = VOCABS[name]
  cats = [{"id": category_ids(name)[n], "name": n, "supercategory": "thing" if is_thing(vocab[n]) else "stuff",
           "isthing": int(is_thing(vocab[n]))} for n in vocab]
  root = out / name
  for split, n in splits:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
    entries = _generate(pool, functools.partial(panoptic_image, name, split, size, seed, str(root)), n)
    (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(
        {"info": {"description": name}, "licenses": [], "categories": cats,
         "images": [e["image"] for e in entries], "annotations": [e["annotation"] for e in entries]}))


def write_detection(out: pathlib.Path, name: str, splits, size: int, seed: int, pool, prefix: str = "obj365",
                    instance_splits=("val",)) -> None:
  """COCO detection JSON (visible-part boxes) per split, and `<split>_instances.json` with RLE instance masks for
  the splits in `instance_splits`."""
  vocab = VOCABS[name]
  cats = [{"id": category_ids(name)[n], "name": n, "supercategory": "thing"} for n in vocab]
  root = out / name
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  for split, n in splits:
    (root / split).mkdir(parents=True, exist_ok=True)
    entries = _generate(pool, functools.partial(detection_image, name, split, size, seed, str(root), prefix=prefix), n)
    masks = [dict(a, id=k + 1) for k, a in enumerate(a for e in entries for a in e["annotations"])]
    doc = {"info": {"description": name}, "licenses": [], "images": [e["image"] for e in entries],
           "categories": cats}
    boxes = [{k: v for k, v in a.items() if k != "segmentation"} for a in masks]
    (root / "annotations" / f"{split}.json").write_text(json.dumps(dict(doc, annotations=boxes)))
    if split in instance_splits:
      (root / "annotations" / f"{split}_instances.json").write_text(json.dumps(dict(doc, annotations=masks)))


def write_dataset(out: pathlib.Path, name: str, train: int, val: int, size: int, seed: int, pool) -> None:
  kind = DATASETS[name][0]
  splits = [(s, n) for s, n in (("train", train), ("val", val)) if n > 0]
  if kind == "semantic":
    write_semantic(out, name, splits, size, seed, pool)
  elif kind == "panoptic":
    write_panoptic(out, name, splits, size, seed, pool)
  elif name == "toy_city":
    write_detection(out, name, splits, size, seed, pool, prefix="city", instance_splits=("train", "val"))
  else:
    write_detection(out, name, splits, size, seed, pool)


def write(out: str, train: int = None, val: int = None, ade_train: int = None, size: int = 128, seed: int = 0,
          control: bool = False, only=(), processes: int = os.cpu_count()) -> list:
  """Writes the datasets `only` (default: all but the DIAGNOSTIC ones, with them when `control`) under `out`;
  `train` / `val`: images of every dataset's split instead of its default, `ade_train`: toy_ade's training images.
  Returns the names written."""
  out = pathlib.Path(out)
  names = list(only) or [n for n in DATASETS if n not in DIAGNOSTIC or control]
  unknown = sorted(set(names) - set(DATASETS))
  if unknown:
    raise ValueError(f"unknown datasets {unknown}; expected some of {list(DATASETS)}")
  out.mkdir(parents=True, exist_ok=True)
  pool = multiprocessing.get_context("fork").Pool(processes) if processes > 1 else None
  try:
    for name in names:
      _, n_train, n_val = DATASETS[name]
      n_train = n_train if train is None or not n_train else train
      n_train = ade_train if name == "toy_ade" and ade_train is not None else n_train
      write_dataset(out, name, n_train, n_val if val is None else val, size, seed, pool)
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  (out / "heldout_names.txt").write_text("\n".join(HELDOUT) + "\n")
  return names


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so importing the module defines none."""
  flags.DEFINE_string("out", "data/toy", "Folder to write the datasets into.")
  flags.DEFINE_integer("train", None, "Training images of every dataset (default: its own).")
  flags.DEFINE_integer("val", None, "Validation images of every dataset (default: its own).")
  flags.DEFINE_integer("ade_train", None, "Training images of toy_ade (applied after --train).")
  flags.DEFINE_integer("size", 128, "Image height; widths vary 0.8-1.25x.")
  flags.DEFINE_integer("seed", 0, "The world's seed: the same seed writes the same files.")
  flags.DEFINE_bool("control", False, "Also write the diagnostic datasets: the control and the synonym test "
                    "(module docstring).")
  flags.DEFINE_list("only", [], "Datasets to write, comma-separated (default: all but the diagnostic ones).")
  flags.DEFINE_integer("processes", os.cpu_count(), "Worker processes (1: none).")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    names = write(f.out, f.train, f.val, f.ade_train, f.size, f.seed, f.control, f.only, f.processes)
  except ValueError as e:
    sys.exit(f"error: --only: {e}")
  print(f"wrote {', '.join(names)} to {os.path.abspath(f.out)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
