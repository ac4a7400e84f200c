"""`conv_same`: a stride-1 'same' convolution whose kernel gradient on the CPU is one matmul per tap
(`kernel_grad_by_taps`); reference: `conv_same_reference`, XLA's convolution under autodiff.

Measured reason: XLA-CPU's own weight gradient of the stride-4 3x3, 256-channel convolution took 419 ms, the taps'
matmuls 158 ms (R50 at 512 px, 2 cores; docs/scaling.md).
"""
import jax
import jax.numpy as jnp


def conv_same_reference(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """y = x * kernel, stride 1, zero padding k // 2 on each side: NHWC x HWIO (odd square kernel) -> NHWC, no bias."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_grad_by_taps(x: jnp.ndarray, kernel: jnp.ndarray, grad: jnp.ndarray) -> jnp.ndarray:
  """dL/dkernel[i, j] = sum over pixels of x_padded[.., y + i, x + j, :]^T grad[.., y, x, :]: one matmul per tap."""
  k, p = kernel.shape[0], kernel.shape[0] // 2
  h, w, d = grad.shape[1:]
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  g = grad.reshape(-1, d)
  taps = [[jnp.matmul(xp[:, i:i + h, j:j + w].reshape(-1, x.shape[-1]).T, g, preferred_element_type=jnp.float32)
           for j in range(k)] for i in range(k)]
  return jnp.stack([jnp.stack(row) for row in taps]).astype(kernel.dtype)


def _kernel_grad_native(x: jnp.ndarray, kernel: jnp.ndarray, grad: jnp.ndarray) -> jnp.ndarray:
  return jax.vjp(lambda k: conv_same_reference(x, k), kernel)[1](grad)[0]


@jax.custom_vjp
def conv_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """`conv_same_reference`, whose kernel gradient on the CPU is k^2 matmuls over the pixels (`kernel_grad_by_taps`);
  elsewhere it is the compiler's."""
  return conv_same_reference(x, kernel)


def _conv_same_fwd(x, kernel):
  return conv_same_reference(x, kernel), (x, kernel)


def _conv_same_bwd(residuals, grad):
  x, kernel = residuals
  dx = jax.vjp(lambda v: conv_same_reference(v, kernel), x)[1](grad)[0]
  dk = jax.lax.platform_dependent(x, kernel, grad, cpu=kernel_grad_by_taps, default=_kernel_grad_native)
  return dx, dk


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)
