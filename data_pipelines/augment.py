"""Augmentation in tf.data: large-scale jitter for training, resize + pad for evaluation.

An example is a dict with `image` uint8 `[h, w, 3]`, `idmap` int32 `[h, w]` (segment row, -1
void; None for box-only data) and `boxes` float32 `[M, 4]` pixel (x0, y0, x1, y1). After
augmentation `content` int32 `[2]` is the (height, width) of the image content at the top-left
of the output; `pad_to` then pads everything to a square canvas.
"""
import tensorflow as tf


def _resize(ex, scale):
  """Resizes image (bilinear), id map (nearest) and boxes by `scale`; returns the new (h, w)."""
  h = tf.cast(tf.shape(ex["image"])[0], tf.float32)
  w = tf.cast(tf.shape(ex["image"])[1], tf.float32)
  nh = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), 1)
  nw = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), 1)
  out = dict(ex)
  out["image"] = tf.cast(tf.clip_by_value(tf.round(
      tf.image.resize(ex["image"], [nh, nw], method="bilinear", antialias=False)), 0, 255), tf.uint8)
  if ex["idmap"] is not None:
    out["idmap"] = tf.image.resize(ex["idmap"][..., None], [nh, nw], method="nearest")[..., 0]
  sx = tf.cast(nw, tf.float32) / w
  sy = tf.cast(nh, tf.float32) / h
  out["boxes"] = ex["boxes"] * tf.stack([sx, sy, sx, sy])
  return out, nh, nw


def large_scale_jitter(ex, key, size: int, min_scale: float, max_scale: float):
  """Large-scale jitter [default: Ghiasi et al. 2021 / Mask2Former `ResizeScale` + `FixedSizeCrop`].

  r ~ U(min_scale, max_scale); the image is resized by f = min(r S / h, r S / w) (aspect kept),
  a random S x S window (or the whole image when smaller) is cropped, and the result is flipped
  left-right with probability 1/2. Boxes are moved with the crop, clipped to it and flipped.
  All draws come from stateless ops keyed by `key` (int64 [2]), so the result is deterministic.
  """
  u = tf.random.stateless_uniform([4], seed=key)
  r = min_scale + (max_scale - min_scale) * u[0]
  h = tf.cast(tf.shape(ex["image"])[0], tf.float32)
  w = tf.cast(tf.shape(ex["image"])[1], tf.float32)
  f = tf.minimum(r * size / h, r * size / w)
  ex, nh, nw = _resize(ex, f)
  ch, cw = tf.minimum(nh, size), tf.minimum(nw, size)
  y0 = tf.cast(tf.floor(u[1] * tf.cast(nh - ch + 1, tf.float32)), tf.int32)
  x0 = tf.cast(tf.floor(u[2] * tf.cast(nw - cw + 1, tf.float32)), tf.int32)
  y0, x0 = tf.minimum(y0, nh - ch), tf.minimum(x0, nw - cw)
  ex["image"] = ex["image"][y0:y0 + ch, x0:x0 + cw]
  if ex["idmap"] is not None:
    ex["idmap"] = ex["idmap"][y0:y0 + ch, x0:x0 + cw]
  fx0, fy0 = tf.cast(x0, tf.float32), tf.cast(y0, tf.float32)
  fcw, fch = tf.cast(cw, tf.float32), tf.cast(ch, tf.float32)
  b = ex["boxes"] - tf.stack([fx0, fy0, fx0, fy0])
  b = tf.clip_by_value(b, 0.0, tf.stack([fcw, fch, fcw, fch]))
  flip = u[3] < 0.5
  ex["image"] = tf.cond(flip, lambda: ex["image"][:, ::-1], lambda: ex["image"])
  if ex["idmap"] is not None:
    ex["idmap"] = tf.cond(flip, lambda: ex["idmap"][:, ::-1], lambda: ex["idmap"])
  b = tf.cond(flip, lambda: tf.stack([fcw - b[:, 2], b[:, 1], fcw - b[:, 0], b[:, 3]], axis=1), lambda: b)
  ex["boxes"] = b
  ex["content"] = tf.stack([ch, cw])
  return ex


def resize_longer_side(ex, size: int):
  """Evaluation resize [default]: scale so the longer side is `size` (aspect kept); no crop or flip."""
  h = tf.cast(tf.shape(ex["image"])[0], tf.float32)
  w = tf.cast(tf.shape(ex["image"])[1], tf.float32)
  ex, nh, nw = _resize(ex, size / tf.maximum(h, w))
  nh, nw = tf.minimum(nh, size), tf.minimum(nw, size)
  ex["image"] = ex["image"][:nh, :nw]
  if ex["idmap"] is not None:
    ex["idmap"] = ex["idmap"][:nh, :nw]
  ex["content"] = tf.stack([nh, nw])
  return ex


def pad_to(ex, size: int):
  """Pads image (0), id map (-1) at the bottom and right to `size` x `size`; adds `valid` [S, S]."""
  ch, cw = ex["content"][0], ex["content"][1]
  pads = [[0, size - ch], [0, size - cw]]
  ex["image"] = tf.ensure_shape(tf.pad(ex["image"], pads + [[0, 0]]), [size, size, 3])
  if ex["idmap"] is not None:
    ex["idmap"] = tf.ensure_shape(tf.pad(ex["idmap"], pads, constant_values=-1), [size, size])
  ex["valid"] = tf.ensure_shape(tf.pad(tf.ones([ch, cw], tf.bool), pads), [size, size])
  return ex
