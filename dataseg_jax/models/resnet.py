"""ResNet backbone (torchvision v1.5 layout: stride on the 3x3 conv) returning strides 4, 8, 16, 32.

Batch norm is frozen [default: Mask2Former / detectron2 FrozenBatchNorm2d]: the running statistics never
update. Each BN is stored folded as a per-channel affine `scale`, `bias` in `params` (y = x * scale + bias,
with scale = gamma / sqrt(var + eps), bias = beta - mean * scale when converted from torchvision), so there is
no `batch_stats` collection for a train step to carry or mutate: the model has `params` only. Unlike
detectron2, where gamma and beta are buffers too, the folded affine is trainable (at the backbone's learning
rate; train/optimizer.py applies no weight decay to 1-D leaves).
1x1 convolutions are Dense layers over channels (after a stride-2 subsample where needed): the same
function, and XLA-CPU computes their weight gradients about twice as fast.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from dataseg_jax.models.layers import dense
from dataseg_jax.ops.pool import max_pool

STAGES = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
BN_EPS = 1e-5


class FrozenBN(nn.Module):
  """Per-channel affine y = x * scale + bias (a folded, frozen batch norm)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (c,))
    return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def conv_kernel_init(init=nn.initializers.lecun_normal()):
  """`init` for a conv kernel [kh, kw, C_in, C_out] with logical axes (None, None, 'conv_in', 'conv_out')."""
  return nn.with_logical_partitioning(init, (None, None, "conv_in", "conv_out"))


def conv(features: int, kernel: int, stride: int, dtype, name: str):
  """k x k convolution, no bias, padding k // 2 (torchvision); 1x1 ones are Dense (see module docstring)."""
  if kernel == 1:
    d = dense(features, ("conv_in", "conv_out"), dtype, use_bias=False, name=name,
              kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    return (lambda x: d(x[:, ::stride, ::stride])) if stride > 1 else d
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)), use_bias=False,
                 dtype=dtype, name=name,
                 kernel_init=conv_kernel_init(nn.initializers.variance_scaling(2.0, "fan_out", "normal")))


class BasicBlock(nn.Module):
  features: int
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(FrozenBN(self.dtype, name="bn1")(conv(self.features, 3, self.stride, self.dtype, "conv1")(x)))
    y = FrozenBN(self.dtype, name="bn2")(conv(self.features, 3, 1, self.dtype, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = FrozenBN(self.dtype, name="downsample_bn")(conv(self.features, 1, self.stride, self.dtype, "downsample")(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  features: int  # width of the 3x3 conv; output is 4x
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = self.features * 4
    y = nn.relu(FrozenBN(self.dtype, name="bn1")(conv(self.features, 1, 1, self.dtype, "conv1")(x)))
    y = nn.relu(FrozenBN(self.dtype, name="bn2")(conv(self.features, 3, self.stride, self.dtype, "conv2")(y)))
    y = FrozenBN(self.dtype, name="bn3")(conv(out, 1, 1, self.dtype, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = FrozenBN(self.dtype, name="downsample_bn")(conv(out, 1, self.stride, self.dtype, "downsample")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """images [B, H, W, 3] (normalised) -> {'res2': stride 4, 'res3': 8, 'res4': 16, 'res5': 32}."""
  depth: int = 50
  width: int = 64
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.depth not in STAGES:
      raise ValueError(f"config.model.backbone.depth: {self.depth} is not a ResNet depth; expected one of "
                       f"{sorted(STAGES)}")
    kind, blocks = STAGES[self.depth]
    block_cls = BasicBlock if kind == "basic" else Bottleneck
    if self.remat:
      block_cls = nn.remat(block_cls)
    x = conv(self.width, 7, 2, self.dtype, "conv1")(x.astype(self.dtype))
    x = nn.relu(FrozenBN(self.dtype, name="bn1")(x))
    x = max_pool(x, 3, 2, 1)
    feats = {}
    for s, n in enumerate(blocks):
      for b in range(n):
        stride = 2 if (b == 0 and s > 0) else 1
        x = block_cls(self.width * 2 ** s, stride, self.dtype, name=f"layer{s + 1}_{b}")(x)
      feats[f"res{s + 2}"] = x
    return feats


def _fold_bn(sd, prefix: str) -> dict:
  """torchvision BN (weight, bias, running_mean, running_var) -> folded {'scale', 'bias'}."""
  g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
  m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
  scale = g / np.sqrt(v + BN_EPS)
  return {"scale": scale.astype(np.float32), "bias": (b - m * scale).astype(np.float32)}


def _conv(w: np.ndarray) -> dict:
  """torch [O, I, kh, kw] -> flax Conv [kh, kw, I, O], or Dense [I, O] for 1x1."""
  if w.shape[2:] == (1, 1):
    return {"kernel": w[:, :, 0, 0].T.astype(np.float32)}
  return {"kernel": np.transpose(w, (2, 3, 1, 0)).astype(np.float32)}


def convert_torchvision_resnet(state_dict, depth: int = 50) -> dict:
  """A torchvision ResNet state dict (numpy or torch tensors; `fc.*` ignored) -> this module's params."""
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
  if depth not in STAGES:
    raise ValueError(f"depth {depth} is not a ResNet depth; expected one of {sorted(STAGES)}")
  try:
    return _convert(sd, depth)
  except KeyError as e:
    raise ValueError(f"state dict has no {e.args[0]!r}: not a torchvision ResNet-{depth} (wrong --depth?)") from None


def _convert(sd: dict, depth: int) -> dict:
  kind, blocks = STAGES[depth]
  convs = ("conv1", "conv2") if kind == "basic" else ("conv1", "conv2", "conv3")
  params = {"conv1": _conv(sd["conv1.weight"]), "bn1": _fold_bn(sd, "bn1")}
  for s, n in enumerate(blocks):
    for b in range(n):
      tv = f"layer{s + 1}.{b}"
      p = {}
      for i, c in enumerate(convs):
        p[c] = _conv(sd[f"{tv}.{c}.weight"])
        p[f"bn{i + 1}"] = _fold_bn(sd, f"{tv}.bn{i + 1}")
      if f"{tv}.downsample.0.weight" in sd:
        p["downsample"] = _conv(sd[f"{tv}.downsample.0.weight"])
        p["downsample_bn"] = _fold_bn(sd, f"{tv}.downsample.1")
      params[f"layer{s + 1}_{b}"] = p
  missing = [k for k in sd if not k.startswith("fc.") and k.split(".")[-1] != "num_batches_tracked"
             and not _used(k, blocks)]
  if missing:
    raise ValueError(f"state dict keys not understood as a ResNet-{depth}: {missing[:5]}")
  return params


def _used(key: str, blocks: Sequence[int]) -> bool:
  parts = key.split(".")
  if parts[0] in ("conv1", "bn1"):
    return True
  if parts[0].startswith("layer"):
    s, b = int(parts[0][5:]) - 1, int(parts[1])
    return s < len(blocks) and b < blocks[s]
  return False
