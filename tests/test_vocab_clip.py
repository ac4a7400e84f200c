"""CLIP text tower port vs PyTorch references on random weights (parity extra; skipped without torch).

References: `transformers.CLIPTextModelWithProjection` for the Hugging Face layout, and a transcription of
OpenCLIP's `TextTransformer` built from `torch.nn.MultiheadAttention` (whose state dict has OpenCLIP's key
names) for the OpenCLIP layout.
"""
import collections
import json

import jax
import numpy as np
import pytest

from dataseg_jax.vocab import clip_text
from dataseg_jax.vocab import embeddings

VOCAB = 40  # tiny word-level vocabulary; the last id is end-of-text, the one before start-of-text
WORDS = ["a", "photo", "of", "the", "{}", ".", "cat", "dog", "traffic", "light", "wall", "sky", "person", "tree"]


def _torch():
  return pytest.importorskip("torch")


def _hf_model(hidden_act: str, eos_token_id: int):
  torch = _torch()
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=16, projection_dim=24,
                                    hidden_act=hidden_act, eos_token_id=eos_token_id, bos_token_id=VOCAB - 2,
                                    pad_token_id=0)
  model = transformers.CLIPTextModelWithProjection(cfg).eval()
  with torch.no_grad():  # random LayerNorm affine parameters too, so the LN converters are exercised
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def _ids(rng, lengths, t=16):
  """Token ids [B, t]: start token, random words, end-of-text (max id) at position length-1, zero padding."""
  ids = np.zeros((len(lengths), t), np.int64)
  for i, n in enumerate(lengths):
    ids[i, 0] = VOCAB - 2
    ids[i, 1:n - 1] = rng.integers(1, VOCAB - 2, n - 2)
    ids[i, n - 1] = VOCAB - 1
  return ids


def _state_dict(model) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _run(config, params, ids):
  return np.asarray(clip_text.CLIPTextTransformer(config).apply({"params": params}, ids.astype(np.int32)))


@pytest.mark.parametrize("hidden_act,eos_token_id", [("quick_gelu", VOCAB - 1), ("gelu", VOCAB - 1), ("quick_gelu", 2)])
def test_clip_port_equals_transformers_clip_text_model(hidden_act, eos_token_id):
  torch = _torch()
  model = _hf_model(hidden_act, eos_token_id)
  ids = _ids(np.random.default_rng(0), [3, 16, 7, 5])
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids)).text_embeds.numpy()
  config, params = clip_text.from_hf_state_dict(_state_dict(model), heads=4, hidden_act=hidden_act,
                                                eos_token_id=eos_token_id)
  assert (config.width, config.layers, config.mlp_dim, config.embed_dim) == (32, 2, 48, 24)
  np.testing.assert_allclose(_run(config, params, ids), ref, atol=1e-5, rtol=1e-5)


def _openclip_reference(hidden_act: str):
  """OpenCLIP's TextTransformer (open_clip/transformer.py) transcribed with torch.nn modules."""
  torch = _torch()
  nn = torch.nn

  class QuickGELU(nn.Module):

    def forward(self, x):
      return x * torch.sigmoid(1.702 * x)

  class Block(nn.Module):

    def __init__(self, width, heads):
      super().__init__()
      self.ln_1 = nn.LayerNorm(width)
      self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
      self.ln_2 = nn.LayerNorm(width)
      self.mlp = nn.Sequential(collections.OrderedDict([
          ("c_fc", nn.Linear(width, 4 * width)),
          ("gelu", QuickGELU() if hidden_act == "quick_gelu" else nn.GELU()),
          ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x, attn_mask):
      h = self.ln_1(x)
      x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
      return x + self.mlp(self.ln_2(x))

  class Transformer(nn.Module):

    def __init__(self, width, layers, heads):
      super().__init__()
      self.resblocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])

  class TextTransformer(nn.Module):

    def __init__(self, context_length=16, vocab_size=VOCAB, width=32, heads=4, layers=2, output_dim=24):
      super().__init__()
      self.token_embedding = nn.Embedding(vocab_size, width)
      self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
      self.transformer = Transformer(width, layers, heads)
      self.ln_final = nn.LayerNorm(width)
      self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, output_dim))
      mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
      self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, text):
      t = text.shape[1]
      x = self.token_embedding(text) + self.positional_embedding[:t]
      for block in self.transformer.resblocks:
        x = block(x, self.attn_mask[:t, :t])
      x = self.ln_final(x)
      return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

  torch.manual_seed(1)
  model = TextTransformer().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "ln" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_port_equals_openclip_text_transformer(hidden_act):
  torch = _torch()
  model = _openclip_reference(hidden_act)
  ids = _ids(np.random.default_rng(1), [16, 4, 9])
  with torch.no_grad():
    ref = model(torch.from_numpy(ids)).numpy()
  sd = {"text." + k if k.startswith("transformer") else k: v for k, v in _state_dict(model).items()}
  sd["visual.conv1.weight"] = np.zeros((2, 3, 1, 1), np.float32)  # a full CLIP checkpoint also has a vision tower
  config, params = clip_text.from_openclip_state_dict(sd, heads=4, hidden_act=hidden_act)
  assert clip_text.detect_layout(sd) == "openclip"
  np.testing.assert_allclose(_run(config, params, ids), ref, atol=1e-5, rtol=1e-5)


def _write_tokenizer(path):
  """A word-level tokenizer.json that adds start/end-of-text like CLIP's, so directories load end to end."""
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}, "<bos>": VOCAB - 2, "<eos>": VOCAB - 1}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = tokenizers.normalizers.Lowercase()
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<bos> $A <eos>", special_tokens=[("<bos>", VOCAB - 2), ("<eos>", VOCAB - 1)])
  tok.save(str(path / "tokenizer.json"))
  return tok


def _normalised(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_clip_encoder_loads_hf_and_openclip_directories(tmp_path):
  torch = _torch()
  from safetensors.numpy import save_file
  texts = ["a photo of a cat.", "Traffic light", "a photo of the " + "tree " * 30]  # the last one is truncated
  hf_dir, oc_dir = tmp_path / "hf", tmp_path / "openclip"
  hf_dir.mkdir()
  oc_dir.mkdir()
  tok = _write_tokenizer(hf_dir)
  _write_tokenizer(oc_dir)

  hf = _hf_model("quick_gelu", VOCAB - 1)
  hf.save_pretrained(str(hf_dir))
  oc = _openclip_reference("gelu")
  save_file(_state_dict(oc), str(oc_dir / "open_clip_model.safetensors"))
  (oc_dir / "open_clip_config.json").write_text(json.dumps(
      {"model_cfg": {"embed_dim": 24, "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 32,
                                                    "heads": 4, "layers": 2}}}))

  tok.enable_truncation(max_length=16)
  enc = [e.ids for e in tok.encode_batch(texts)]
  assert enc[2][-1] == VOCAB - 1 and len(enc[2]) == 16
  ids = np.zeros((len(texts), 16), np.int64)
  for i, e in enumerate(enc):
    ids[i, :len(e)] = e
  with torch.no_grad():
    ref_hf = hf(input_ids=torch.from_numpy(ids)).text_embeds.numpy()
    ref_oc = oc(torch.from_numpy(ids)).numpy()
  np.testing.assert_allclose(clip_text.CLIPTextEncoder(hf_dir)(texts), _normalised(ref_hf), atol=1e-5)
  np.testing.assert_allclose(clip_text.CLIPTextEncoder(oc_dir)(texts), _normalised(ref_oc), atol=1e-5)
  got = embeddings.embed_names(["cat", "dog"], encoder="clip", prompts=("a photo of a {}.", "{}"), clip_weights=hf_dir,
                               cache_dir=tmp_path / "cache")
  enc = clip_text.CLIPTextEncoder(hf_dir)(["a photo of a cat.", "a photo of a dog.", "cat", "dog"]).reshape(2, 2, -1)
  np.testing.assert_allclose(got, _normalised(enc.sum(0)), atol=1e-6)
  assert len(list((tmp_path / "cache").glob("clip-2-*.npz"))) == 1
  single = tmp_path / "single"
  single.mkdir()
  _write_tokenizer(single)
  save_file(_state_dict(oc), str(single / "weights.safetensors"))
  config, params, _ = clip_text.load_weights(single / "weights.safetensors")
  assert (config.heads, config.hidden_act, config.eos_token_id) == (1, "quick_gelu", None)  # width 32 // 64 -> 1
  torch.save({"state_dict": {"module." + k: v for k, v in oc.state_dict().items()}}, single / "weights.bin")
  _, from_torch, _ = clip_text.load_weights(single / "weights.bin")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(from_torch)):
    np.testing.assert_array_equal(a, b)


def test_clip_weights_errors_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.vocab.clip_weights"):
    clip_text.load_weights("")
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    clip_text.load_weights(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    clip_text.load_weights(tmp_path)
  _write_tokenizer(tmp_path)
  with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
    clip_text.load_weights(tmp_path)
  with pytest.raises(ValueError, match="cannot tell the CLIP layout"):
    clip_text.detect_layout({"encoder.layer.0.weight": np.zeros(1)})
