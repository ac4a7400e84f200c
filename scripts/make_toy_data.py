"""Writes the toy three-dataset benchmark in native formats (deterministic for a given --seed).

  python scripts/make_toy_data.py --out data/toy [--train 400 --val 64 --size 128 --seed 0]

One procedural world: stuff is textured background regions (sky, grass, water, road, sand, wall),
things are coloured textured shapes (car = red square, person = blue disc, ...). Each class
has its own colour, texture and shape, so a tiny model can learn them. Three datasets see this
world through different label spaces, with synonyms ('car' / 'automobile', 'water' / 'sea',
'person' / 'human') and shared names ('sky', 'dog'):

  OUT/toy_ade      semantic PNGs, ADEChallengeData2016 layout; names.txt, things.txt; and for the
                   validation split panoptic ground truth (panoptic_val.json + panoptic_val/*.png, COCO
                   panoptic format, category id = label value) for the weak-transfer panoptic evaluation
  OUT/toy_coco     COCO panoptic JSON + RGB-id PNGs (a few iscrowd segments)
  OUT/toy_o365     COCO detection JSON (boxes only), plus annotations/val_instances.json with
                   RLE masks of the val images (weak-transfer instance evaluation)
  OUT/toy_city     COCO instances JSON (RLE masks) for train and val, in a fourth label space ('vehicle',
                   'pedestrian', 'puppy', 'boat'): the worked example of docs/datasets.md
  OUT/toy_heldout  semantic PNGs (validation only) containing classes held out of every
                   training vocabulary; their names in OUT/heldout_names.txt (open vocabulary). Each is a
                   visual variant (paler, same texture and shape) of a trained class under a related name
                   (kitten ~ cat, parrot ~ bird, canoe ~ boat, beach ~ sand), as a transfer benchmark's
                   classes relate to the training ones; the trained originals are not in its vocabulary
"""
import argparse
import json
import os
import pathlib

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# name -> (base RGB, texture, shape); shape None = stuff.
WORLD = {
    "sky": ((110, 170, 235), "gradient", None),
    "grass": ((60, 150, 50), "stripes", None),
    "water": ((30, 80, 170), "waves", None),
    "road": ((95, 95, 100), "dashes", None),
    "sand": ((220, 195, 130), "speckle", None),
    "wall": ((170, 90, 70), "bricks", None),
    "car": ((220, 30, 30), "flat", "square"),
    "person": ((40, 60, 230), "flat", "disc"),
    "dog": ((240, 220, 30), "dots", "triangle"),
    "cat": ((230, 40, 220), "flat", "star"),
    "bottle": ((30, 220, 220), "stripes", "diamond"),
    "chair": ((250, 250, 250), "checker", "cross"),
    "bird": ((250, 140, 20), "flat", "ellipse"),
    "boat": ((120, 40, 160), "dots", "hexagon"),
}
# Held-out classes: visual variants (paler colour, same texture and shape) of trained classes, under related
# names that no training vocabulary uses, as a direct-transfer benchmark's classes relate to the training ones.
VARIANTS = {"kitten": "cat", "parrot": "bird", "canoe": "boat", "beach": "sand"}
WORLD.update({name: (tuple(int(0.6 * c + 0.4 * 255) for c in WORLD[of][0]), *WORLD[of][1:])
              for name, of in VARIANTS.items()})
# dataset -> {local name: world class}
VOCABS = {
    "toy_ade": {"sky": "sky", "grass": "grass", "water": "water", "road": "road", "wall": "wall",
                "car": "car", "person": "person", "dog": "dog", "chair": "chair", "bottle": "bottle"},
    "toy_coco": {"person": "person", "automobile": "car", "cat": "cat", "bird": "bird", "bottle": "bottle",
                 "sky-other-merged": "sky", "grass-merged": "grass", "sea": "water", "sand": "sand"},
    "toy_o365": {"human": "person", "car": "car", "dog": "dog", "cat": "cat", "bird": "bird",
                 "boat": "boat", "chair": "chair"},
    "toy_city": {"vehicle": "car", "pedestrian": "person", "puppy": "dog", "boat": "boat"},
    "toy_heldout": {"sky": "sky", "beach": "beach", "grass": "grass", "person": "person", "car": "car",
                    "kitten": "kitten", "parrot": "parrot", "canoe": "canoe"},
}
HELDOUT = tuple(VARIANTS)
COCO_IDS = {"person": 1, "automobile": 3, "bird": 16, "cat": 17, "bottle": 44,
            "sky-other-merged": 187, "grass-merged": 193, "sea": 154, "sand": 153}


def texture(name, h, w, rng, y0=0, x0=0):
  """Class-specific texture [h, w, 3] float of the window at (y0, x0): base colour times its pattern."""
  base, kind, _ = WORLD[name]
  yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
  phase = rng.uniform(0, 6.28)
  if kind == "gradient":
    m = 1.0 - 0.3 * yy / max(h, 1)
  elif kind == "stripes":
    m = 0.8 + 0.2 * np.sign(np.sin(xx * 0.9 + phase))
  elif kind == "waves":
    m = 0.8 + 0.2 * np.sin(xx * 0.3 + 2.0 * np.sin(yy * 0.4) + phase)
  elif kind == "dashes":
    m = 1.0 + 0.5 * ((np.abs(yy - h / 2) < 1.5) & (np.sin(xx * 0.4 + phase) > 0))
  elif kind == "speckle":
    m = 0.85 + 0.3 * rng.random((h, w), dtype=np.float32)
  elif kind == "bricks":
    m = 1.0 - 0.4 * ((yy % 8 < 1) | ((xx + 8 * ((yy // 8) % 2)) % 16 < 1))
  elif kind == "dots":
    m = 1.0 - 0.5 * ((np.sin(xx * 1.2 + phase) > 0.7) & (np.sin(yy * 1.2) > 0.7))
  elif kind == "checker":
    m = 0.75 + 0.25 * (((xx // 3) + (yy // 3)) % 2)
  else:
    m = np.ones((h, w), np.float32)
  noise = 6 * rng.standard_normal((h, w, 3), dtype=np.float32)
  return np.clip(np.asarray(base, np.float32)[None, None] * m[..., None] + noise, 0, 255)


def shape_mask(shape, h, w, cy, cx, r):
  """Boolean [h, w] mask of a shape centred at (cy, cx) with radius r."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  dy, dx = yy - cy, xx - cx
  rad, ang = np.hypot(dy, dx), np.arctan2(dy, dx)
  if shape == "square":
    return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
  if shape == "disc":
    return rad <= r
  if shape == "ring":
    return (rad <= r) & (rad >= r * 0.5) | ((np.abs(dx) <= 1.5) & (dy >= 0) & (dy <= r * 1.4))
  if shape == "triangle":
    return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
  if shape == "star":
    return rad <= r * (0.55 + 0.45 * np.cos(5 * ang) ** 2)
  if shape == "diamond":
    return np.abs(dy) / r + np.abs(dx) / (r * 0.6) <= 1
  if shape == "cross":
    return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r))
  if shape == "ellipse":
    return (dx / r) ** 2 + (dy / (r * 0.55)) ** 2 <= 1
  if shape == "hexagon":
    return np.cos(np.pi / 6) * r >= np.max(np.abs(np.stack(
        [dx * np.cos(a) + dy * np.sin(a) for a in (0, np.pi / 3, 2 * np.pi / 3)])), axis=0)
  raise ValueError(shape)


def draw_scene(vocab, h, w, rng):
  """-> image uint8 [h, w, 3], stuff label [h, w] (local index or -1), instances [(local, mask)]."""
  names = list(vocab)
  stuff = [i for i, n in enumerate(names) if WORLD[vocab[n]][2] is None]
  things = [i for i, n in enumerate(names) if WORLD[vocab[n]][2] is not None]
  img = np.zeros((h, w, 3), np.float32)
  label = np.full((h, w), -1, np.int32)
  if stuff:  # (local index, world class); datasets without stuff get unlabeled backgrounds
    pool = [(i, vocab[names[i]]) for i in stuff]
  else:
    pool = [(-1, n) for n in ("road", "sand", "wall", "grass")]
  n_bands = rng.integers(1, min(3, len(pool)) + 1)
  chosen = [pool[j] for j in rng.choice(len(pool), size=n_bands, replace=False)]
  cuts = np.sort(rng.uniform(0.2, 0.8, n_bands - 1)) * h
  xx = np.arange(w)
  bounds = [np.zeros(w)] + [c + 6 * np.sin(xx * 0.08 + rng.uniform(0, 6)) for c in cuts] + [np.full(w, h)]
  yy = np.arange(h)[:, None]
  for b, (cls, world) in enumerate(chosen):
    region = (yy >= bounds[b][None]) & (yy < bounds[b + 1][None])
    img[region] = texture(world, h, w, rng)[region]
    label[region] = cls
  instances = []
  for _ in range(rng.integers(1, 6)):
    cls = int(rng.choice(things))
    r = rng.uniform(0.07, 0.2) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    m = shape_mask(WORLD[vocab[names[cls]]][2], h, w, cy, cx, r)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    window = m[y0:y1, x0:x1]
    img[y0:y1, x0:x1][window] = texture(vocab[names[cls]], y1 - y0, x1 - x0, rng, y0, x0)[window]
    instances = [(c, mm & ~m) for c, mm in instances]
    instances.append((cls, m))
  instances = [(c, m) for c, m in instances if m.sum() >= 12]
  return img.astype(np.uint8), label, instances


def _save_jpg(path, img):
  Image.fromarray(img).save(path, quality=92)


def _size(args, rng):
  return args.size, int(round(args.size * rng.uniform(0.8, 1.25) / 8)) * 8


def write_semantic(out, name, splits, args, rng, panoptic_splits=()):
  """ADE layout; label k + 1 for local class k, 0 void (a few void blobs of clutter).

  For the splits in `panoptic_splits` also `panoptic_<tag>.json` + `panoptic_<tag>/` (see `semantic_panoptic`).
  """
  vocab = VOCABS[name]
  root = out / name
  cats = [{"id": k + 1, "name": n, "isthing": int(WORLD[vocab[n]][2] is not None),
           "color": list(WORLD[vocab[n]][0])} for k, n in enumerate(vocab)]
  for split, n in splits:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    tag = "train" if split == "training" else "val"
    pan_images, pan_anns = [], []
    if split in panoptic_splits:
      (root / f"panoptic_{tag}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
      h, w = _size(args, rng)
      img, label, inst = draw_scene(vocab, h, w, rng)
      for cls, m in inst:
        label[m] = cls
      y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
      label[y:y + 6, x:x + 6] = -1
      img[y:y + 6, x:x + 6] = rng.integers(0, 255, (6, 6, 3))
      stem = f"ADE_{tag}_{i + 1:08d}"
      _save_jpg(root / "images" / split / f"{stem}.jpg", img)
      Image.fromarray((label + 1).astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")
      if split in panoptic_splits:
        rgb, info = semantic_panoptic(label, inst, [c["isthing"] for c in cats])
        Image.fromarray(rgb).save(root / f"panoptic_{tag}" / f"{stem}.png")
        pan_images.append({"id": i + 1, "file_name": f"{stem}.jpg", "height": h, "width": w})
        pan_anns.append({"image_id": i + 1, "file_name": f"{stem}.png", "segments_info": info})
    if split in panoptic_splits:
      (root / f"panoptic_{tag}.json").write_text(json.dumps(
          {"info": {"description": f"{name} panoptic"}, "licenses": [], "images": pan_images,
           "annotations": pan_anns, "categories": cats}))
  (root / "names.txt").write_text("\n".join(vocab) + "\n")
  (root / "things.txt").write_text("\n".join(n for n in vocab if WORLD[vocab[n]][2]) + "\n")


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
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
  return rgb, info


def _categories(name, panoptic):
  vocab = VOCABS[name]
  ids = COCO_IDS if panoptic else {n: i + 1 for i, n in enumerate(vocab)}
  cats = []
  for n in vocab:
    c = {"id": ids[n], "name": n, "supercategory": "thing" if WORLD[vocab[n]][2] else "stuff"}
    if panoptic:
      c["isthing"] = int(WORLD[vocab[n]][2] is not None)
      c["color"] = list(WORLD[vocab[n]][0])
    cats.append(c)
  return cats, ids


def _bbox(m):
  ys, xs = np.nonzero(m)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def write_panoptic(out, name, splits, args, rng):
  """COCO panoptic: RGB PNG with id = R + 256 G + 256^2 B; ~8% of thing segments iscrowd."""
  vocab = VOCABS[name]
  names = list(vocab)
  cats, ids = _categories(name, panoptic=True)
  root = out / name
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  image_id = 1
  for split, n in splits:
    img_dir, png_dir = root / split, root / "annotations" / f"panoptic_{split}"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for _ in range(n):
      h, w = _size(args, rng)
      img, label, inst = draw_scene(vocab, h, w, rng)
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
        info.append({"id": sid, "category_id": ids[names[cls]], "iscrowd": crowd,
                     "bbox": _bbox(m), "area": int(m.sum())})
      fname = f"{image_id:012d}"
      _save_jpg(img_dir / f"{fname}.jpg", img)
      rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8)
      Image.fromarray(rgb).save(png_dir / f"{fname}.png")
      images.append({"id": image_id, "file_name": f"{fname}.jpg", "height": h, "width": w})
      anns.append({"image_id": image_id, "file_name": f"{fname}.png", "segments_info": info})
      image_id += 1
    (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(
        {"info": {"description": "toy_coco"}, "licenses": [], "images": images, "annotations": anns,
         "categories": cats}))


def write_detection(out, name, splits, args, rng, prefix="obj365", instance_splits=("val",)):
  """COCO detection JSON (visible-part boxes) per split, and `<split>_instances.json` with RLE instance masks
  for the splits in `instance_splits`."""
  vocab = VOCABS[name]
  names = list(vocab)
  cats, ids = _categories(name, panoptic=False)
  root = out / name
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  image_id, ann_id = 1, 1
  for split, n in splits:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, boxes, masks = [], [], []
    for i in range(n):
      h, w = _size(args, rng)
      img, _, inst = draw_scene(vocab, h, w, rng)
      fname = f"{prefix}_{split}_{i + 1:06d}.jpg"
      _save_jpg(root / split / fname, img)
      images.append({"id": image_id, "file_name": fname, "height": h, "width": w})
      for cls, m in inst:
        a = {"id": ann_id, "image_id": image_id, "category_id": ids[names[cls]], "bbox": _bbox(m),
             "area": int(m.sum()), "iscrowd": 0}
        boxes.append(a)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        masks.append(dict(a, segmentation=rle))
        ann_id += 1
      image_id += 1
    doc = {"info": {"description": name}, "licenses": [], "images": images, "categories": cats}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(dict(doc, annotations=boxes)))
    if split in instance_splits:
      (root / "annotations" / f"{split}_instances.json").write_text(json.dumps(dict(doc, annotations=masks)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="data/toy")
  p.add_argument("--train", type=int, default=400, help="training images per dataset")
  p.add_argument("--val", type=int, default=64, help="validation images per dataset")
  p.add_argument("--size", type=int, default=128, help="image height; widths vary 0.8-1.25x")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  seeds = np.random.SeedSequence(args.seed).spawn(5)  # children do not depend on the count
  write_semantic(out, "toy_ade", [("training", args.train), ("validation", args.val)], args,
                 np.random.default_rng(seeds[0]), panoptic_splits=("validation",))
  write_panoptic(out, "toy_coco", [("train", args.train), ("val", args.val)], args,
                 np.random.default_rng(seeds[1]))
  write_detection(out, "toy_o365", [("train", args.train), ("val", args.val)], args,
                  np.random.default_rng(seeds[2]))
  write_semantic(out, "toy_heldout", [("validation", args.val)], args, np.random.default_rng(seeds[3]))
  write_detection(out, "toy_city", [("train", args.train), ("val", args.val)], args, np.random.default_rng(seeds[4]),
                  prefix="city", instance_splits=("train", "val"))
  (out / "heldout_names.txt").write_text("\n".join(HELDOUT) + "\n")
  print(f"wrote toy benchmark to {os.path.abspath(out)}")


if __name__ == "__main__":
  main()
