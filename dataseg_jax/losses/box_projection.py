"""BoxInst's projection loss for box-only supervision [paper: DaTaSeg uses it for matching and loss].

L_proj(m, b) = dice(max_y m, max_y b) + dice(max_x m, max_x b), with
dice(a, g) = 1 - 2 sum(a g) / (sum a^2 + sum g^2 + eps), eps = 1e-5 [BoxInst dice_coefficient],
m = sigmoid(mask logits) on the [h, w] mask grid and b the box rasterised on that grid.

Half-pixel convention (contract.py): a normalised box (y0, x0, y1, x1) covers the continuous
interval [y0 h, y1 h) x [x0 w, x1 w) of the grid, and pixel (i, j), which covers [i, i + 1) x [j, j + 1),
belongs to the box when its centre does: y0 h <= i + 1/2 < y1 h and x0 w <= j + 1/2 < x1 w. Since
sigmoid is increasing, max_y sigmoid(m) = sigmoid(max_y m), which is what is computed. A box of zero
width or entirely outside the image rasterises to nothing: its projection is all zero, the loss
1 - 0 / (sum a^2 + eps) stays finite and so does its gradient.
"""
import jax
import jax.numpy as jnp

DICE_EPS = 1e-5


def box_projections(boxes: jax.Array, height: int, width: int):
  """Projections of the rasterised boxes onto each axis.

  Args:
    boxes: [N, 4] normalised (y0, x0, y1, x1).
    height, width: mask grid size h, w.

  Returns:
    (proj_y [N, h], proj_x [N, w]) float32 in {0, 1}: proj_y = max over x of the box mask
    (rows the box covers), proj_x = max over y (columns the box covers).
  """
  boxes = boxes.astype(jnp.float32)
  cy = jnp.arange(height, dtype=jnp.float32) + 0.5
  cx = jnp.arange(width, dtype=jnp.float32) + 0.5
  y0, x0, y1, x1 = (boxes[:, k:k + 1] for k in range(4))
  rows = (cy >= y0 * height) & (cy < y1 * height)
  cols = (cx >= x0 * width) & (cx < x1 * width)
  nonempty = jnp.any(rows, -1, keepdims=True) & jnp.any(cols, -1, keepdims=True)
  return (rows & nonempty).astype(jnp.float32), (cols & nonempty).astype(jnp.float32)


def mask_projections(mask_logits: jax.Array):
  """(max over x, max over y) of sigmoid(mask_logits): [Q, h, w] -> ([Q, h], [Q, w]) float32."""
  m = mask_logits.astype(jnp.float32)
  return jax.nn.sigmoid(jnp.max(m, axis=2)), jax.nn.sigmoid(jnp.max(m, axis=1))


def dice_coefficient_loss(a: jax.Array, g: jax.Array) -> jax.Array:
  """BoxInst dice 1 - 2 sum(a g) / (sum a^2 + sum g^2 + eps) along the last axis: [..., K] -> [...]."""
  num = 2.0 * jnp.sum(a * g, -1)
  den = jnp.sum(a * a, -1) + jnp.sum(g * g, -1) + DICE_EPS
  return 1.0 - num / den


def projection_loss(pred_y: jax.Array, pred_x: jax.Array, box_y: jax.Array, box_x: jax.Array) -> jax.Array:
  """L_proj per row: dice(pred_y, box_y) + dice(pred_x, box_x); [R, h], [R, w] each -> [R]."""
  return dice_coefficient_loss(pred_y, box_y) + dice_coefficient_loss(pred_x, box_x)


def pairwise_projection_cost(pred_y: jax.Array, pred_x: jax.Array, box_y: jax.Array,
                             box_x: jax.Array) -> jax.Array:
  """`projection_loss` of every prediction against every box: [Q, h], [Q, w], [N, h], [N, w] -> [Q, N]."""

  def pairwise(a, g):
    num = 2.0 * a @ g.T
    den = jnp.sum(a * a, -1)[:, None] + jnp.sum(g * g, -1)[None, :] + DICE_EPS
    return 1.0 - num / den

  return pairwise(pred_y, box_y) + pairwise(pred_x, box_x)
