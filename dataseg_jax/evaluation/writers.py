"""Writers of standard prediction files and overlay pictures.

- COCO panoptic: one RGB PNG per image (id = R + 256 G + 256^2 B) and one JSON with `segments_info`;
- semantic: one single-channel PNG of class ids per image;
- COCO results JSON: a list of {image_id, category_id, segmentation (RLE), bbox, score};
- overlays: the image blended with a colour per class, segment outlines, optional class labels (PIL).
"""
import colorsys
import json
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from dataseg_jax.evaluation import panoptic


def write_semantic_png(path, labels: np.ndarray) -> None:
  """labels int [H, W] -> 8-bit PNG when every value is < 256, else 16-bit."""
  labels = np.asarray(labels)
  if labels.min(initial=0) < 0:
    raise ValueError(f"{path}: semantic labels must be >= 0, got {labels.min()}")
  if labels.max(initial=0) < 256:
    Image.fromarray(labels.astype(np.uint8)).save(path)
  else:
    Image.fromarray(labels.astype(np.uint16)).save(path)


class PanopticWriter:
  """Collects COCO panoptic predictions: PNGs into `png_dir`, annotations into `json_path` on `close()`."""

  def __init__(self, json_path: str, png_dir: str, categories: list):
    self.json_path, self.png_dir, self.categories = json_path, png_dir, categories
    os.makedirs(png_dir, exist_ok=True)
    self.annotations, self.images = [], []

  def add(self, image_id, file_name: str, segment_ids: np.ndarray, segments_info: list) -> None:
    """segment_ids int [H, W] (0 void); segments_info [{'id', 'category_id', ...}] for ids present."""
    Image.fromarray(panoptic.id2rgb(segment_ids)).save(os.path.join(self.png_dir, file_name))
    h, w = np.shape(segment_ids)[:2]
    self.images.append({"id": image_id, "file_name": os.path.splitext(file_name)[0] + ".jpg",
                        "height": int(h), "width": int(w)})
    self.annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments_info})

  def close(self) -> None:
    with open(self.json_path, "w") as f:
      json.dump({"images": self.images, "annotations": self.annotations, "categories": self.categories}, f)


def write_json(path, obj) -> None:
  """Writes `obj` (e.g. a COCO results list) as JSON, creating the folder."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def class_colours(n: int) -> np.ndarray:
  """uint8 [n, 3] distinct colours: golden-ratio hues, alternating lightness [default]."""
  hues = (np.arange(n) * 0.618033988749895) % 1.0
  return np.array([[int(255 * v) for v in colorsys.hls_to_rgb(h, 0.45 + 0.15 * (i % 2), 0.8)]
                   for i, h in enumerate(hues)], np.uint8).reshape(n, 3)


def _outlines(ids: np.ndarray) -> np.ndarray:
  """bool [H, W]: pixels whose right or lower neighbour belongs to another segment."""
  edge = np.zeros(ids.shape, bool)
  edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
  edge[:-1] |= ids[:-1] != ids[1:]
  return edge


def overlay(image: np.ndarray, segment_ids: np.ndarray, segment_classes: dict, names=None, alpha: float = 0.5,
            colours: np.ndarray = None, min_side: int = 384) -> Image.Image:
  """The image [H, W, 3] uint8 beside a copy blended with one colour per class, white segment outlines and
  optional labels; images with a side under `min_side` are enlarged (integer factor) so a person can read them.

  Args:
    segment_ids: int [H, W] (0 void, left as is); for semantic maps pass class id + 1.
    segment_classes: {segment id: class index}.
    names: optional class names; when given each segment is labelled at its centroid.
  """
  image = np.asarray(image, np.uint8)
  ids = np.asarray(segment_ids)
  if image.shape[:2] != ids.shape:
    raise ValueError(f"overlay: image is {image.shape[:2]} but the segment map is {ids.shape}")
  factor = max(1, -(-min_side // min(image.shape[:2])))
  if factor > 1:
    image = np.repeat(np.repeat(image, factor, 0), factor, 1)
    ids = np.repeat(np.repeat(ids, factor, 0), factor, 1)
  n = max(segment_classes.values(), default=0) + 1
  colours = class_colours(max(n, len(names or ()))) if colours is None else colours
  out = image.astype(np.float32)
  for sid, cls in segment_classes.items():
    m = ids == sid
    out[m] = (1 - alpha) * out[m] + alpha * colours[cls]
  out[_outlines(ids)] = 255
  pic = Image.fromarray(out.astype(np.uint8))
  if names is not None:
    draw = ImageDraw.Draw(pic)
    for sid, cls in segment_classes.items():
      ys, xs = np.nonzero(ids == sid)
      if len(ys):
        draw.text((float(xs.mean()), float(ys.mean())), str(names[cls]), fill=(255, 255, 255))
  both = Image.new("RGB", (2 * pic.width, pic.height))
  both.paste(Image.fromarray(image), (0, 0))
  both.paste(pic, (pic.width, 0))
  return both
