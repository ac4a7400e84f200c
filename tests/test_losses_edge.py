"""Edge cases: finite losses and gradients, one compiled function for every task, bf16, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.contract import Task
from dataseg_jax.losses import criterion as criterion_lib
from test_losses_terms import random_batch, small_config


def _loss_and_grads(outputs, batch, cfg):
  fn = jax.jit(lambda o, b: criterion_lib.criterion(o, b, cfg, jax.random.key(0))[:2])
  (loss, terms), grads = jax.value_and_grad(lambda o: fn(o, batch), has_aux=True)(outputs)
  return loss, terms, grads


def _assert_finite(loss, terms, grads):
  assert np.isfinite(float(loss))
  for k, v in terms.items():
    assert np.all(np.isfinite(np.asarray(v))), k
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
  np.testing.assert_allclose(float(loss), sum(float(np.sum(v)) for v in terms.values()), rtol=1e-5)


def test_no_segments_gives_background_loss_only(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng)
  batch["seg_valid"][:] = False
  loss, terms, grads = _loss_and_grads(outputs, batch, cfg)
  _assert_finite(loss, terms, grads)
  assert float(terms["loss_ce"].sum()) > 0
  for k in ("loss_mask", "loss_dice", "loss_proj"):
    assert float(terms[k].sum()) == 0.0


def test_all_void_pixels(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng)
  batch["segment_map"][:] = -1
  _assert_finite(*_loss_and_grads(outputs, batch, cfg))


def test_zero_width_and_outside_image_boxes(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng, tasks=(Task.BOX,))
  batch["seg_valid"][:] = True
  batch["seg_box"][:, 0] = [0.3, 0.5, 0.6, 0.5]      # zero width
  batch["seg_box"][:, 1] = [1.2, 1.3, 1.5, 1.6]      # below and right of the image
  batch["seg_box"][:, 2] = [-0.5, -0.5, -0.1, -0.1]  # above and left of the image
  batch["seg_box"][:, 3] = [0.4, 0.4, 0.4, 0.4]      # a point
  loss, terms, grads = _loss_and_grads(outputs, batch, cfg)
  _assert_finite(loss, terms, grads)
  assert float(terms["loss_proj"].sum()) > 0


def test_bf16_inputs_are_finite_and_close_to_float32(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng)
  outputs = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), outputs)
  loss32, _, _ = _loss_and_grads(outputs, batch, cfg)
  outputs16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), outputs)
  loss16, terms16, grads16 = _loss_and_grads(outputs16, batch, cfg)
  _assert_finite(loss16, terms16, grads16)
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads16))
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=1e-4)


def test_masked_classes_at_minus_1e9_stay_finite(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng, c=6)
  outputs["pred_logits"][..., 4:6] = -1e9  # classes outside every example's dataset
  batch["seg_class"] = np.minimum(batch["seg_class"], 3)
  _assert_finite(*_loss_and_grads(outputs, batch, cfg))


def test_one_compiled_function_serves_every_task_mix(rng):
  cfg = small_config()
  traces = []

  def fn(o, b):
    traces.append(1)
    return criterion_lib.criterion(o, b, cfg, jax.random.key(0))[0]

  jitted = jax.jit(fn)
  for tasks in [(Task.SEMANTIC,), (Task.BOX,), (Task.PANOPTIC, Task.INSTANCE), tuple(Task)]:
    outputs, batch = random_batch(rng, tasks=tasks)
    assert np.isfinite(float(jitted(outputs, batch)))
  assert len(traces) == 1


def test_more_targets_than_queries_is_a_clear_error(rng):
  cfg = small_config()
  outputs, batch = random_batch(rng, q=4, n=5, c=6)
  with pytest.raises(ValueError, match="max_segments"):
    criterion_lib.criterion(outputs, batch, cfg, jax.random.key(0))
