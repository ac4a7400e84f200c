"""ops/argmax: the running-maximum loops (`first_argmax_loop`, `assign_pixels_loop`) and the platform's choice
(`first_argmax`, `assign_pixels`) against numpy's argmax and `assign_pixels_argmax`, ties included."""
import functools

import jax
import numpy as np

from dataseg_jax.ops import argmax


def test_first_argmax_equals_argmax_with_ties():
  rng = np.random.default_rng(7)
  x = np.round(rng.normal(size=(2, 9, 5, 6)) * 2).astype(np.float32)  # many ties
  for axis in range(4):
    for fn in (argmax.first_argmax, argmax.first_argmax_loop):
      got = np.asarray(jax.jit(functools.partial(fn, axis=axis))(x))
      assert got.dtype == np.int32
      np.testing.assert_array_equal(got, np.argmax(x, axis))


def test_assign_pixels_loop_equals_argmax_form(rng):
  """The CPU loop and the accelerator form of the panoptic pixel assignment agree, ties included."""
  weights = np.array([[0.9, -1.0, 0.9, 0.85, -1.0, 0.95]], np.float32).repeat(2, 0)
  masks = np.round(rng.uniform(0, 1, (2, 6, 7, 9)) * 4).astype(np.float32) / 4  # many ties
  ids = np.where(weights[:, :, None, None] >= 0, weights[:, :, None, None] * masks, -1.0).argmax(1)
  for fn in (argmax.assign_pixels, argmax.assign_pixels_loop, argmax.assign_pixels_argmax):
    got = jax.jit(fn)(weights, masks)
    np.testing.assert_array_equal(np.asarray(got[0]), ids)
    np.testing.assert_array_equal(np.asarray(got[1]), np.take_along_axis(masks, ids[:, None], 1)[:, 0] >= 0.5)
