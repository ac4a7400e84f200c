"""Jitted post-processing against numpy transcriptions of Mask2Former's maskformer_model.py loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.evaluation import postprocess


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def ref_panoptic(mask_cls, mask_pred, is_thing, object_mask_threshold, overlap_threshold):
  """Mask2Former panoptic_inference for one image (numpy transcription)."""
  num_classes = mask_cls.shape[-1] - 1
  probs = _softmax(mask_cls)
  scores, labels = probs.max(-1), probs.argmax(-1)
  masks = _sigmoid(mask_pred)
  keep = (labels != num_classes) & (scores > object_mask_threshold)
  cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], masks[keep]
  cur_prob_masks = cur_scores[:, None, None] * cur_masks
  panoptic_seg = np.zeros(mask_pred.shape[-2:], np.int32)
  segments_info = []
  current_segment_id = 0
  if cur_masks.shape[0] == 0:
    return panoptic_seg, segments_info
  cur_mask_ids = cur_prob_masks.argmax(0)
  stuff_memory_list = {}
  for k in range(cur_classes.shape[0]):
    pred_class = int(cur_classes[k])
    isthing = bool(is_thing[pred_class])
    mask_area = (cur_mask_ids == k).sum()
    original_area = (cur_masks[k] >= 0.5).sum()
    mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
    if mask_area > 0 and original_area > 0 and mask.sum() > 0:
      if mask_area / original_area < overlap_threshold:
        continue
      if not isthing:
        if pred_class in stuff_memory_list:
          panoptic_seg[mask] = stuff_memory_list[pred_class]
          continue
        stuff_memory_list[pred_class] = current_segment_id + 1
      current_segment_id += 1
      panoptic_seg[mask] = current_segment_id
      segments_info.append({"id": current_segment_id, "isthing": isthing, "category_id": pred_class})
  return panoptic_seg, segments_info


def _inputs(rng, b=3, q=12, c=5, h=16, w=20, sharp=4.0):
  """Confident logits (so some queries pass the 0.8 threshold) and blobby masks."""
  logits = rng.normal(0, 1, (b, q, c + 1)).astype(np.float32)
  logits[np.arange(b)[:, None], np.arange(q)[None], rng.integers(0, c + 1, (b, q))] += sharp
  yy, xx = np.mgrid[:h, :w]
  cy, cx = rng.uniform(0, h, (b, q, 1, 1)), rng.uniform(0, w, (b, q, 1, 1))
  r = rng.uniform(2, 8, (b, q, 1, 1))
  masks = (r - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)).astype(np.float32)
  masks += rng.normal(0, 0.5, masks.shape).astype(np.float32)
  return logits, masks


@pytest.mark.parametrize("thresholds", [(0.8, 0.8), (0.4, 0.5), (0.0, 0.0)])
def test_panoptic_inference_equals_mask2former_loop(rng, thresholds):
  logits, masks = _inputs(rng)
  logits[0, :, -1] += 20.0  # image 0: every query is background -> all void
  is_thing = np.array([True, False, True, False, False])
  out = postprocess.panoptic_inference(logits, masks, is_thing, object_mask_threshold=thresholds[0],
                                       overlap_threshold=thresholds[1])
  out = {k: np.asarray(v) for k, v in out.items()}
  total_segments = 0
  for i in range(len(logits)):
    seg, info = ref_panoptic(logits[i], masks[i], is_thing, *thresholds)
    np.testing.assert_array_equal(out["panoptic_seg"][i], seg)
    opened = out["segment_id"][i] > 0
    got = [{"id": int(s), "isthing": bool(t), "category_id": int(c)} for s, t, c in
           zip(out["segment_id"][i][opened], out["segment_is_thing"][i][opened], out["segment_class"][i][opened])]
    assert got == info
    total_segments += len(info)
  assert not out["panoptic_seg"][0].any()
  assert total_segments > 2  # the cases exercise kept, merged and dropped segments


def test_panoptic_per_example_thing_mask(rng):
  logits, masks = _inputs(rng, b=2)
  things = np.array([[True, True, False, False, False], [False, False, True, True, True]])
  out = postprocess.panoptic_inference(logits, masks, things, object_mask_threshold=0.5, overlap_threshold=0.5)
  for i in range(2):
    seg, _ = ref_panoptic(logits[i], masks[i], things[i], 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(out["panoptic_seg"][i]), seg)


def test_semantic_inference_equals_einsum_argmax(rng):
  logits, masks = _inputs(rng)
  logits[:, :, 1] = -1e9  # a class outside the dataset has probability exactly 0
  class_mask = np.ones((3, 5), bool)
  class_mask[:, 1] = False
  out = postprocess.semantic_inference(logits, masks, class_mask)
  scores = np.einsum("bqc,bqhw->bchw", _softmax(logits)[..., :-1], _sigmoid(masks))
  np.testing.assert_allclose(np.asarray(out["scores"]), scores, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out["labels"]), scores.argmax(1))
  assert not (np.asarray(out["labels"]) == 1).any()


def test_instance_inference_equals_mask2former_topk(rng):
  logits, masks = _inputs(rng, q=6, c=4)
  k = 10
  out = {key: np.asarray(v) for key, v in postprocess.instance_inference(logits, masks, topk=k).items()}
  for i in range(len(logits)):
    scores = _softmax(logits[i])[:, :-1]
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    q, c = order // 4, order % 4
    m = masks[i][q] > 0
    mask_scores = (_sigmoid(masks[i][q]) * m).sum((1, 2)) / (m.sum((1, 2)) + 1e-6)
    got = sorted(zip(out["classes"][i], out["scores"][i]), key=lambda t: -t[1])
    want = sorted(zip(c, flat[order] * mask_scores), key=lambda t: -t[1])
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
    np.testing.assert_array_equal(out["masks"][i], m)
    for j in range(k):
      ys, xs = np.nonzero(m[j])
      box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(ys) else [0, 0, 0, 0]
      np.testing.assert_array_equal(out["boxes"][i, j], box)
  assert out["valid"].all()


def test_instance_inference_marks_classes_outside_the_dataset(rng):
  logits, masks = _inputs(rng, q=4, c=3)
  class_mask = np.array([[True, False, True]] * 3)
  out = postprocess.instance_inference(logits, masks, class_mask, topk=12)
  valid, classes = np.asarray(out["valid"]), np.asarray(out["classes"])
  np.testing.assert_array_equal(valid, classes != 1)
  assert valid.sum(1).tolist() == [8, 8, 8]


@pytest.mark.parametrize("size", [(64, 80), (13, 20), (16, 20)])
def test_upsample_masks_equals_torch_interpolate(rng, size):
  torch = pytest.importorskip("torch")
  x = rng.normal(size=(2, 3, 16, 20)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
  np.testing.assert_allclose(np.asarray(postprocess.upsample_masks(x, size)), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("extent", [(32, 40), (20, 40), (32, 13)])
def test_infer_tasks_equals_each_task_on_the_upsampled_masks_cropped_to_the_image(rng, extent):
  """infer_tasks works on transposed masks of the padded input: its label maps, panoptic segments and
  (transposed) instance masks of thing classes, cropped to the image's `extent`, equal the per-task functions
  run on the upsampled [B, Q, H, W] masks cropped to the image first (Mask2Former's order: no query covers the
  padding, which changes panoptic overlap tests and instance mask scores); it returns no instance boxes."""
  import ml_collections
  logits, masks = _inputs(rng, h=8, w=10)
  things = np.array([True, False, True, False, False])
  ev = ml_collections.ConfigDict({"object_mask_threshold": 0.4, "overlap_threshold": 0.5, "instance_topk": 20})
  size = (32, 40)
  h, w = extent
  valid = postprocess.valid_from_sizes(jnp.full((len(logits), 2), jnp.asarray(extent)), size)
  assert int(valid.sum()) == len(logits) * h * w
  out = jax.tree.map(np.asarray, postprocess.infer_tasks(logits, masks, valid, ("semantic", "panoptic", "instance"),
                                                          things, ev))
  up = postprocess.upsample_masks(masks, size)[:, :, :h, :w]
  np.testing.assert_array_equal(out["semantic"][:, :h, :w],
                                np.asarray(postprocess.semantic_inference(logits, up)["labels"]))
  pan = jax.tree.map(np.asarray, postprocess.panoptic_inference(logits, up, things, object_mask_threshold=0.4,
                                                                overlap_threshold=0.5))
  assert (pan["segment_id"] > 0).any()  # segments kept
  assert (out["panoptic"]["panoptic_seg"][:, h:] == 0).all() and (out["panoptic"]["panoptic_seg"][:, :, w:] == 0).all()
  for key, value in pan.items():
    got = out["panoptic"][key][:, :h, :w] if key == "panoptic_seg" else out["panoptic"][key]
    np.testing.assert_array_equal(got, value, err_msg=key)
  inst = jax.tree.map(np.asarray, postprocess.instance_inference(logits, up, np.broadcast_to(things, (3, 5)), topk=20))
  assert things[inst["classes"]].all()  # instances of thing classes only
  np.testing.assert_array_equal(out["instance"]["masks"][:, :, :w, :h], inst["masks"].swapaxes(2, 3))
  assert set(out["instance"]) == {"masks", "scores", "classes", "valid"}
  np.testing.assert_allclose(out["instance"]["scores"], inst["scores"], rtol=1e-5)
  np.testing.assert_array_equal(out["instance"]["classes"], inst["classes"])


def test_crop_instances_clears_the_padding_and_takes_boxes_from_what_is_left(rng):
  logits, masks = _inputs(rng, h=8, w=10)
  up = postprocess.upsample_masks(masks, (32, 40))
  in_image = postprocess.valid_from_sizes(jnp.asarray([[32, 40], [20, 40], [32, 13]]), (32, 40))
  inst = jax.tree.map(np.asarray, postprocess.crop_instances(
      postprocess.instance_inference(logits, up, in_image=in_image, topk=20), in_image))
  full = jax.tree.map(np.asarray, postprocess.instance_inference(logits, up, topk=20))
  np.testing.assert_array_equal(inst["masks"], full["masks"] & np.asarray(in_image)[:, None])
  for b in range(3):
    for k in range(20):
      ys, xs = np.nonzero(inst["masks"][b, k])
      want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
      np.testing.assert_array_equal(inst["boxes"][b, k], want)
  assert (inst["masks"] != full["masks"]).any()  # the padding held some foreground
