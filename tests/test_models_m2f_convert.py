"""transformers Mask2Former -> our backbone, pixel decoder and transformer decoder: a random tiny
Mask2FormerForUniversalSegmentation (ResNet backbone) converted gives HF's backbone features, multi-scale memory, mask
features, and every layer's normalised queries and mask logits; a checkpoint that does not fit the config names
the mismatch; the script's .npz fits a DataSeg, and config.model.init_from starts training from it with the
classifier at its initialisation."""
import json
import pathlib
import runpy
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_train_loop as train_loop
from dataseg_jax import config as config_lib
from dataseg_jax import trees
from dataseg_jax.models import checkpoint_io
from dataseg_jax.models import convert_mask2former
from dataseg_jax.models import dataseg
from dataseg_jax.train import loop
from dataseg_jax import sharding as sharding_lib
from dataseg_jax.train import optimizer as optimizer_lib

HIDDEN, QUERIES, HEADS, ENCODER_LAYERS, DECODER_LAYERS, WIDTH = 32, 6, 2, 2, 3, 16
HEIGHT, WIDTH_PX = 96, 128  # not square: a swapped x / y shows
SCRIPT = pathlib.Path(__file__).parents[1] / "scripts" / "convert_weights.py"


def hf_mask2former(**overrides):
  """A random transformers Mask2FormerForUniversalSegmentation on a ResNet-10 (basic blocks, stem width 16), every
  weight drawn with scale 1 / sqrt(fan in), norms' scales in [0.5, 1.5], biases, offsets and BN statistics
  perturbed, so that a wrong mapping of any of them shows."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  backbone = transformers.ResNetConfig(embedding_size=WIDTH, hidden_sizes=[WIDTH * 2 ** s for s in range(4)],
                                       depths=[1, 1, 1, 1], layer_type="basic",
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
  kwargs = dict(backbone_config=backbone, feature_size=HIDDEN, mask_feature_size=HIDDEN, hidden_dim=HIDDEN,
                encoder_feedforward_dim=64, dim_feedforward=48, num_attention_heads=HEADS,
                encoder_layers=ENCODER_LAYERS, decoder_layers=DECODER_LAYERS + 1, num_queries=QUERIES, num_labels=5)
  config = transformers.Mask2FormerConfig(**{**kwargs, **overrides})
  torch.manual_seed(0)
  model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0.0, p[0].numel() ** -0.5)
      elif name.endswith("weight"):
        p.uniform_(0.5, 1.5)
      else:
        p.add_(torch.randn_like(p) * 0.1)
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.normal_(0.0, 0.2)
      elif name.endswith("running_var"):
        b.uniform_(0.5, 1.5)
  return model


def tiny_config(**model):
  """The base config at the tiny HF model's sizes (float32), with `model` overrides ('decoder.num_layers': 2)."""
  c = config_lib.base_config()
  c.data.image_size = 64
  m = c.model
  m.backbone.depth, m.backbone.width = 10, WIDTH
  m.hidden_dim = m.mask_dim = HIDDEN
  m.num_queries, m.embed_dim, m.dtype = QUERIES, 16, "float32"
  m.pixel_decoder.num_layers, m.pixel_decoder.num_heads, m.pixel_decoder.ffn_dim = ENCODER_LAYERS, HEADS, 64
  m.decoder.num_layers, m.decoder.num_heads, m.decoder.ffn_dim = DECODER_LAYERS, HEADS, 48
  for key, value in model.items():
    node = m
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return c


def state_dict(model) -> dict:
  return {k: v.numpy() for k, v in model.state_dict().items()}


def hf_outputs(model, images):
  """HF's outputs for raw RGB images [B, H, W, 3] 0..255, normalised as its image processor does, channels last."""
  torch = pytest.importorskip("torch")
  x = (images - np.asarray(dataseg.IMAGENET_MEAN, np.float32)) / np.asarray(dataseg.IMAGENET_STD, np.float32)
  with torch.no_grad():
    out = model.model(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  return {"backbone": [nhwc(t) for t in out.encoder_hidden_states],
          "memory": [nhwc(t) for t in out.pixel_decoder_hidden_states],
          "mask_features": nhwc(out.pixel_decoder_last_hidden_state),
          "queries": np.stack([t.transpose(0, 1).numpy() for t in out.transformer_decoder_intermediate_states]),
          "masks": np.stack([t.numpy() for t in out.masks_queries_logits])}


def our_outputs(config, params, images):
  """The same outputs of DataSeg(config.model) with `params` over its initialisation (the classifier's)."""
  model = dataseg.DataSeg(config.model)
  emb, mask = jnp.ones((3, config.model.embed_dim)), jnp.ones((images.shape[0], 3), bool)
  init = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.asarray(images), emb, mask)["params"])
  merged = checkpoint_io.merge_into(init, params)
  names = ("backbone", "pixel_decoder", "transformer_decoder")
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x, emb, mask,
                                           capture_intermediates=lambda m, _: m.name in names))
  out, state = apply(merged, jnp.asarray(images))
  got = {n: state["intermediates"][n]["__call__"][0] for n in names}
  (memory, mask_features), (queries, masks) = got["pixel_decoder"], got["transformer_decoder"]
  np.testing.assert_array_equal(out["pred_masks"], masks)
  return jax.device_get({"backbone": [got["backbone"][f"res{i}"] for i in range(2, 6)], "memory": memory,
                         "mask_features": mask_features, "queries": queries, "masks": masks})


def test_converted_mask2former_gives_hf_features_queries_and_masks_at_every_layer():
  """Batch 2 at 96 x 128 px (memory 3 x 4, 6 x 8, 12 x 16; masks 24 x 32), 2 encoder and 3 decoder layers
  (HF decoder_layers=4): 4 predictions, the first from the initial queries; masked attention active (each
  layer's masks cut some pixels and keep others)."""
  model = hf_mask2former()
  images = np.random.default_rng(0).uniform(0, 255, (2, HEIGHT, WIDTH_PX, 3)).astype(np.float32)
  want = hf_outputs(model, images)
  config = tiny_config()
  params, notes = convert_mask2former.convert_hf_mask2former(model.state_dict(), config.model)
  assert sorted(params) == ["backbone", "pixel_decoder", "transformer_decoder"]
  assert any("class_predictor" in n for n in notes)
  got = our_outputs(config, params, images)
  assert got["masks"].shape == (DECODER_LAYERS + 1, 2, QUERIES, HEIGHT // 4, WIDTH_PX // 4)
  assert 0.1 < np.mean(got["masks"] > 0) < 0.9
  worst = {}
  for key, levels in want.items():  # per backbone stage, memory level, batch element, decoder prediction
    assert len(levels) == len(got[key]), key
    for i, (w, g) in enumerate(zip(levels, got[key])):
      np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=f"{key}[{i}]")
      worst[key] = max(worst.get(key, 0.0), float(np.abs(g - w).max()))
  print("max abs difference:", worst)


def test_a_checkpoint_that_does_not_fit_the_config_names_the_mismatch():
  sd = state_dict(hf_mask2former())
  convert = lambda **m: convert_mask2former.convert_hf_mask2former(sd, tiny_config(**m).model)
  with pytest.raises(ValueError, match=r"config.model.hidden_dim=64, but the checkpoint's hidden size is 32"):
    convert(hidden_dim=64)
  with pytest.raises(ValueError, match=r"decoder.num_layers=9, .* decoder layers is 3 \(decoder_layers=4"):
    convert(**{"decoder.num_layers": 9})
  with pytest.raises(ValueError, match=r"pixel_decoder.num_layers=6, .*encoder_layers is 2"):
    convert(**{"pixel_decoder.num_layers": 6})
  with pytest.raises(ValueError, match=r"pixel_decoder.num_heads=4, .*encoder heads is 2"):
    convert(**{"pixel_decoder.num_heads": 4})
  with pytest.raises(ValueError, match=r"pixel_decoder.num_points=8, .*fixed in transformers"):
    convert(**{"pixel_decoder.num_points": 8})
  with pytest.raises(ValueError, match=r"num_queries=100, .*number of queries is 6"):
    convert(num_queries=100)
  with pytest.raises(ValueError, match=r"backbone.width=64, .*stem width is 16"):
    convert(**{"backbone.width": 64})
  with pytest.raises(ValueError, match=r"backbone: .*ResNet-18.*backbone.depth=18"):
    convert(**{"backbone.depth": 18})
  params, _ = convert(**{"decoder.ffn_dim": 2048})  # weights alone fit; the model's shapes do not
  with pytest.raises(ValueError, match=r"transformer_decoder/layer_0/linear1/kernel: checkpoint shape \(32, 48\)"):
    convert_mask2former.check_against_model(params, tiny_config(**{"decoder.ffn_dim": 2048}).model)
  hf_config = {"num_attention_heads": HEADS, "pre_norm": True, "activation_function": "relu"}
  with pytest.raises(ValueError, match="pre_norm=True"):
    convert_mask2former.convert_hf_mask2former(sd, tiny_config().model, hf_config)
  with pytest.raises(ValueError, match=r"decoder.num_heads=4, .*num_attention_heads is 2"):
    convert_mask2former.convert_hf_mask2former(sd, tiny_config(**{"decoder.num_heads": 4}).model,
                                               {**hf_config, "pre_norm": False})
  with pytest.raises(ValueError, match=r"feature_size 64 != hidden_dim 32"):
    convert_mask2former.convert_hf_mask2former(state_dict(hf_mask2former(feature_size=64)), tiny_config().model)
  with pytest.raises(ValueError, match="not understood.*'extra.weight'"):
    convert_mask2former.convert_hf_mask2former({**sd, "extra.weight": np.zeros(3)}, tiny_config().model)


def test_a_backbone_other_than_a_resnet_is_left_out_with_a_note():
  sd = {k: v for k, v in state_dict(hf_mask2former()).items() if ".encoder.embedder." not in k}
  sd["model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight"] = np.zeros((96, 3, 4, 4))
  params, notes = convert_mask2former.convert_hf_mask2former(sd, tiny_config().model, {
      "num_attention_heads": HEADS, "backbone_config": {"model_type": "swin"}})
  assert "backbone" not in params
  assert any(n.startswith("backbone (swin): no counterpart") and "torchvision_resnet" in n for n in notes)
  convert_mask2former.check_against_model(params, tiny_config().model)


TINY_CONFIG = '''
from test_models_m2f_convert import tiny_config


def get_config(arg=None):
  return tiny_config()
'''


def test_script_npz_fits_a_dataseg_through_model_init_from(tmp_path, capsys):
  """The safetensors of HF's Mask2FormerForUniversalSegmentation with its config.json beside: the .npz holds the
  three converted subtrees, and pretrained_params (what a fresh run starts from) takes it whole."""
  from safetensors.numpy import save_file
  model = hf_mask2former()
  sd = state_dict(model)
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, tmp_path / "model.safetensors")
  model.config.to_json_file(tmp_path / "config.json")
  (tmp_path / "tiny.py").write_text(TINY_CONFIG)
  convert = runpy.run_path(str(SCRIPT))["convert"]
  convert("hf_mask2former", tmp_path / "model.safetensors", tmp_path / "m2f.npz", config=str(tmp_path / "tiny.py"))
  printed = capsys.readouterr().out
  assert "dropped: class_predictor" in printed and "no config.json" not in printed
  config = tiny_config()
  with config.unlocked():
    config.model.init_from = str(tmp_path / "m2f.npz")
  images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  abstract = jax.eval_shape(dataseg.DataSeg(config.model).init, jax.random.key(0), images,
                            jnp.zeros((3, config.model.embed_dim)), jnp.ones((1, 3), bool))
  state = types.SimpleNamespace(params=flax.core.meta.unbox(abstract["params"]))
  loaded = loop.pretrained_params(config, state)
  assert sorted(loaded) == ["backbone", "pixel_decoder", "transformer_decoder"]
  want = convert_mask2former.convert_hf_mask2former(sd, config.model)[0]
  for k, v in trees.flatten(want).items():
    np.testing.assert_array_equal(trees.flatten(loaded)[k], v, err_msg=k)

  (tmp_path / "other.json").write_text(json.dumps({**model.config.to_dict(), "num_attention_heads": 4}))
  with pytest.raises(ValueError, match=r"config.model.decoder.num_heads=2, .*num_attention_heads is 4"):
    convert("hf_mask2former", tmp_path / "model.safetensors", tmp_path / "bad.npz", config=str(tmp_path / "tiny.py"),
            hf_config=str(tmp_path / "other.json"))


def first_params(c) -> dict:
  """The params of the first state `loop.train` builds for config `c` with the loop tests' tiny model (before any
  update)."""
  comps = train_loop.components(c)
  tx = optimizer_lib.make_optimizer(c)
  size = c.data.image_size
  abstract, _, create = loop.init_state(c, comps, sharding_lib.make_mesh(c), tx, (size, size, 3))
  return jax.device_get(create(loop.pretrained_params(c, abstract)).params)


def test_model_init_from_starts_training_from_the_npz_classifier_at_init(tmp_path):
  """A whole-model .npz (backbone + query table of the loop tests' tiny model, both + 1) with a backbone.init_from
  over one backbone leaf (+ 2): the first state holds them, and the classifier (not in the file) its init."""
  c = train_loop.config(total=1)
  fresh = trees.flatten(first_params(c))
  whole = {k: v + 1.0 for k, v in fresh.items() if not k.startswith("classifier/")}
  checkpoint_io.save_params_npz(tmp_path / "model.npz", trees.unflatten(whole))
  checkpoint_io.save_params_npz(tmp_path / "backbone.npz", {"kernel": fresh["backbone/kernel"] + 2.0})
  with c.unlocked():
    c.model.init_from = str(tmp_path / "model.npz")
    c.model.backbone.init_from = str(tmp_path / "backbone.npz")
  got = trees.flatten(first_params(c))
  assert sorted(got) == sorted(fresh) and any(k.startswith("classifier/") for k in got)
  for k, v in fresh.items():
    want = v + 2.0 if k == "backbone/kernel" else v if k.startswith("classifier/") else v + 1.0
    np.testing.assert_allclose(got[k], want, atol=1e-6, err_msg=k)
  with c.unlocked():
    c.model.init_from = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="config.model.init_from"):
    loop.train(c, str(tmp_path / "bad"), train_loop.components(c))
