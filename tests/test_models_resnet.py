"""Converted torchvision-layout ResNets (50 bottleneck, 18 basic) give PyTorch's features; the .npz converter
round-trips; remat changes nothing but memory."""
import pathlib
import runpy

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax.models import checkpoint_io
from dataseg_jax.models import resnet

WIDTH = 16  # torchvision's layout and key names at a quarter of the width, to keep the test fast


def torch_resnet(depth: int, width: int):
  """A pure-torch ResNet (v1.5: stride on the 3x3) whose state-dict keys are torchvision's."""
  torch = pytest.importorskip("torch")
  nn = torch.nn
  kind, stages = resnet.STAGES[depth]

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or cin != planes:
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
      y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or cin != planes * 4:
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  block = BasicBlock if kind == "basic" else Bottleneck

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = width
      for s, n in enumerate(stages):
        blocks = []
        for b in range(n):
          blocks.append(block(cin, width * 2 ** s, 2 if (b == 0 and s > 0) else 1))
          cin = width * 2 ** s * block.expansion
        setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(cin, 10)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      feats = {}
      for s in range(4):
        x = getattr(self, f"layer{s + 1}")(x)
        feats[f"res{s + 2}"] = x
      return feats

  torch.manual_seed(0)
  model = ResNet()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):  # random statistics and affine, kept O(1) through 16 blocks
        m.weight.uniform_(0.5, 1.0)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
  return model.eval()


@pytest.mark.parametrize("depth", [50, 18])
def test_converted_resnet_matches_pytorch_features(depth):
  torch = pytest.importorskip("torch")
  tmodel = torch_resnet(depth, WIDTH)
  sd = tmodel.state_dict()
  assert "layer2.0.downsample.0.weight" in sd and "layer4.1.bn2.running_var" in sd  # torchvision names
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = {k: v.permute(0, 2, 3, 1).numpy() for k, v in tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).items()}

  params = resnet.convert_torchvision_resnet(sd, depth=depth)
  model = resnet.ResNet(depth=depth, width=WIDTH)
  init = flax.core.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))["params"])
  assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, params)
  got = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
  for k in ("res2", "res3", "res4", "res5"):
    scale = np.abs(want[k]).max()
    assert scale > 1e-2, k
    np.testing.assert_allclose(np.asarray(got[k]) / scale, want[k] / scale, atol=1e-4, err_msg=k)


def test_convert_script_npz_roundtrip_and_merge(tmp_path):
  torch = pytest.importorskip("torch")
  sd = torch_resnet(50, WIDTH).state_dict()
  torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "r50.pth")
  script = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "scripts" / "convert_weights.py"))
  assert script["RESNET_DEPTHS"] == tuple(d for d in sorted(resnet.STAGES) if d >= 18)  # --help lists them unimported
  script["convert"]("torchvision_resnet", tmp_path / "r50.pth", tmp_path / "backbone.npz", depth=50)
  loaded = checkpoint_io.load_params_npz(tmp_path / "backbone.npz")
  direct = resnet.convert_torchvision_resnet(sd, 50)
  jax.tree.map(np.testing.assert_array_equal, loaded, direct)
  script["convert"]("torchvision_resnet50", tmp_path / "r50.pth", tmp_path / "named.npz")
  jax.tree.map(np.testing.assert_array_equal, checkpoint_io.load_params_npz(tmp_path / "named.npz"), direct)
  with pytest.raises(ValueError, match="names depth 50 but --depth is 101"):
    script["convert"]("torchvision_resnet50", tmp_path / "r50.pth", tmp_path / "bad.npz", depth=101)

  init = flax.core.meta.unbox(jax.eval_shape(resnet.ResNet(50, WIDTH).init, jax.random.key(0),
                                             jnp.zeros((1, 64, 64, 3)))["params"])
  merged = checkpoint_io.merge_into(init, loaded)
  jax.tree.map(np.testing.assert_array_equal, merged, direct)
  wrong = flax.core.meta.unbox(jax.eval_shape(resnet.ResNet(50, 8).init, jax.random.key(0),
                                              jnp.zeros((1, 64, 64, 3)))["params"])
  with pytest.raises(ValueError, match="shape"):
    checkpoint_io.merge_into(wrong, loaded)


def test_wrong_depth_state_dict_is_a_clear_error():
  pytest.importorskip("torch")
  sd = torch_resnet(50, WIDTH).state_dict()
  with pytest.raises(ValueError, match="ResNet-101"):
    resnet.convert_torchvision_resnet(sd, depth=101)
  with pytest.raises(ValueError, match="ResNet-18"):
    resnet.convert_torchvision_resnet(sd, depth=18)


def test_remat_gives_the_same_features_and_gradients():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 3)), jnp.float32)
  plain, remat = resnet.ResNet(depth=10, width=8), resnet.ResNet(depth=10, width=8, remat=True)
  params = plain.init(jax.random.key(0), x)["params"]

  def loss(model, p):
    return sum(jnp.sum(f ** 2) for f in model.apply({"params": p}, x).values())

  assert "remat" in str(jax.make_jaxpr(lambda p: loss(remat, p))(params))
  assert "remat" not in str(jax.make_jaxpr(lambda p: loss(plain, p))(params))
  want = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
  got = jax.jit(jax.grad(lambda p: loss(remat, p)))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # equal up to float reassociation
    np.testing.assert_allclose(np.asarray(g) / np.abs(w).max(), np.asarray(w) / np.abs(w).max(), atol=1e-5)
