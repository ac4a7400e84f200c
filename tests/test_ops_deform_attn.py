"""ops/deform_attn: `ms_deform_attn_core` vs a plain-loop numpy reference, autodiff of `ms_deform_attn_reference` and
PyTorch's ms_deform_attn_core_pytorch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.ops import deform_attn

SHAPES = ((3, 4), (5, 2))  # (H_l, W_l): non-square, tiny
B, LQ, M, P, DH = 2, 5, 2, 3, 4


def random_inputs(seed=0):
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in SHAPES)
  value = rng.normal(size=(B, s, M, DH)).astype(np.float32)
  loc = rng.uniform(-0.3, 1.3, size=(B, LQ, M, len(SHAPES), P, 2)).astype(np.float32)  # some points outside
  loc[0, 0, 0, 0, 0] = (-2.0, 0.5)   # far outside: zero
  loc[0, 0, 0, 0, 1] = (0.0, 0.0)    # exactly on the corner: a quarter of pixel (0, 0)
  weights = rng.uniform(size=(B, LQ, M, len(SHAPES), P)).astype(np.float32)
  weights /= weights.sum(axis=(3, 4), keepdims=True)
  return value, loc, weights


def reference_loops(value, loc, weights):
  """Plain Python loops: grid_sample(align_corners=False, zero padding) bilinear taps, weighted sum."""
  out = np.zeros((B, LQ, M, DH), np.float64)
  starts = np.cumsum([0] + [h * w for h, w in SHAPES])
  for b in range(B):
    for q in range(LQ):
      for m in range(M):
        for l, (h, w) in enumerate(SHAPES):
          fmap = value[b, starts[l]:starts[l + 1], m].reshape(h, w, DH)
          for p in range(P):
            x = loc[b, q, m, l, p, 0] * w - 0.5
            y = loc[b, q, m, l, p, 1] * h - 0.5
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            sample = np.zeros(DH)
            for yy in (y0, y0 + 1):
              for xx in (x0, x0 + 1):
                if 0 <= yy < h and 0 <= xx < w:
                  sample += (1 - abs(x - xx)) * (1 - abs(y - yy)) * fmap[yy, xx]
            out[b, q, m] += weights[b, q, m, l, p] * sample
  return out.reshape(B, LQ, M * DH)


def core(value, loc, weights):
  return deform_attn.ms_deform_attn_core(value, SHAPES, loc, weights)


def test_ms_deform_attn_core_equals_numpy_loops():
  value, loc, weights = random_inputs()
  got = np.asarray(jax.jit(core)(value, loc, weights))
  np.testing.assert_allclose(got, reference_loops(value, loc, weights), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_ms_deform_attn_hand_backward_equals_autodiff(dtype):
  """The hand-written backward against JAX's autodiff of `ms_deform_attn_reference`, points outside included."""
  value, loc, weights = random_inputs(1)
  value = jnp.asarray(value, dtype)
  cotangent = jnp.asarray(np.random.default_rng(4).normal(size=(B, LQ, M * DH)), dtype)
  _, hand = jax.vjp(core, value, jnp.asarray(loc), jnp.asarray(weights))
  _, auto = jax.vjp(lambda v, l, w: deform_attn.ms_deform_attn_reference(v, SHAPES, l, w), value, jnp.asarray(loc),
                    jnp.asarray(weights))
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  for name, h, a in zip(("value", "loc", "weights"), jax.jit(hand)(cotangent), jax.jit(auto)(cotangent)):
    assert h.dtype == a.dtype, name
    np.testing.assert_allclose(np.asarray(h, np.float32), np.asarray(a, np.float32), atol=tol, rtol=tol,
                               err_msg=name)


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
  """Transcribed from Deformable DETR / Mask2Former (ops/functions/ms_deform_attn_func.py)."""
  import torch
  import torch.nn.functional as F
  n, s, m, d = value.shape
  _, lq, m, nl, p, _ = sampling_locations.shape
  value_list = value.split([h * w for h, w in value_spatial_shapes], dim=1)
  sampling_grids = 2 * sampling_locations - 1
  sampling_value_list = []
  for lid, (h, w) in enumerate(value_spatial_shapes):
    value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
    sampling_grid_l = sampling_grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
    sampling_value_list.append(F.grid_sample(value_l, sampling_grid_l, mode="bilinear", padding_mode="zeros",
                                             align_corners=False))
  attention_weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, nl * p)
  output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(n, m * d, lq)
  return output.transpose(1, 2).contiguous()


def test_ms_deform_attn_core_and_gradients_equal_pytorch():
  torch = pytest.importorskip("torch")
  value, loc, weights = random_inputs(2)
  cotangent = np.random.default_rng(3).normal(size=(B, LQ, M * DH)).astype(np.float32)
  tv, tl, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (value, loc, weights))
  t_out = ms_deform_attn_core_pytorch(tv, SHAPES, tl, tw)
  (t_out * torch.tensor(cotangent, dtype=torch.float64)).sum().backward()

  out, vjp = jax.vjp(core, jnp.asarray(value), jnp.asarray(loc), jnp.asarray(weights))
  grads = jax.jit(vjp)(jnp.asarray(cotangent))
  np.testing.assert_allclose(np.asarray(out), t_out.detach().numpy(), atol=1e-5, rtol=1e-5)
  for name, g, t in zip(("value", "loc", "weights"), grads, (tv, tl, tw)):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_location_gradient_on_pixel_centres_equals_pytorch():
  """Samples exactly on pixel centres (where Deformable DETR's initial offsets put them) have taps inside the map
  that weigh 0 but still carry d loc: torch's grid_sample backward in float32, on x = (i + 1/2) / W, exact in
  float32 for the levels' widths 4 and 2 (u = x W - 1/2 = i in both frameworks)."""
  torch = pytest.importorskip("torch")
  value, loc, weights = random_inputs(2)
  rng = np.random.default_rng(5)
  for lvl, (_, w) in enumerate(SHAPES):
    loc[:, :, :, lvl, :, 0] = (rng.integers(0, w, size=loc.shape[:3] + (P,)) + 0.5) / w
  cotangent = np.random.default_rng(3).normal(size=(B, LQ, M * DH)).astype(np.float32)
  tv, tl, tw = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (value, loc, weights))
  (ms_deform_attn_core_pytorch(tv, SHAPES, tl, tw) * torch.tensor(cotangent)).sum().backward()
  _, vjp = jax.vjp(core, jnp.asarray(value), jnp.asarray(loc), jnp.asarray(weights))
  for name, g, t in zip(("value", "loc", "weights"), jax.jit(vjp)(jnp.asarray(cotangent)), (tv, tl, tw)):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
