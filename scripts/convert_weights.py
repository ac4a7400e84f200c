"""Converts a torchvision ResNet state dict (a file you have) into this project's backbone parameters.

  python scripts/convert_weights.py --from torchvision_resnet --depth 50 \
      --input resnet50-0676ba61.pth --output backbone.npz
  python scripts/convert_weights.py --from torchvision_resnet50 --input resnet50.pth --output backbone.npz

The output is a flat `.npz` with '/'-joined keys (`layer1_0/conv1/kernel`, ...) of the Flax `backbone`
parameters: BN folded into a per-channel scale and bias (frozen BN), 1x1 convs as Dense kernels. Read it back
with `dataseg_jax.models.checkpoint_io.load_params_npz`, and put it into a model's params with
`checkpoint_io.merge_into(variables['params']['backbone'], loaded)`. torch is needed only here.
"""
import argparse
import pathlib
import sys

from dataseg_jax.models import checkpoint_io
from dataseg_jax.models import resnet


def load_state_dict(path: pathlib.Path) -> dict:
  """A `.pth` state dict (or a dict with a 'state_dict' / 'model' entry), read with weights_only=True."""
  try:
    import torch
  except ImportError:
    sys.exit("convert_weights.py needs torch to read .pth files: pip install -e .[parity]")
  if not path.is_file():
    sys.exit(f"--input {path}: no such file")
  sd = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model"):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  return {k.removeprefix("module."): v for k, v in sd.items()}


SOURCES = ["torchvision_resnet"] + [f"torchvision_resnet{d}" for d in sorted(resnet.STAGES) if d >= 18]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                 help="torchvision_resnet with --depth, or the depth in the name (torchvision_resnet50)")
  p.add_argument("--depth", type=int, default=None, choices=sorted(resnet.STAGES), help="default 50")
  p.add_argument("--input", required=True, type=pathlib.Path)
  p.add_argument("--output", required=True, type=pathlib.Path)
  a = p.parse_args(argv)
  named = int(a.source.removeprefix("torchvision_resnet") or 0) or None
  if named and a.depth and named != a.depth:
    p.error(f"--from {a.source} names depth {named} but --depth is {a.depth}")
  depth = named or a.depth or 50
  params = resnet.convert_torchvision_resnet(load_state_dict(a.input), depth)
  checkpoint_io.save_params_npz(a.output, params)
  n = sum(v.size for v in checkpoint_io.flatten_params(params).values())
  print(f"wrote {a.output}: ResNet-{depth} backbone, {n / 1e6:.2f} M parameters")


if __name__ == "__main__":
  main()
