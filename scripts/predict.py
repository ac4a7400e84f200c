"""Predictions and overlays for a folder of images with an exported model (no training code needed).

  python scripts/predict.py --model exported/toy --images DIR --out DIR [--vocab names.txt] [--things things.txt]
      [--clip_weights PATH]

Each image is resized (longer side to the export's size; bilinear without antialiasing, as the input pipeline),
padded, run, and its outputs cropped and resized back (nearest); an image that does not decode is skipped with a
warning. Writes OUT/semantic/<stem>.png (class index into the vocabulary), OUT/panoptic/<stem>.png with
OUT/panoptic.json (COCO panoptic; category_id = class index + 1), OUT/overlays/<stem>.png, and OUT/names.txt. --vocab swaps in another vocabulary, embedded with the export's text encoder and prompts
(needs dataseg_jax.vocab; names are embedded in the normalised form training uses, e.g. 'building, edifice' as
'building'); --things names its thing classes (default: the --vocab classes whose normalised name is a thing class
of the exported vocabulary); --clip_weights the CLIP text weights when the export was trained with encoder 'clip'
(default: the path recorded at export).
"""
import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dataseg_jax import hardware  # noqa: E402
from dataseg_jax.evaluation import writers  # noqa: E402
from dataseg_jax.export import loader  # noqa: E402
from dataseg_jax.vocab import names as names_lib  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def progress(i: int, n: int, start: float) -> None:
  """One-line progress bar on stderr: count, bar, images/s, ETA."""
  done = int(30 * i / max(n, 1))
  rate = i / max(time.time() - start, 1e-9)
  eta = (n - i) / rate if rate > 0 else 0.0
  sys.stderr.write(f"\r{i}/{n} [{'#' * done}{'.' * (30 - done)}] {rate:.2f} img/s, ETA {eta:.0f}s")
  if i == n:
    sys.stderr.write("\n")
  sys.stderr.flush()


def letterbox(image: np.ndarray, size: int) -> tuple:
  """Resize the longer side to `size` and pad bottom/right with zeros -> ([S, S, 3], (h', w')); bilinear with
  half-pixel centres and no antialiasing, rounded, as the input pipeline's `tf.image.resize` (augment._resize)."""
  import jax  # pylint: disable=g-import-not-at-top

  h, w = image.shape[:2]
  scale = size / max(h, w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  resized = jax.image.resize(image.astype(np.float32), (nh, nw, 3), "bilinear", antialias=False)
  resized = np.clip(np.round(np.asarray(resized)), 0, 255).astype(np.uint8)
  out = np.zeros((size, size, 3), np.uint8)
  out[:nh, :nw] = resized
  return out, (nh, nw)


def restore_size(label: np.ndarray, valid: tuple, size: tuple) -> np.ndarray:
  """Crop [S, S] to the valid (h', w') and resize to `size` (nearest)."""
  crop = label[:valid[0], :valid[1]]
  return np.asarray(Image.fromarray(crop.astype(np.int32)).resize((size[1], size[0]), Image.NEAREST)).astype(np.int64)


def swap_vocabulary(model: loader.ExportedModel, vocab_path: str, things_path: str = None,
                    clip_weights: str = None) -> None:
  """Embeds the names of `vocab_path` as training does (normalised names, the export's encoder and prompts) and
  swaps them in; thing classes from `things_path`, else those whose normalised name the export calls a thing."""
  from dataseg_jax.vocab import embeddings, vocabulary  # pylint: disable=g-import-not-at-top
  names = names_lib.read_names(vocab_path)  # one class a line; a name twice (after normalising) is an error
  canonical = [vocabulary.normalise_name(n) for n in names]
  if things_path:
    things = {vocabulary.normalise_name(n) for n in names_lib.read_names(things_path, allow_empty=True)}
    unknown = sorted(things - set(canonical))
    if unknown:
      raise ValueError(f"{things_path}: {unknown} are not classes of {vocab_path}")
  else:
    things = {vocabulary.normalise_name(n) for n, t in zip(model.names, model.thing_mask) if t}
  v = model.config["vocab"]
  clip_weights = clip_weights or v.get("clip_weights") or None
  if v["encoder"] == "clip" and not clip_weights:
    raise ValueError("this export embeds names with CLIP; pass its text weights with --clip_weights")
  emb = embeddings.embed_names(canonical, encoder=v["encoder"], prompts=tuple(v["prompts"]),
                               clip_weights=clip_weights, dim=model.config["embed_dim"])
  model.set_vocabulary(names, np.asarray(emb, np.float32), [n in things for n in canonical])


def predict_folder(model: loader.ExportedModel, images_dir: str, out_dir: str) -> int:
  """Writes the outputs of every image of `images_dir`; returns the number of images."""
  if model.config["outputs"] != "postprocessed":
    raise ValueError("this export returns raw outputs; re-export with --outputs postprocessed to predict")
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"--images {images_dir}: not a folder")
  files = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTS))
  if not files:
    raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {images_dir}")
  stems = [os.path.splitext(f)[0] for f in files]
  shared = sorted(f for f, s in zip(files, stems) if stems.count(s) > 1)
  if shared:
    raise ValueError(f"{images_dir}: {shared} share a name, so their outputs (<name>.png) would overwrite each "
                     "other; rename or move one of each")
  for sub in ("semantic", "overlays"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  cats = [{"id": k + 1, "name": n, "isthing": int(t)} for k, (n, t) in enumerate(zip(model.names, model.thing_mask))]
  pan = writers.PanopticWriter(os.path.join(out_dir, "panoptic.json"), os.path.join(out_dir, "panoptic"), cats)
  start = time.time()
  bs = model.batch_size
  done = 0
  for chunk in _batches(_readable(images_dir, files), bs):
    boxed = [letterbox(p, model.image_size) for _, p in chunk]
    batch = np.zeros((bs, model.image_size, model.image_size, 3), np.uint8)
    sizes = np.full((bs, 2), model.image_size, np.int32)
    for j, (img, valid) in enumerate(boxed):
      batch[j], sizes[j] = img, valid
    out = model(batch, sizes)
    for j, (f, pic) in enumerate(chunk):
      stem, size, valid = os.path.splitext(f)[0], pic.shape[:2], boxed[j][1]
      sem = restore_size(out["semantic"][j], valid, size)
      writers.write_semantic_png(os.path.join(out_dir, "semantic", stem + ".png"), sem)
      ids = restore_size(out["panoptic_seg"][j], valid, size)
      present = set(np.unique(ids).tolist())
      opened = np.nonzero(out["segment_id"][j] > 0)[0]
      segs = [{"id": int(out["segment_id"][j][q]), "category_id": int(out["segment_class"][j][q]) + 1,
               "isthing": int(out["segment_is_thing"][j][q]), "score": float(out["segment_score"][j][q])}
              for q in opened if int(out["segment_id"][j][q]) in present]
      pan.add(done, stem + ".png", ids, segs)
      done += 1
      classes = {s["id"]: s["category_id"] - 1 for s in segs}
      writers.overlay(pic, ids, classes, model.names).save(os.path.join(out_dir, "overlays", stem + ".png"))
    progress(done, len(files), start)
  pan.close()
  with open(os.path.join(out_dir, "names.txt"), "w") as fh:
    fh.write("".join(n + "\n" for n in model.names))
  if done < len(files):
    sys.stderr.write(f"\n{len(files) - done} of {len(files)} images could not be read and were skipped\n")
  return done


def _readable(images_dir: str, files: list):
  """(file name, RGB uint8 [H, W, 3]) of each file that decodes; a warning on stderr for each that does not."""
  for f in files:
    try:
      with Image.open(os.path.join(images_dir, f)) as im:
        yield f, np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
      sys.stderr.write(f"\nskipping {f}: {e}\n")


def _batches(items, size: int):
  """Lists of up to `size` consecutive items."""
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="export directory written by scripts/export.py")
  p.add_argument("--images", required=True, help="folder of images")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--vocab", help="names file (one class a line) to swap in")
  p.add_argument("--things", help="names file of the thing classes of --vocab")
  p.add_argument("--clip_weights", help="CLIP text weights for --vocab when the export's encoder is 'clip'")
  args = p.parse_args(argv)
  if args.things and not args.vocab:
    p.error("--things names the thing classes of --vocab; pass --vocab too")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise ValueError(f"--out {args.out} is a file; pass a folder (it is created when missing)")
  model = loader.ExportedModel(args.model)
  if args.vocab:
    swap_vocabulary(model, args.vocab, args.things, args.clip_weights)
  return predict_folder(model, args.images, args.out)


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  try:
    n = main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote predictions of {n} images")
