"""COCO panoptic PNG colour <-> segment id: id = R + 256 G + 256^2 B [COCO panoptic format, panopticapi `rgb2id`].

The one codec of the rule for the input pipeline (`data_pipelines`), the transfer converters, the evaluation and its
writers, and `scripts/make_toy_data.py`. Pure numpy (no jax, no tf): `rgb_to_id` is plain arithmetic, so it also
takes the int32 tf tensors of the input pipeline.
"""
import numpy as np

MAX_ID = 256 ** 3 - 1  # the largest id a 3 x 8-bit colour holds


def rgb_to_id(rgb):
  """Colours [..., 3] -> ids [...]: id = R + 256 G + 256^2 B.

  A numpy array is widened to int64 first (uint8 arithmetic would wrap); a tf tensor must come as int32 or int64.
  """
  if isinstance(rgb, np.ndarray):
    rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids) -> np.ndarray:
  """Ids [...] in 0..MAX_ID -> uint8 colours [..., 3], the inverse of `rgb_to_id`: (id mod 256, id // 256 mod 256,
  id // 256^2). An id outside 0..MAX_ID is a ValueError (its colour would be another id's)."""
  ids = np.asarray(ids, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
    raise ValueError(f"panoptic segment ids must be in 0..{MAX_ID} (three 8-bit channels), got "
                     f"{int(ids.min())}..{int(ids.max())}")
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
