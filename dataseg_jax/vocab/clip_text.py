"""The CLIP text tower in JAX (Flax linen) and converters from Hugging Face and OpenCLIP weights.

CLIP's text encoder (Radford et al. 2021) is a pre-LN causal transformer: token + position embeddings,
L residual blocks x += Attn(LN1(x)) (causal mask), x += MLP(LN2(x)), a final LayerNorm, the hidden state
at the end-of-text (EOT) token, and a linear projection to the joint embedding space. DaTaSeg uses the
ViT-L/14 tower (768-d) frozen as its classifier. [paper]

Weights are never downloaded: the user points `config.vocab.clip_weights` at
- a Hugging Face CLIP directory (`config.json`, `model.safetensors` or `pytorch_model.bin`,
  `tokenizer.json`) of a `CLIPModel` or `CLIPTextModelWithProjection`, e.g. openai/clip-vit-large-patch14;
- an OpenCLIP directory as on the Hub (`open_clip_config.json`, `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`, `tokenizer.json`);
- a single state-dict file (`.safetensors`, or `.bin`/`.pt`/`.pth` read with torch) in either layout, with
  `tokenizer.json` beside it; heads = width / 64 and QuickGELU are assumed (OpenAI CLIP's choices).
"""
import dataclasses
import functools
import json
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """CLIP text tower hyper-parameters. `eos_token_id=None` pools at argmax(input_ids) (OpenCLIP, and HF
  configs with the legacy eos_token_id 2); otherwise at the first position of `eos_token_id` (HF)."""
  vocab_size: int = 49408
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  context_length: int = 77
  embed_dim: int = 768
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = None

  def __post_init__(self):
    if self.hidden_act not in _ACTS:
      raise ValueError(f"CLIP hidden_act {self.hidden_act!r} is not supported; expected one of {_ACTS}")
    if self.width % self.heads:
      raise ValueError(f"CLIP width {self.width} is not divisible by heads {self.heads}")


def quick_gelu(x):
  """x * sigmoid(1.702 x), OpenAI CLIP's activation. [paper: CLIP code]"""
  return x * jax.nn.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
  """x += W_o Attn(LN1(x)) under the causal mask; x += W2 act(W1 LN2(x)). Shapes [B, T, W]."""
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, x, bias):
    c = self.config
    b, t, w = x.shape
    hd = w // c.heads
    h = nn.LayerNorm(c.layer_norm_eps, name="ln_1")(x)
    split = lambda y: y.reshape(b, t, c.heads, hd)
    q = split(nn.Dense(w, name="q_proj")(h)) * np.float32(hd ** -0.5)
    k = split(nn.Dense(w, name="k_proj")(h))
    v = split(nn.Dense(w, name="v_proj")(h))
    attn = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias, axis=-1)
    x = x + nn.Dense(w, name="out_proj")(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, w))
    h = nn.Dense(c.mlp_dim, name="fc1")(nn.LayerNorm(c.layer_norm_eps, name="ln_2")(x))
    h = quick_gelu(h) if c.hidden_act == "quick_gelu" else nn.gelu(h, approximate=False)
    return x + nn.Dense(w, name="fc2")(h)


class CLIPTextTransformer(nn.Module):
  """Token ids int32 [B, T] (T <= context_length) -> text embeddings float32 [B, E] (not normalised)."""
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, input_ids):
    c = self.config
    t = input_ids.shape[1]
    if t > c.context_length:
      raise ValueError(f"{t} tokens exceed the CLIP context length {c.context_length}")
    pos = self.param("positional_embedding", nn.initializers.normal(0.01), (c.context_length, c.width))
    x = nn.Embed(c.vocab_size, c.width, name="token_embedding")(input_ids) + pos[None, :t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    bias = jnp.where(causal, 0.0, -jnp.inf).astype(jnp.float32)[None, None]
    for i in range(c.layers):
      x = ResidualAttentionBlock(c, name=f"layer_{i}")(x, bias)
    x = nn.LayerNorm(c.layer_norm_eps, name="ln_final")(x)
    if c.eos_token_id is None:
      eot = jnp.argmax(input_ids, axis=-1)
    else:
      eot = jnp.argmax(input_ids == c.eos_token_id, axis=-1)
    pooled = x[jnp.arange(x.shape[0]), eot]
    return nn.Dense(c.embed_dim, use_bias=False, name="text_projection")(pooled)


def _layer_count(keys, pattern: str) -> int:
  idx = {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}
  if not idx:
    raise ValueError("the CLIP state dict has no transformer layers; is it a CLIP text tower?")
  if idx != set(range(len(idx))):
    raise ValueError(f"the CLIP state dict has layers {sorted(idx)}; expected 0..{max(idx)} without gaps")
  return len(idx)


def detect_layout(sd: dict) -> str:
  """'hf' (text_model.* keys), 'openclip' (transformer.resblocks.* keys), or a ValueError naming both."""
  keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
  if any(k.startswith("text_model.") for k in keys):
    return "hf"
  if any(k.startswith(("transformer.resblocks.", "text.transformer.resblocks.")) for k in keys):
    return "openclip"
  raise ValueError("cannot tell the CLIP layout: expected Hugging Face keys 'text_model.*' or OpenCLIP keys "
                   f"'transformer.resblocks.*'; the state dict starts with {sorted(sd)[:5]}")


def _strip(sd: dict, prefixes) -> dict:
  out = {}
  for k, v in sd.items():
    for p in prefixes:
      if k.startswith(p):
        k = k[len(p):]
    out[k] = np.asarray(v, np.float32)
  return out


def _getter(sd: dict, layout: str):
  def get(key):
    if key not in sd:
      raise KeyError(f"{layout} CLIP state dict has no {key!r}")
    return sd[key]
  return get


def from_hf_state_dict(sd: dict, heads: int = None, hidden_act: str = "quick_gelu", eos_token_id: int = None,
                       layer_norm_eps: float = 1e-5) -> tuple:
  """Hugging Face CLIPTextModelWithProjection or CLIPModel state dict -> (CLIPTextConfig, params).

  Sizes come from the weights; `heads` (default width / 64), `hidden_act` and `eos_token_id` from the HF
  config (`eos_token_id` 2 is the legacy value meaning argmax pooling, like HF). Linear weights [out, in]
  become kernels [in, out]; the vision tower, `logit_scale` and `position_ids` are ignored.
  """
  sd = _strip(sd, ("module.",))
  get = _getter(sd, "Hugging Face")
  tok = get("text_model.embeddings.token_embedding.weight")
  pos = get("text_model.embeddings.position_embedding.weight")
  proj = get("text_projection.weight")
  layers = _layer_count(sd, r"text_model\.encoder\.layers\.(\d+)\.")
  width = tok.shape[1]
  config = CLIPTextConfig(
      vocab_size=tok.shape[0], width=width, layers=layers, heads=heads or max(1, width // 64),
      mlp_dim=get("text_model.encoder.layers.0.mlp.fc1.weight").shape[0], context_length=pos.shape[0],
      embed_dim=proj.shape[0], hidden_act=hidden_act, layer_norm_eps=layer_norm_eps,
      eos_token_id=None if eos_token_id in (None, 2) else int(eos_token_id))

  def dense(p):
    return {"kernel": get(p + ".weight").T, "bias": get(p + ".bias")}

  def ln(p):
    return {"scale": get(p + ".weight"), "bias": get(p + ".bias")}

  params = {"token_embedding": {"embedding": tok}, "positional_embedding": pos,
            "ln_final": ln("text_model.final_layer_norm"), "text_projection": {"kernel": proj.T}}
  for i in range(layers):
    p = f"text_model.encoder.layers.{i}."
    params[f"layer_{i}"] = {
        "ln_1": ln(p + "layer_norm1"), "ln_2": ln(p + "layer_norm2"),
        "q_proj": dense(p + "self_attn.q_proj"), "k_proj": dense(p + "self_attn.k_proj"),
        "v_proj": dense(p + "self_attn.v_proj"), "out_proj": dense(p + "self_attn.out_proj"),
        "fc1": dense(p + "mlp.fc1"), "fc2": dense(p + "mlp.fc2")}
  return config, params


def from_openclip_state_dict(sd: dict, heads: int = None, hidden_act: str = "quick_gelu") -> tuple:
  """OpenCLIP (or OpenAI CLIP) state dict -> (CLIPTextConfig, params), argmax (EOT) pooling.

  The fused `attn.in_proj_weight [3W, W]` splits into q, k, v; `text_projection [W, E]` is already a
  kernel (or a Linear weight [E, W] under `text_projection.weight`). `heads` defaults to width / 64 and
  `hidden_act` to QuickGELU (OpenAI's; LAION-trained models use 'gelu', see open_clip_config.json).
  """
  sd = _strip(sd, ("module.", "text."))
  for k in sd:
    if re.match(r"transformer\.resblocks\.\d+\.(ls_1|ls_2|ln_attn|attn\.ln_inner)", k):
      raise ValueError(f"OpenCLIP key {k!r}: layer scale / extra LayerNorms are not supported by this port")
  get = _getter(sd, "OpenCLIP")
  tok, pos = get("token_embedding.weight"), get("positional_embedding")
  proj = sd["text_projection"] if "text_projection" in sd else get("text_projection.weight").T
  layers = _layer_count(sd, r"transformer\.resblocks\.(\d+)\.")
  width = tok.shape[1]
  config = CLIPTextConfig(
      vocab_size=tok.shape[0], width=width, layers=layers, heads=heads or max(1, width // 64),
      mlp_dim=get("transformer.resblocks.0.mlp.c_fc.weight").shape[0], context_length=pos.shape[0],
      embed_dim=proj.shape[1], hidden_act=hidden_act, eos_token_id=None)

  def dense(p):
    return {"kernel": get(p + ".weight").T, "bias": get(p + ".bias")}

  def ln(p):
    return {"scale": get(p + ".weight"), "bias": get(p + ".bias")}

  params = {"token_embedding": {"embedding": tok}, "positional_embedding": pos, "ln_final": ln("ln_final"),
            "text_projection": {"kernel": proj}}
  for i in range(layers):
    p = f"transformer.resblocks.{i}."
    wq, wk, wv = np.split(get(p + "attn.in_proj_weight"), 3, axis=0)
    bq, bk, bv = np.split(get(p + "attn.in_proj_bias"), 3, axis=0)
    params[f"layer_{i}"] = {
        "ln_1": ln(p + "ln_1"), "ln_2": ln(p + "ln_2"),
        "q_proj": {"kernel": wq.T, "bias": bq}, "k_proj": {"kernel": wk.T, "bias": bk},
        "v_proj": {"kernel": wv.T, "bias": bv}, "out_proj": dense(p + "attn.out_proj"),
        "fc1": dense(p + "mlp.c_fc"), "fc2": dense(p + "mlp.c_proj")}
  return config, params


def read_state_dict(path) -> dict:
  """A weights file -> {name: numpy array}: .safetensors without torch; .bin/.pt/.pth through torch."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"CLIP weights file {path} not found")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(str(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f"reading {path} needs torch; convert it to .safetensors or install the parity extra "
                      "(`pip install -e .[parity]`)") from None
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception:  # pylint: disable=broad-except  # OpenAI's .pt files are TorchScript archives
    try:
      obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path} is neither a torch state dict nor a TorchScript archive ({e})") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  return {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def _first(directory: pathlib.Path, names) -> pathlib.Path:
  for n in names:
    if (directory / n).is_file():
      return directory / n
  return None


def load_weights(path) -> tuple:
  """`config.vocab.clip_weights` (a directory or a file, see the module docstring) -> (config, params, tokenizer_json)."""
  if not path or not pathlib.Path(path).expanduser().exists():
    raise FileNotFoundError(f"CLIP weights {str(path)!r} not found; set config.vocab.clip_weights to a Hugging Face "
                            "or OpenCLIP CLIP directory (or state-dict file with tokenizer.json beside it); "
                            "nothing is downloaded")
  path = pathlib.Path(path).expanduser()
  directory = path if path.is_dir() else path.parent
  tokenizer_json = directory / "tokenizer.json"
  if not tokenizer_json.is_file():
    raise FileNotFoundError(f"no tokenizer.json in {directory}; copy the CLIP tokenizer.json of the same model there "
                            "(every Hugging Face CLIP repository has one)")
  if path.is_dir():
    oc_weights = _first(path, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    hf_weights = _first(path, ("model.safetensors", "pytorch_model.bin"))
    if (path / "open_clip_config.json").is_file() and oc_weights:
      model_cfg = json.loads((path / "open_clip_config.json").read_text())["model_cfg"]
      text_cfg = model_cfg.get("text_cfg", {})
      config, params = from_openclip_state_dict(
          read_state_dict(oc_weights), heads=text_cfg.get("heads"),
          hidden_act="quick_gelu" if model_cfg.get("quick_gelu") else "gelu")
    elif (path / "config.json").is_file() and hf_weights:
      cfg = json.loads((path / "config.json").read_text())
      cfg = cfg.get("text_config", cfg)
      config, params = from_hf_state_dict(
          read_state_dict(hf_weights), heads=cfg.get("num_attention_heads"),
          hidden_act=cfg.get("hidden_act", "quick_gelu"), eos_token_id=cfg.get("eos_token_id", 2),
          layer_norm_eps=cfg.get("layer_norm_eps", 1e-5))
    else:
      raise FileNotFoundError(f"{path} has neither config.json + model.safetensors/pytorch_model.bin (Hugging Face) nor "
                              "open_clip_config.json + open_clip_model.safetensors/open_clip_pytorch_model.bin (OpenCLIP)")
  else:
    sd = read_state_dict(path)
    convert = from_hf_state_dict if detect_layout(sd) == "hf" else from_openclip_state_dict
    config, params = convert(sd)
  return config, params, tokenizer_json


def weights_id(path) -> str:
  """Identifies user CLIP weights for the embedding cache: resolved path, size and mtime of the files (a single
  weights file and the tokenizer.json beside it that `load_weights` reads)."""
  path = pathlib.Path(path).expanduser().resolve()
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.is_file())
  else:
    files = [path] + [p for p in [path.parent / "tokenizer.json"] if p.is_file()]
  return "clip:" + ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


class CLIPTextEncoder:
  """Texts -> L2-normalised CLIP text embeddings float32 [N, E] (weights and tokenizer loaded once)."""

  def __init__(self, path, batch_size: int = 64):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self.config, params, tokenizer_json = load_weights(path)
    self.params = jax.device_put(params)
    self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length=self.config.context_length)
    self.batch_size = batch_size
    model = CLIPTextTransformer(self.config)

    def embed(p, ids):
      e = model.apply({"params": p}, ids)
      return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    self._embed = jax.jit(embed)

  def tokenize(self, texts) -> np.ndarray:
    """Texts [N] -> int32 [N, T] (start and end-of-text tokens from tokenizer.json, zero padding).

    A text cut at the context length keeps its last token as EOT, like OpenCLIP's tokenizer.
    """
    enc = self.tokenizer.encode_batch(list(texts))
    t = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), t), np.int32)
    for i, e in enumerate(enc):
      ids[i, :len(e.ids)] = e.ids
    return ids

  def __call__(self, texts) -> np.ndarray:
    texts = list(texts)
    if not texts:
      return np.zeros((0, self.config.embed_dim), np.float32)
    ids = self.tokenize(texts)
    out = []
    for i in range(0, len(texts), self.batch_size):
      chunk = ids[i:i + self.batch_size]
      n = chunk.shape[0]
      b = self.batch_size if len(texts) > self.batch_size else -(-n // 8) * 8
      t = min(self.config.context_length, -(-chunk.shape[1] // 16) * 16)
      padded = np.zeros((b, t), np.int32)
      padded[:n, :chunk.shape[1]] = chunk
      out.append(np.asarray(self._embed(self.params, padded))[:n])
    return np.concatenate(out).astype(np.float32)


@functools.lru_cache(maxsize=2)
def clip_encoder(path: str) -> CLIPTextEncoder:
  """The CLIP text encoder of the weights at `path`, built once per process."""
  return CLIPTextEncoder(path)
