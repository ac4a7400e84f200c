"""Plain-ViT checkpoints -> ViTDet: a random transformers VitDetModel converted gives HF's last hidden state (also
with the position embedding and the global blocks' relative-position tables resized); its weights renamed to the
MAE / timm layout give the same; the position-embedding and table resizes are torch's bicubic / linear
interpolation; a wrong layout names the key it lacks; the script's .npz initialises a ViT DataSeg's backbone."""
import pathlib
import runpy
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dataseg_jax import trees
from dataseg_jax.models import checkpoint_io
from dataseg_jax.models import dataseg
from dataseg_jax.models import vit
from dataseg_jax.train import loop

HIDDEN, LAYERS, HEADS, GLOBAL = 64, 3, 4, (1,)
SCRIPT = pathlib.Path(__file__).parents[1] / "scripts" / "convert_weights.py"


def hf_vitdet(image: int, pretrain: int, window: int, rel_pos: bool, layers: int = LAYERS):
  """A random transformers VitDetModel windowed like ours (every block but GLOBAL), norms, biases, position
  embedding and relative-position tables drawn large enough that a wrong mapping of any of them shows."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.VitDetConfig(
      hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, mlp_ratio=4, patch_size=16,
      image_size=image, pretrain_image_size=pretrain, window_size=window,
      window_block_indices=[i for i in range(layers) if i not in GLOBAL], use_relative_position_embeddings=rel_pos)
  torch.manual_seed(0)
  model = transformers.VitDetModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
      elif "rel_pos" in name or "position" in name:
        p.normal_(0.0, 0.5)
      elif name.endswith("bias"):
        p.normal_(0.0, 0.1)
  return model


def hf_features(model, x):
  """HF's last_hidden_state [B, C, h, w] as [B, h, w, C] for images x [B, H, W, 3]."""
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state.permute(0, 2, 3, 1).numpy()


def trunk_features(trunk, x, window: int, rel_pos: bool):
  """Our ViTDet's stride-16 map before the simple feature pyramid (the last block's output), with `trunk` (converted
  params) over the model's own initialisation (the pyramid; zero relative-position tables if `trunk` has none)."""
  model = vit.ViTDet(16, HIDDEN, LAYERS, HEADS, 4 * HIDDEN, window, GLOBAL, rel_pos, out_dim=32)
  init = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.asarray(x))["params"])
  params = checkpoint_io.merge_into(init, trunk)
  last = f"block_{LAYERS - 1}"
  apply = jax.jit(lambda p, x: model.apply(p, x, capture_intermediates=lambda m, _: m.name == last)[1])
  return np.asarray(apply({"params": params}, jnp.asarray(x))["intermediates"][last]["__call__"][0])


def timm_layout(hf_state_dict) -> dict:
  """A VitDetModel state dict renamed to the MAE / timm VisionTransformer keys, plus MAE's pretraining-only ones."""
  renames = (("embeddings.projection.", "patch_embed.proj."), ("embeddings.position_embeddings", "pos_embed"),
             ("encoder.layer.", "blocks."), (".attention.", ".attn."))
  out = {}
  for k, v in hf_state_dict.items():
    for old, new in renames:
      k = k.replace(old, new)
    out[k] = v.numpy()
  rng = np.random.default_rng(0)
  for k, shape in (("cls_token", (1, 1, HIDDEN)), ("mask_token", (1, 1, 32)), ("norm.weight", (HIDDEN,)),
                   ("norm.bias", (HIDDEN,)), ("decoder_embed.weight", (32, HIDDEN)), ("decoder_pos_embed", (1, 65, 32)),
                   ("decoder_blocks.0.norm1.weight", (32,)), ("decoder_pred.weight", (768, 32))):
    out[k] = rng.normal(size=shape).astype(np.float32)
  return out


@pytest.mark.parametrize("pretrain, window", [(128, 3), (64, 4)])
def test_hf_vitdet_converted_gives_hf_last_hidden_state(pretrain, window):
  """128 px images (8 x 8 tokens). Window 3: windows zero padded to 9 x 9. Pretrained (and HF's image_size) at 64 px:
  the 4 x 4 + cls position embedding resized to 8 x 8 and the global block's 7-row tables to 15 rows, both as HF
  does on every call."""
  model = hf_vitdet(pretrain, pretrain, window, rel_pos=True)
  x = np.random.default_rng(0).normal(size=(2, 128, 128, 3)).astype(np.float32)
  want = hf_features(model, x)
  trunk = vit.convert_hf_vitdet(model.state_dict(), (8, 8), window, GLOBAL)
  assert trunk["block_1"]["attn"]["rel_pos_h"].shape == (15, HIDDEN // HEADS)  # global: 2 * 8 - 1
  assert trunk["block_0"]["attn"]["rel_pos_h"].shape == (2 * window - 1, HIDDEN // HEADS)
  got = trunk_features(trunk, x, window, rel_pos=True)
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_mae_timm_layout_converted_gives_the_same_features():
  """HF's weights without relative positions, renamed to timm keys with MAE's extras: our ViTDet with rel_pos=True
  (tables at their zero initialisation) computes HF's features."""
  model = hf_vitdet(128, 128, 3, rel_pos=False)
  x = np.random.default_rng(1).normal(size=(1, 128, 128, 3)).astype(np.float32)
  trunk = vit.convert_mae(timm_layout(model.state_dict()), (8, 8))
  assert "rel_pos_h" not in trunk["block_0"]["attn"]
  np.testing.assert_allclose(trunk_features(trunk, x, 3, rel_pos=True), hf_features(model, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls", [True, False])
def test_position_embedding_resize_is_torch_bicubic_and_tables_torch_linear(cls):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  grid = rng.normal(size=(7, 7, 5)).astype(np.float32)
  pos = grid.reshape(1, 49, 5)
  if cls:
    pos = np.concatenate([rng.normal(size=(1, 1, 5)).astype(np.float32), pos], 1)
  for size in ((12, 9), (4, 5), (7, 7), (3, 16)):
    want = torch.nn.functional.interpolate(torch.from_numpy(grid.transpose(2, 0, 1))[None], size=size,
                                           mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    got = vit.resize_pos_embed(pos, size)
    assert got.shape == (1, *size, 5)
    np.testing.assert_allclose(got[0], want, atol=1e-5, err_msg=str(size))
  table = rng.normal(size=(7, 4)).astype(np.float32)
  for length in (15, 5, 7):
    want = torch.nn.functional.interpolate(torch.from_numpy(table.T)[None], size=length, mode="linear")[0].T.numpy()
    np.testing.assert_allclose(vit.resize_rel_pos(table, length), want, atol=1e-5, err_msg=str(length))
  with pytest.raises(ValueError, match="square"):
    vit.resize_pos_embed(pos[:, :-3], (4, 4))


def test_a_state_dict_of_another_layout_names_the_missing_key():
  hf = {k: v.numpy() for k, v in hf_vitdet(64, 64, 2, rel_pos=True, layers=2).state_dict().items()}
  with pytest.raises(ValueError, match=r"'patch_embed.proj.weight'.*MAE / timm"):
    vit.convert_mae(hf, (4, 4))
  timm = timm_layout(hf_vitdet(64, 64, 2, rel_pos=False, layers=2).state_dict())
  with pytest.raises(ValueError, match=r"'embeddings.projection.weight'.*VitDetModel"):
    vit.convert_hf_vitdet(timm, (4, 4), 2, GLOBAL)
  with pytest.raises(ValueError, match=r"not understood.*blocks.0.ls1.gamma"):  # timm LayerScale: no counterpart
    vit.convert_mae({**timm, "blocks.0.ls1.gamma": np.ones(HIDDEN, np.float32)}, (4, 4))
  with pytest.raises(ValueError, match=r"'blocks.1.mlp.fc2.bias'"):
    vit.convert_mae({k: v for k, v in timm.items() if k != "blocks.1.mlp.fc2.bias"}, (4, 4))
  with pytest.raises(ValueError, match="residual"):
    vit.convert_hf_vitdet({**hf, "encoder.layer.1.residual.conv1.weight": np.zeros((32, 64, 1, 1))}, (4, 4), 2,
                          GLOBAL)


TINY_VIT_CONFIG = '''
from dataseg_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.data.image_size = 64
  b = c.model.backbone
  b.name, b.patch_size, b.hidden_dim, b.num_layers, b.num_heads, b.mlp_dim = "vit", 16, 64, 2, 4, 256
  b.window_size, b.global_blocks, b.rel_pos = 2, (1,), True
  if arg:
    b.num_layers = int(arg)
  c.model.hidden_dim = c.model.mask_dim = 32
  c.model.num_queries, c.model.embed_dim = 6, 16
  c.model.pixel_decoder.num_layers, c.model.pixel_decoder.num_heads, c.model.pixel_decoder.ffn_dim = 1, 2, 32
  c.model.decoder.num_layers, c.model.decoder.num_heads, c.model.decoder.ffn_dim = 2, 2, 32
  return c
'''


def test_script_npz_initialises_a_vit_dataseg_backbone(tmp_path, capsys):
  """hf_vitdet from .safetensors and mae from a .pth {'model': ...}: the .npz is the whole backbone (trunk from
  the checkpoint, pyramid and MAE's tables from the model's initialisation) and loads through init_from."""
  torch = pytest.importorskip("torch")
  from safetensors.numpy import save_file
  (tmp_path / "tiny_vit.py").write_text(TINY_VIT_CONFIG)
  config = runpy.run_path(str(tmp_path / "tiny_vit.py"))["get_config"]()
  hf = {k: v.numpy() for k, v in hf_vitdet(64, 224, 2, rel_pos=True, layers=2).state_dict().items()}
  save_file(hf, tmp_path / "model.safetensors")  # a 14 x 14 + cls position embedding, as pretrained at 224 px
  mae = timm_layout(hf_vitdet(64, 224, 2, rel_pos=False, layers=2).state_dict())
  torch.save({"model": {k: torch.from_numpy(v) for k, v in mae.items()}}, tmp_path / "mae.pth")
  convert = runpy.run_path(str(SCRIPT))["convert"]

  images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  abstract = jax.eval_shape(dataseg.DataSeg(config.model).init, jax.random.key(0), images,
                            jnp.zeros((3, config.model.embed_dim)), jnp.ones((1, 3), bool))
  state = types.SimpleNamespace(params=flax.core.meta.unbox(abstract["params"]))
  for source, path, trunk, from_init in (
      ("hf_vitdet", "model.safetensors", vit.convert_hf_vitdet(hf, (4, 4), 2, (1,)), "sfp_4_up1"),
      ("mae", "mae.pth", vit.convert_mae(mae, (4, 4)), "rel_pos_h/w of blocks [0, 1]")):
    out = tmp_path / f"{source}.npz"
    convert(source, tmp_path / path, out, config=str(tmp_path / "tiny_vit.py"))
    assert from_init in capsys.readouterr().out
    with config.unlocked():
      config.model.backbone.init_from = str(out)
    backbone = trees.flatten(loop.pretrained_backbone(config, state))
    for k, v in trees.flatten(trunk).items():
      np.testing.assert_array_equal(backbone[k], v, err_msg=k)
    assert backbone["pos_embed"].shape == (1, 4, 4, HIDDEN)
    np.testing.assert_array_equal(backbone["res2_norm2/scale"], 1.0)  # the pyramid's init, not zeros
    assert np.abs(backbone["res2_output/kernel"]).max() > 0
  assert not np.abs(backbone["block_0/attn/rel_pos_h"]).any()  # MAE: ViTDet's zero-initialised tables

  with pytest.raises(ValueError, match=r"'patch_embed.proj.weight'"):
    convert("mae", tmp_path / "model.safetensors", tmp_path / "bad.npz", config=str(tmp_path / "tiny_vit.py"))
  with pytest.raises(ValueError, match=r"the checkpoint has no \['block_2"):
    convert("hf_vitdet", tmp_path / "model.safetensors", tmp_path / "bad.npz", config=str(tmp_path / "tiny_vit.py:3"))
