"""Target packing: an augmented example -> the batch contract (`dataseg_jax.contract`).

Segments removed by the crop (zero area; for box-only data a box clipped to nothing) are dropped.
When more than N = `max_segments` remain, the N largest are kept (ties: lower row first) and the
pixels of the others become void; the number dropped is returned so the iterator can count it.
"""
import tensorflow as tf

from dataseg_jax import contract
from dataseg_jax import panoptic_ids


def panoptic_idmap(rgb, ids, crowd):
  """RGB [h, w, 3] int32 and the image's segment ids [M] (sorted) -> segment row [h, w], -1 void.

  Pixels whose id is 0, not listed in segments_info, or of a crowd segment are void.
  """
  pid = panoptic_ids.rgb_to_id(rgb)
  pos = tf.reshape(tf.searchsorted(ids, tf.reshape(pid, [-1]), side="left"), tf.shape(pid))
  ids_ext = tf.concat([ids, [-1]], 0)  # pos == M (id above every listed one) hits the sentinel
  crowd_ext = tf.concat([crowd, [True]], 0)
  found = (tf.gather(ids_ext, pos) == pid) & ~tf.gather(crowd_ext, pos)
  return tf.where(found, pos, -1)


def one_segment_per_class(ex):
  """Merges an example's segments of each class into one (their pixels, the union of their boxes; crowd only if
  all were): the targets of the semantic task, whose MERGE makes one prediction per class [paper], for data
  annotated per instance (a coco_panoptic entry trained with task 'semantic'). Classes keep their first order."""
  classes, of_class = tf.unique(ex["seg_class"])
  k = tf.shape(classes)[0]
  out = dict(ex, seg_class=classes)
  out["seg_crowd"] = tf.math.unsorted_segment_min(tf.cast(ex["seg_crowd"], tf.int32), of_class, k) > 0
  boxes = ex["boxes"]
  out["boxes"] = tf.concat([tf.math.unsorted_segment_min(boxes[:, :2], of_class, k),
                            tf.math.unsorted_segment_max(boxes[:, 2:], of_class, k)], axis=1)
  if ex["idmap"] is not None:  # void (-1) reads the appended -1: no out-of-range index when there are no segments
    void = tf.shape(of_class)[0]
    out["idmap"] = tf.gather(tf.concat([of_class, [-1]], 0), tf.where(ex["idmap"] >= 0, ex["idmap"], void))
  return out


def mask_boxes(idmap, m):
  """Tight boxes of segments 0..m-1 in `idmap` [S, S]: float32 [m, 4] (y0, x0, y1, x1) / S, areas [m]."""
  size = tf.cast(tf.shape(idmap)[0], tf.float32)
  flat = tf.reshape(idmap, [-1]) + 1  # void -> bucket 0
  width = tf.shape(idmap)[1]
  rows = tf.range(tf.size(idmap)) // width
  cols = tf.range(tf.size(idmap)) % width
  area = tf.math.unsorted_segment_sum(tf.ones_like(flat), flat, m + 1)[1:]
  y0 = tf.math.unsorted_segment_min(rows, flat, m + 1)[1:]
  x0 = tf.math.unsorted_segment_min(cols, flat, m + 1)[1:]
  y1 = tf.math.unsorted_segment_max(rows, flat, m + 1)[1:] + 1
  x1 = tf.math.unsorted_segment_max(cols, flat, m + 1)[1:] + 1
  box = tf.cast(tf.stack([y0, x0, y1, x1], axis=1), tf.float32) / size
  box = tf.where((area > 0)[:, None], box, 0.0)
  return box, area


def pack(ex, max_segments: int, label_stride: int, local_to_union, is_thing):
  """Augmented, padded example -> (contract dict without dataset_id/task, number of dropped segments).

  `local_to_union` int32 [K] and `is_thing` bool [K] are the dataset's tables; segments carry
  dataset-local classes in `ex['seg_class']`.
  """
  size = ex["image"].shape[0]
  m = tf.shape(ex["seg_class"])[0]
  if ex["idmap"] is not None:
    box, area = mask_boxes(ex["idmap"], m)
    score = tf.cast(area, tf.float32)
  else:
    b = ex["boxes"] / size  # pixel x0 y0 x1 y1 -> normalised y0 x0 y1 x1
    box = tf.stack([b[:, 1], b[:, 0], b[:, 3], b[:, 2]], axis=1)
    score = tf.maximum(b[:, 2] - b[:, 0], 0.0) * tf.maximum(b[:, 3] - b[:, 1], 0.0)
  score = tf.where(ex["seg_crowd"], 0.0, score)
  n_valid = tf.reduce_sum(tf.cast(score > 0, tf.int32))
  keep = tf.minimum(n_valid, max_segments)
  top = tf.argsort(-score, stable=True)[:keep]
  sel = tf.sort(top)
  dropped = n_valid - keep
  pad = max_segments - keep
  cls = tf.gather(ex["seg_class"], sel)
  out = dict(
      image=ex["image"],
      valid=ex["valid"],
      seg_class=tf.pad(tf.gather(local_to_union, cls), [[0, pad]]),
      seg_is_thing=tf.pad(tf.gather(is_thing, cls), [[0, pad]]),
      seg_box=tf.pad(tf.gather(box, sel), [[0, pad], [0, 0]]),
      seg_valid=tf.pad(tf.ones([keep], tf.bool), [[0, pad]]),
      seg_has_mask=tf.pad(tf.fill([keep], ex["has_mask"]), [[0, pad]]),
  )
  if ex["idmap"] is not None:
    remap = tf.tensor_scatter_nd_update(tf.fill([m + 1], -1), sel[:, None], tf.range(keep))  # [m]: void
    idmap = tf.gather(remap, tf.where(ex["idmap"] >= 0, ex["idmap"], m))  # an image may have no segment
  else:
    idmap = tf.fill([size, size], contract.VOID)
  out["segment_map"] = idmap[::label_stride, ::label_stride]
  for k in ("seg_class", "seg_is_thing", "seg_valid", "seg_has_mask"):
    out[k] = tf.ensure_shape(out[k], [max_segments])
  out["seg_box"] = tf.ensure_shape(out["seg_box"], [max_segments, 4])
  return out, dropped
