"""Parity with Hugging Face transformers' Mask2FormerLoss (matcher included), with identical sampled points.

Instance examples (MERGE keeps every proposal) are exactly Mask2Former's setting; transformers' random
points (`torch.rand` in its matcher and in its importance sampling) are replaced by ours.
"""
from unittest import mock

import jax
import numpy as np
import pytest

from dataseg_jax.contract import Task
from dataseg_jax.losses import criterion as criterion_lib
from test_losses_terms import random_batch, small_config

torch = pytest.importorskip("torch")
m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
transformers = pytest.importorskip("transformers")


def _transformers_losses(outputs, batch, cfg, points, num_classes):
  """Summed over layers: ({loss_cross_entropy, loss_mask, loss_dice}, the gradient of their sum with respect to
  pred_logits and pred_masks) from transformers, our points fed in."""
  lc = cfg.loss
  hf_cfg = transformers.Mask2FormerConfig(
      num_labels=num_classes, no_object_weight=lc.no_object_weight, class_weight=cfg.matcher.class_cost,
      mask_weight=cfg.matcher.mask_cost, dice_weight=cfg.matcher.dice_cost, train_num_points=lc.num_points,
      oversample_ratio=lc.oversample_ratio, importance_sample_ratio=lc.importance_sample_ratio)
  loss_fn = m2f.Mask2FormerLoss(hf_cfg, weight_dict={})
  loss_fn.matcher.num_points = cfg.matcher.num_points
  num_layers, b = outputs["pred_logits"].shape[:2]
  schedule = [num_layers - 1] + list(range(num_layers - 1))  # transformers: last layer, then aux layers
  state = {"layer": None, "calls": 0, "indices": None}
  original_matcher = loss_fn.matcher.forward

  def matcher(*args, **kw):
    state["layer"] = schedule[state["calls"]]
    state["calls"] += 1
    state["match_b"] = 0
    state["indices"] = original_matcher(*args, **kw)
    return state["indices"]

  def rows(arr):
    l = state["layer"]
    return torch.from_numpy(np.stack([arr[l, i, t] for i, (_, tgt) in enumerate(state["indices"])
                                      for t in tgt.numpy()]))

  def fake_rand(*shape, **kw):
    state["rand_calls"] = state.get("rand_calls", 0) + 1
    if shape[0] == 1 and shape[1] == cfg.matcher.num_points:
      out = torch.from_numpy(np.array(points.match[state["layer"], state["match_b"]]))[None]  # a writable copy
      state["match_b"] += 1
      return out
    if shape[1] == points.over.shape[3]:
      return rows(np.asarray(points.over))
    return rows(np.asarray(points.tail))

  loss_fn.matcher.forward = matcher
  n_valid = batch["seg_valid"].sum(1)
  mask_labels = [torch.from_numpy(np.stack([(batch["segment_map"][i] == k) for k in range(n_valid[i])])
                                  .astype(np.float32)) for i in range(b)]
  class_labels = [torch.from_numpy(batch["seg_class"][i, :n_valid[i]].astype(np.int64)) for i in range(b)]
  logits = torch.tensor(outputs["pred_logits"], requires_grad=True)
  masks = torch.tensor(outputs["pred_masks"], requires_grad=True)
  aux = [{"masks_queries_logits": masks[l], "class_queries_logits": logits[l]} for l in range(num_layers - 1)]
  with mock.patch.object(m2f.torch, "rand", side_effect=fake_rand):
    out = loss_fn(masks[-1], logits[-1], mask_labels, class_labels, auxiliary_predictions=aux)
  assert state["rand_calls"] == num_layers * (b + 2), "transformers drew points we did not supply"
  sum(out.values()).backward()
  return ({name: sum(float(v) for k, v in out.items() if k == name or k.startswith(name + "_"))
           for name in ("loss_cross_entropy", "loss_mask", "loss_dice")},
          {"pred_logits": logits.grad.numpy(), "pred_masks": masks.grad.numpy()})


@pytest.mark.parametrize("layers", [1, 3])
def test_instance_terms_equal_transformers_mask2former_loss(layers, rng):
  cfg = small_config(num_points=32)
  c = 6
  outputs, batch = random_batch(rng, b=3, q=8, c=c, n=5, layers=layers, tasks=(Task.INSTANCE,))
  order = np.argsort(~batch["seg_valid"], axis=1, kind="stable")
  seg = np.full_like(batch["segment_map"], -1)
  for i in range(3):
    for new, old in enumerate(order[i]):
      seg[i][batch["segment_map"][i] == old] = new
  batch["segment_map"] = seg
  for k in ("seg_class", "seg_is_thing", "seg_valid", "seg_has_mask"):
    batch[k] = np.take_along_axis(batch[k], order, axis=1)
  batch["seg_box"] = np.take_along_axis(batch["seg_box"], order[..., None], axis=1)
  points = criterion_lib.draw_points(jax.random.key(3), layers, 3, 5, cfg)
  lc = cfg.loss

  def unweighted(o):
    _, terms, _ = criterion_lib.criterion_with_points(o, batch, cfg, points)
    total = (terms["loss_ce"].sum() / lc.class_weight + terms["loss_mask"].sum() / lc.mask_weight
             + terms["loss_dice"].sum() / lc.dice_weight)
    return total, terms

  (_, terms), grads = jax.jit(jax.value_and_grad(unweighted, has_aux=True))(outputs)
  ref, ref_grads = _transformers_losses(outputs, batch, cfg, points, c)
  np.testing.assert_allclose(float(terms["loss_ce"].sum()) / lc.class_weight, ref["loss_cross_entropy"], rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_mask"].sum()) / lc.mask_weight, ref["loss_mask"], rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_dice"].sum()) / lc.dice_weight, ref["loss_dice"], rtol=1e-5)
  assert float(terms["loss_proj"].sum()) == 0.0
  for key, g in ref_grads.items():  # autodiff through our matching, sampling and losses vs torch autograd
    assert np.abs(g).max() > 1e-3, key
    np.testing.assert_allclose(np.asarray(grads[key]), g, atol=1e-6 * np.abs(g).max() + 1e-9, err_msg=key)
