"""Hugging Face transformers Mask2Former checkpoints -> this model's `pixel_decoder`, `transformer_decoder` and, when
the checkpoint's backbone is a transformers ResNet, `backbone` parameters.

  params, notes = convert_hf_mask2former(state_dict, config.model, hf_config)   # hf_config: config.json, or None
  check_against_model(params, config.model)                                       # keys and shapes, or ValueError

Source: a `Mask2FormerModel` or `Mask2FormerForUniversalSegmentation` state dict (keys with or without `model.`).
Torch Linear / Conv weights [out, in(, kh, kw)] become Flax kernels [(kh, kw,) in, out]; what maps to what:

  pixel_level_module.decoder.                            pixel_decoder/
    level_embed                                            level_embed
    input_projections.{i}.0 (1x1 conv), .1 (GroupNorm)     input_proj_{i}, input_norm_{i}  (i: stride 32, 16, 8)
    encoder.layers.{j}.self_attn.{sampling_offsets, attention_weights, value_proj, output_proj}
                                                           encoder_layer_{j}/self_attn/ (the same names)
    encoder.layers.{j}.{self_attn_layer_norm, fc1, fc2, final_layer_norm}
                                                           encoder_layer_{j}/{norm1, linear1, linear2, norm2}
    adapter_1.{0, 1}, layer_1.{0, 1} (the stride-4 FPN)    lateral, lateral_norm, output_conv, output_norm
    mask_projection                                        mask_features
  transformer_module.                                    transformer_decoder/
    queries_features, queries_embedder, level_embed        query_feat, query_pos, level_embed
    decoder.layers.{i}.cross_attn.in_proj_{weight, bias}   layer_{i}/cross_attn/{q, k, v} (rows split in three)
    decoder.layers.{i}.cross_attn.out_proj                 layer_{i}/cross_attn/out
    decoder.layers.{i}.self_attn.{q, k, v, out}_proj       layer_{i}/self_attn/{q, k, v, out}
    decoder.layers.{i}.{cross_attn_layer_norm, self_attn_layer_norm, fc1, fc2, final_layer_norm}
                                                           layer_{i}/{norm_cross, norm_self, linear1, linear2, norm_ffn}
    decoder.layernorm                                      decoder_norm
    decoder.mask_predictor.mask_embedder.{k}.0             mask_embed/layer{k}
  pixel_level_module.encoder. (a transformers ResNet)    backbone/ (renamed to torchvision's layout, BN folded)

Dropped, and said so in `notes`: `class_predictor` (our classifier scores text embeddings, config.model.classifier:
it keeps its initialisation), `criterion.empty_weight`, and a backbone that is not a transformers ResNet (Swin, ...):
take ours from `--config.model.backbone.init_from` (e.g. `convert_weights.py --from torchvision_resnet50`).

The architectures are the same function (tests/test_models_m2f_convert.py compares every output): HF's
decoder_layers counts the initial prediction, so our decoder.num_layers = decoder_layers - 1; HF's pixel_values
are our images normalised with the same ImageNet mean and std. What ours cannot express is refused with a
ValueError naming the key: a feature_size other than hidden_dim (HF's transformer input projections), num_points
other than 4, other head counts, an FPN with more than the stride-4 level, pre-norm layers or another activation
(read from config.json), a ResNet strided elsewhere than torchvision's (downsample_in_bottleneck,
downsample_in_first_stage).
"""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax.models import checkpoint_io
from dataseg_jax.models import dataseg
from dataseg_jax.models import resnet

PIXEL = "pixel_level_module.decoder."
TRANSFORMER = "transformer_module."
BACKBONE = "pixel_level_module.encoder."
DROPPED = {"class_predictor.": "class_predictor (the class head: our classifier scores text embeddings and keeps "
                               "its initialisation)",
           "criterion.": "criterion.empty_weight (a loss constant)"}
HF_POINTS, HF_LEVELS = 4, 3  # fixed in transformers' Mask2FormerPixelDecoderEncoderLayer


def to_numpy(state_dict) -> dict:
  """torch tensors or arrays -> float32 numpy (integer counters kept), the `model.` prefix of
  Mask2FormerForUniversalSegmentation removed."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      v = v.float().numpy() if v.is_floating_point() else v.numpy()
    out[k.removeprefix("model.")] = np.asarray(v)
  return out


def _linear(sd: dict, key: str) -> dict:
  """torch Linear or 1x1 Conv `key` -> Dense {'kernel' [in, out], 'bias' when it has one}."""
  w = sd[f"{key}.weight"]
  out = {"kernel": w.reshape(w.shape[0], w.shape[1]).T.astype(np.float32)}
  if f"{key}.bias" in sd:
    out["bias"] = sd[f"{key}.bias"].astype(np.float32)
  return out


def _conv3x3(sd: dict, key: str) -> dict:
  """torch Conv2d `key` (no bias) -> Flax Conv {'kernel' [kh, kw, in, out]}."""
  return {"kernel": np.transpose(sd[f"{key}.weight"], (2, 3, 1, 0)).astype(np.float32)}


def _norm(sd: dict, key: str) -> dict:
  """torch LayerNorm / GroupNorm `key` -> Flax {'scale', 'bias'}."""
  return {"scale": sd[f"{key}.weight"].astype(np.float32), "bias": sd[f"{key}.bias"].astype(np.float32)}


def _count(sd: dict, prefix: str) -> int:
  """How many `prefix{i}.` blocks the state dict holds (i = 0, 1, ...)."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return len({m.group(1) for k in sd if (m := pattern.match(k))})


def convert_pixel_decoder(sd: dict, num_layers: int) -> dict:
  """`pixel_level_module.decoder.*` -> pixel_decoder params: input projections + GroupNorm, MSDeformAttn encoder
  layers, the stride-4 FPN level (adapter_1 = lateral, layer_1 = 3x3 output conv) and the mask projection."""
  p = {"level_embed": sd[f"{PIXEL}level_embed"].astype(np.float32),
       "lateral": _linear(sd, f"{PIXEL}adapter_1.0"), "lateral_norm": _norm(sd, f"{PIXEL}adapter_1.1"),
       "output_conv": _conv3x3(sd, f"{PIXEL}layer_1.0"), "output_norm": _norm(sd, f"{PIXEL}layer_1.1"),
       "mask_features": _linear(sd, f"{PIXEL}mask_projection")}
  for i in range(HF_LEVELS):
    p[f"input_proj_{i}"] = _linear(sd, f"{PIXEL}input_projections.{i}.0")
    p[f"input_norm_{i}"] = _norm(sd, f"{PIXEL}input_projections.{i}.1")
  for j in range(num_layers):
    hf = f"{PIXEL}encoder.layers.{j}."
    attn = {n: _linear(sd, f"{hf}self_attn.{n}")
            for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")}
    p[f"encoder_layer_{j}"] = {"self_attn": attn, "norm1": _norm(sd, f"{hf}self_attn_layer_norm"),
                               "linear1": _linear(sd, f"{hf}fc1"), "linear2": _linear(sd, f"{hf}fc2"),
                               "norm2": _norm(sd, f"{hf}final_layer_norm")}
  return p


def _cross_attention(sd: dict, key: str) -> dict:
  """torch nn.MultiheadAttention `key` (packed in_proj [3 D, D]) -> our Attention {q, k, v, out}."""
  w, b = sd[f"{key}.in_proj_weight"], sd[f"{key}.in_proj_bias"]
  d = w.shape[1]
  out = {n: {"kernel": w[i * d:(i + 1) * d].T.astype(np.float32), "bias": b[i * d:(i + 1) * d].astype(np.float32)}
         for i, n in enumerate(("q", "k", "v"))}
  out["out"] = _linear(sd, f"{key}.out_proj")
  return out


def convert_transformer_decoder(sd: dict, num_layers: int) -> dict:
  """`transformer_module.*` -> transformer_decoder params: query features and positions, level embedding, masked-
  attention layers (cross, self, FFN, each post-norm), the shared final LayerNorm and the 3-layer mask MLP."""
  t = f"{TRANSFORMER}decoder."
  p = {"query_feat": sd[f"{TRANSFORMER}queries_features.weight"].astype(np.float32),
       "query_pos": sd[f"{TRANSFORMER}queries_embedder.weight"].astype(np.float32),
       "level_embed": sd[f"{TRANSFORMER}level_embed.weight"].astype(np.float32),
       "decoder_norm": _norm(sd, f"{t}layernorm"),
       "mask_embed": {f"layer{k}": _linear(sd, f"{t}mask_predictor.mask_embedder.{k}.0") for k in range(3)}}
  for i in range(num_layers):
    hf = f"{t}layers.{i}."
    p[f"layer_{i}"] = {
        "cross_attn": _cross_attention(sd, f"{hf}cross_attn"),
        "self_attn": {n: _linear(sd, f"{hf}self_attn.{n}_proj") for n in ("q", "k", "v", "out")},
        "norm_cross": _norm(sd, f"{hf}cross_attn_layer_norm"), "norm_self": _norm(sd, f"{hf}self_attn_layer_norm"),
        "linear1": _linear(sd, f"{hf}fc1"), "linear2": _linear(sd, f"{hf}fc2"),
        "norm_ffn": _norm(sd, f"{hf}final_layer_norm")}
  return p


def hf_resnet_to_torchvision(sd: dict) -> dict:
  """A transformers ResNetBackbone state dict (prefix removed) renamed to torchvision's ResNet keys:
  embedder.embedder.{convolution, normalization} -> conv1, bn1; encoder.stages.{s}.layers.{b}.layer.{k}.* ->
  layer{s+1}.{b}.conv{k+1} / bn{k+1}; .shortcut.{convolution, normalization} -> .downsample.0 / .1."""
  out = {}
  for k, v in sd.items():
    k = k.replace("embedder.embedder.convolution.", "conv1.").replace("embedder.embedder.normalization.", "bn1.")
    k = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.", k)
    k = re.sub(r"\.layer\.(\d+)\.convolution\.", lambda m: f".conv{int(m[1]) + 1}.", k)
    k = re.sub(r"\.layer\.(\d+)\.normalization\.", lambda m: f".bn{int(m[1]) + 1}.", k)
    k = k.replace(".shortcut.convolution.", ".downsample.0.").replace(".shortcut.normalization.", ".downsample.1.")
    out[k] = v
  return out


def _expect(key: str, want, found, what: str, why: str = "") -> None:
  """ValueError 'config.model.<key>=<want>, but the checkpoint's <what> is <found>' when they differ."""
  if want != found:
    raise ValueError(f"config.model.{key}={want}, but the checkpoint's {what} is {found}{why}")


def convert_backbone(sd: dict, model_cfg, hf_config) -> tuple[dict | None, str | None]:
  """(`backbone` params, None) from a transformers ResNet when config.model.backbone is a ResNet; else (None, a note
  saying why the checkpoint's backbone was left out)."""
  bb = {k[len(BACKBONE):]: v for k, v in sd.items() if k.startswith(BACKBONE)}
  if not bb:
    return None, "backbone: none in the checkpoint; set --config.model.backbone.init_from"
  if "embedder.embedder.convolution.weight" not in bb:
    kind = (hf_config or {}).get("backbone_config", {}).get("model_type", "not a transformers ResNet")
    return None, (f"backbone ({kind}): no counterpart here, not converted; take it from "
                  f"--config.model.backbone.init_from (e.g. convert_weights.py --from torchvision_resnet50)")
  b = model_cfg.backbone
  if b.name != "resnet":
    return None, f"backbone (ResNet): not converted, config.model.backbone.name is {b.name!r}"
  hf_backbone = (hf_config or {}).get("backbone_config", {})
  for option in ("downsample_in_bottleneck", "downsample_in_first_stage"):
    if hf_backbone.get(option):
      raise ValueError(f"backbone: {option}=True; ours is torchvision's v1.5 layout (stride 1 in the first stage, "
                       f"then on each stage's first 3x3 conv)")
  _expect("backbone.width", b.width, bb["embedder.embedder.convolution.weight"].shape[0], "ResNet stem width")
  try:
    return resnet.convert_torchvision_resnet(hf_resnet_to_torchvision(bb), b.depth), None
  except ValueError as e:
    raise ValueError(f"backbone: {e} (config.model.backbone.depth={b.depth})") from None


def check_layout(sd: dict, model_cfg, hf_config=None) -> None:
  """Raises ValueError naming the config key (or HF field) where the checkpoint and config.model differ, or where
  the checkpoint uses an option our architecture lacks; `hf_config` (config.json) adds what weights cannot show."""
  for key in (f"{PIXEL}level_embed", f"{TRANSFORMER}queries_features.weight"):
    if key not in sd:
      raise ValueError(f"no {key!r}: not a transformers Mask2FormerModel / Mask2FormerForUniversalSegmentation "
                       f"state dict (keys like {sorted(sd)[:3]})")
  unknown = [k for k in sd if not k.startswith((PIXEL, TRANSFORMER, BACKBONE, *DROPPED))]
  if unknown:
    raise ValueError(f"state dict keys not understood as a transformers Mask2Former: {unknown[:5]}")
  queries, hidden = sd[f"{TRANSFORMER}queries_features.weight"].shape
  feature = sd[f"{PIXEL}level_embed"].shape[1]
  if feature != hidden or _count(sd, f"{TRANSFORMER}input_projections."):
    raise ValueError(f"the checkpoint's feature_size {feature} != hidden_dim {hidden} (transformer_module."
                     f"input_projections): ours has one width, config.model.hidden_dim, and no such projection")
  pd, dc = model_cfg.pixel_decoder, model_cfg.decoder
  _expect("hidden_dim", model_cfg.hidden_dim, hidden, "hidden size")
  _expect("num_queries", model_cfg.num_queries, queries, "number of queries")
  _expect("mask_dim", model_cfg.mask_dim, sd[f"{PIXEL}mask_projection.weight"].shape[0], "mask_feature_size")
  _expect("pixel_decoder.num_layers", pd.num_layers, _count(sd, f"{PIXEL}encoder.layers."), "encoder_layers")
  layers = _count(sd, f"{TRANSFORMER}decoder.layers.")
  _expect("decoder.num_layers", dc.num_layers, layers, "number of decoder layers",
          f" (decoder_layers={layers + 1}: transformers counts the initial prediction, we do not)")
  _expect("pixel_decoder.num_points", pd.num_points, HF_POINTS, "number of points per head and level",
          " (fixed in transformers)")
  if pd.num_layers:
    offsets = sd[f"{PIXEL}encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]
    _expect("pixel_decoder.num_heads", pd.num_heads, offsets // (HF_LEVELS * HF_POINTS * 2), "number of encoder heads")
  fpn = _count(sd, f"{PIXEL}adapter_")
  if fpn != 1:
    raise ValueError(f"the checkpoint's FPN has {fpn} levels below stride 8 (its common_stride); ours fuses exactly "
                     f"one, the stride-4 feature")
  if hf_config:
    heads = hf_config.get("num_attention_heads")
    _expect("decoder.num_heads", dc.num_heads, heads, "num_attention_heads")
    _expect("pixel_decoder.num_heads", pd.num_heads, heads, "num_attention_heads")
    if hf_config.get("pre_norm") or hf_config.get("activation_function", "relu") != "relu":
      raise ValueError(f"the checkpoint's decoder layers are pre_norm={hf_config.get('pre_norm')}, activation "
                       f"{hf_config.get('activation_function')!r}: ours are post-norm with ReLU")


def convert_hf_mask2former(state_dict, model_cfg, hf_config=None) -> tuple[dict, list[str]]:
  """(params {'pixel_decoder', 'transformer_decoder'[, 'backbone']}, notes on what was left out and why) of a
  transformers Mask2Former state dict for `config.model`; ValueError (check_layout) when they do not fit."""
  sd = to_numpy(state_dict)
  check_layout(sd, model_cfg, hf_config)
  params = {"pixel_decoder": convert_pixel_decoder(sd, model_cfg.pixel_decoder.num_layers),
            "transformer_decoder": convert_transformer_decoder(sd, model_cfg.decoder.num_layers)}
  backbone, note = convert_backbone(sd, model_cfg, hf_config)
  notes = [note] if note else []
  if backbone is not None:
    params["backbone"] = backbone
  notes += [f"dropped: {why}" for prefix, why in DROPPED.items() if any(k.startswith(prefix) for k in sd)]
  if hf_config is None:
    notes.append(f"no config.json: the decoder's heads (config.model.decoder.num_heads={model_cfg.decoder.num_heads})"
                 f", post-norm and ReLU are assumed to be the checkpoint's")
  return params, notes


def check_against_model(params: dict, model_cfg, image_size: int = 64) -> None:
  """Raises ValueError naming the key when `params` does not fit DataSeg(config.model) (a shape, a key it lacks) or
  lacks part of its pixel or transformer decoder."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
  abstract = jax.eval_shape(dataseg.DataSeg(model_cfg).init, jax.random.key(0), images,
                            jnp.zeros((2, model_cfg.embed_dim)), jnp.ones((1, 2), bool))
  init = flax.core.meta.unbox(abstract["params"])
  try:
    checkpoint_io.merge_into(init, params)
  except ValueError as e:
    hint = ("; the checkpoint's pixel decoder was trained on another backbone's channels"
            if re.search(r"input_proj_|lateral/", str(e)) else "")
    raise ValueError(f"{e}{hint}") from None
  have = set(flax.traverse_util.flatten_dict(params, sep="/"))
  lacking = [k for k in flax.traverse_util.flatten_dict(init, sep="/")
             if k.startswith(("pixel_decoder/", "transformer_decoder/")) and k not in have]
  if lacking:
    raise ValueError(f"the checkpoint has no {lacking[:3]}")
