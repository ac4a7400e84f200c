"""Writers of standard prediction files and overlay pictures.

- COCO panoptic: one RGB PNG per image (id = R + 256 G + 256^2 B) and one JSON with `segments_info`;
- semantic: one single-channel PNG of class ids per image;
- COCO results JSON: a list of {image_id, category_id, segmentation (RLE), bbox, score};
- overlays: the image, the ground truth and the prediction side by side, each segment in its class's colour,
  outlined, with its class name inside it (PIL).
"""
import colorsys
import json
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import ndimage

from dataseg_jax import panoptic_ids


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
    Image.fromarray(panoptic_ids.id_to_rgb(segment_ids)).save(os.path.join(self.png_dir, file_name))
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


def label_anchor(mask: np.ndarray) -> tuple:
  """(y, x) of the pixel of bool `mask` [H, W] farthest from the segment's edge: inside the segment whatever its
  shape (a centroid of a ring or of two parts lies on another segment)."""
  depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
  y, x = np.unravel_index(int(np.argmax(depth)), mask.shape)
  return int(y), int(x)


def _font(height: int):
  """PIL's default font at about 1/28 of the panel height (at least 12 px)."""
  return ImageFont.load_default(size=max(12, height // 28))


def _text_box(draw, text: str, centre: tuple, font, size: tuple) -> tuple:
  """(x0, y0, x1, y1) of `text` centred on `centre` (y, x), moved inside the panel of `size` (h, w)."""
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="lt")
  w, h = right - left + 4, bottom - top + 4
  x0 = min(max(centre[1] - w // 2, 0), max(size[1] - w, 0))
  y0 = min(max(centre[0] - h // 2, 0), max(size[0] - h, 0))
  return x0, y0, x0 + w, y0 + h


def _panel(image: np.ndarray, ids: np.ndarray, classes: dict, names, colours, alpha: float, title: str):
  """The image blended with one colour per class, white outlines, each segment's class name on a dark box at its
  `label_anchor`, and `title` at the top left."""
  out = image.astype(np.float32)
  for sid, cls in classes.items():
    m = ids == sid
    out[m] = (1 - alpha) * out[m] + alpha * colours[cls]
  out[_outlines(ids)] = 255
  pic = Image.fromarray(out.astype(np.uint8))
  draw = ImageDraw.Draw(pic)
  font = _font(pic.height)
  if names is not None:
    for sid, cls in classes.items():
      m = ids == sid
      if m.any():
        box = _text_box(draw, str(names[cls]), label_anchor(m), font, ids.shape)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((box[0] + 2, box[1] + 2), str(names[cls]), fill=(255, 255, 255), font=font, anchor="lt")
  box = _text_box(draw, title, (0, 0), font, ids.shape)
  draw.rectangle(box, fill=(255, 255, 255))
  draw.text((box[0] + 2, box[1] + 2), title, fill=(0, 0, 0), font=font, anchor="lt")
  return pic


def overlay(image: np.ndarray, segment_ids: np.ndarray, segment_classes: dict, names=None, alpha: float = 0.5,
            colours: np.ndarray = None, min_side: int = 384, ground_truth: tuple = None) -> Image.Image:
  """Panels side by side: the image, the ground truth when given, the prediction; each segment blended with its
  class's colour, outlined in white and labelled with its class name inside it (`label_anchor`). Images with a side
  under `min_side` are enlarged (integer factor) so a person can read them.

  Args:
    segment_ids: int [H, W] (0 void, left as is); for semantic maps pass class id + 1.
    segment_classes: {segment id: class index}.
    names: optional class names; when given each segment is labelled.
    ground_truth: optional (segment ids [H, W], {segment id: class index}) in the same form, for the middle panel.
  """
  image = np.asarray(image, np.uint8)
  layers = [(np.asarray(segment_ids), segment_classes, "prediction")]
  if ground_truth is not None:
    layers.insert(0, (np.asarray(ground_truth[0]), ground_truth[1], "ground truth"))
  for ids, _, title in layers:
    if image.shape[:2] != ids.shape:
      raise ValueError(f"overlay: image is {image.shape[:2]} but the {title} segment map is {ids.shape}")
  factor = max(1, -(-min_side // min(image.shape[:2])))

  def grow(a):
    return np.repeat(np.repeat(a, factor, 0), factor, 1)

  image = grow(image)
  n = max([c for _, classes, _ in layers for c in classes.values()], default=0) + 1
  colours = class_colours(max(n, len(names or ()))) if colours is None else colours
  panels = [Image.fromarray(image)] + [_panel(image, grow(ids), classes, names, colours, alpha, title)
                                       for ids, classes, title in layers]
  both = Image.new("RGB", (sum(p.width for p in panels), image.shape[0]))
  for k, panel in enumerate(panels):
    both.paste(panel, (k * image.shape[1], 0))
  return both
