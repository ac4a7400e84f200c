"""Predictions and overlays for image files or folders with an exported model (no training code needed).

  python scripts/predict.py --model exported/toy --images DIR_OR_FILE[,DIR_OR_FILE...] --out DIR
      [--vocab names.txt] [--things things.txt] [--clip_weights PATH]

Each image is resized (longer side to the export's size; bilinear without antialiasing, as the input pipeline),
padded, run, and its outputs cropped and resized back (nearest); an image that does not decode is skipped with a
warning. Writes OUT/semantic/<stem>.png (class index into the vocabulary), OUT/panoptic/<stem>.png with
OUT/panoptic.json (COCO panoptic; category_id = class index + 1), OUT/overlays/<stem>.png, and OUT/names.txt.
Progress goes to stderr; the rate and ETA count from the end of the first batch, whose time is mostly compiling.

--vocab swaps in another vocabulary, embedded with the export's text encoder and prompts (needs dataseg_jax.vocab;
names are embedded in the normalised form training uses, e.g. 'building, edifice' as 'building'). An export takes at
most C_max names, its `max_classes` (config.json; `scripts/export.py --max_classes N`, default the size of the
trained vocabulary), so a longer --vocab needs a re-export. --things names its thing classes; without it a --vocab
class is a thing when the exported vocabulary has it as a thing, and a name the export does not know becomes stuff
(one segment per class, no instances), with a warning that lists them. --clip_weights: the CLIP text weights when
the export was trained with encoder 'clip' (default: the path recorded at export).
"""
import os
import sys
import time

from absl import flags
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dataseg_jax import cli  # noqa: E402
from dataseg_jax.vocab import names as names_lib  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")



def image_files(inputs) -> list:
  """Paths of the images named by `inputs`: files as given, folders' image files sorted; FileNotFoundError for a
  path that does not exist or a folder without images."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
      if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {item}")
      paths += found
    elif os.path.isfile(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f"--images {item}: no such file or folder")
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  shared = sorted(p for p, s in zip(paths, stems) if stems.count(s) > 1)
  if shared:
    raise ValueError(f"{shared} share a name, so their outputs (<name>.png) would overwrite each other; rename or "
                     "leave out one of each")
  return paths


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


def swap_vocabulary(model, vocab_path: str, things_path: str = None, clip_weights: str = None) -> list:
  """Embeds the names of `vocab_path` as training does (normalised names, the export's encoder and prompts) and
  swaps them into `model` (a `loader.ExportedModel`); thing classes from `things_path`, else those whose normalised
  name the export calls a thing. Returns the names that became stuff only because the export does not know them
  (none with `things_path`)."""
  from dataseg_jax.vocab import embeddings, vocabulary  # pylint: disable=g-import-not-at-top
  names = names_lib.read_names(vocab_path)  # one class a line; a name twice (after normalising) is an error
  canonical = [vocabulary.normalise_name(n) for n in names]
  known = {vocabulary.normalise_name(n) for n in model.names}
  if things_path:
    things = {vocabulary.normalise_name(n) for n in names_lib.read_names(things_path, allow_empty=True)}
    unknown = sorted(things - set(canonical))
    if unknown:
      raise ValueError(f"{things_path}: {unknown} are not classes of {vocab_path}")
    fallback = []
  else:
    things = {vocabulary.normalise_name(n) for n, t in zip(model.names, model.thing_mask) if t}
    fallback = [n for n, c in zip(names, canonical) if c not in known]
  v = model.config["vocab"]
  clip_weights = clip_weights or v.get("clip_weights") or None
  if v["encoder"] == "clip" and not clip_weights:
    raise ValueError("this export embeds names with CLIP; pass its text weights with --clip_weights")
  emb = embeddings.embed_names(canonical, encoder=v["encoder"], prompts=tuple(v["prompts"]),
                               clip_weights=clip_weights, dim=model.config["embed_dim"])
  model.set_vocabulary(names, np.asarray(emb, np.float32), [n in things for n in canonical])
  return fallback


def predict_images(model, paths: list, out_dir: str, every_s: float = 10.0) -> int:
  """Writes the outputs of every image of `paths` with `model` (a `loader.ExportedModel`) and reports progress on
  stderr every `every_s` seconds (rate and ETA from the end of the first batch); returns the number of images."""
  from dataseg_jax import progress as progress_lib  # pylint: disable=g-import-not-at-top
  from dataseg_jax.evaluation import writers  # pylint: disable=g-import-not-at-top

  if model.config["outputs"] != "postprocessed":
    raise ValueError("this export returns raw outputs; re-export with --outputs postprocessed to predict")
  for sub in ("semantic", "overlays"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  cats = [{"id": k + 1, "name": n, "isthing": int(t)} for k, (n, t) in enumerate(zip(model.names, model.thing_mask))]
  pan = writers.PanopticWriter(os.path.join(out_dir, "panoptic.json"), os.path.join(out_dir, "panoptic"), cats)
  progress = progress_lib.Progress("predict", len(paths), lambda line: print(line, file=sys.stderr, flush=True),
                                   every_s=every_s)
  bs = model.batch_size
  done = 0
  for chunk in _batches(_readable(paths), bs):
    boxed = [letterbox(p, model.image_size) for _, p in chunk]
    batch = np.zeros((bs, model.image_size, model.image_size, 3), np.uint8)
    sizes = np.full((bs, 2), model.image_size, np.int32)
    for j, (img, valid) in enumerate(boxed):
      batch[j], sizes[j] = img, valid
    out = model(batch, sizes)
    for j, (path, pic) in enumerate(chunk):
      stem, size, valid = os.path.splitext(os.path.basename(path))[0], pic.shape[:2], boxed[j][1]
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
    progress.update(done)
  pan.close()
  with open(os.path.join(out_dir, "names.txt"), "w") as fh:
    fh.write("".join(n + "\n" for n in model.names))
  if done < len(paths):
    print(f"{len(paths) - done} of {len(paths)} images could not be read and were skipped", file=sys.stderr)
  return done


def _readable(paths: list):
  """(path, RGB uint8 [H, W, 3]) of each file that decodes; a warning on stderr for each that does not."""
  for path in paths:
    try:
      with Image.open(path) as im:
        yield path, np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
      print(f"skipping {path}: {e}", file=sys.stderr)


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


def run(model_dir: str, images, out_dir: str, vocab: str = None, things: str = None, clip_weights: str = None,
        every_s: float = 10.0) -> int:
  """Loads the export, swaps in `vocab` when given (warning on stderr about names that became stuff because the
  export does not know them), predicts the images of `images` (files and folders); returns the number of images."""
  from dataseg_jax.export import loader  # pylint: disable=g-import-not-at-top  # imports jax

  if things and not vocab:
    raise ValueError("--things names the thing classes of --vocab; pass --vocab too")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out {out_dir} is a file; pass a folder (it is created when missing)")
  paths = image_files(images)
  model = loader.ExportedModel(model_dir)
  if vocab:
    fallback = swap_vocabulary(model, vocab, things, clip_weights)
    if fallback:
      print(f"warning: {vocab}: {fallback} are no class of the export, so they are predicted as stuff (one segment "
            f"per class, no instances); list the thing classes with --things", file=sys.stderr)
  return predict_images(model, paths, out_dir, every_s)


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import the functions without them."""
  flags.DEFINE_string("model", None, "Export directory written by scripts/export.py (--format stablehlo).")
  flags.DEFINE_list("images", None, "Image files and/or folders of images, comma-separated; a folder gives its files "
                    f"ending in {', '.join(IMAGE_EXTS)} (not its subfolders).")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_string("vocab", None, "Names file (one class a line) to swap in; at most the export's C_max names "
                      "(config.json max_classes, set by scripts/export.py --max_classes; default the trained "
                      "vocabulary's size).")
  flags.DEFINE_string("things", None, "Names file of the thing classes of --vocab (default: those the export has as "
                      "things; names the export does not know become stuff, with a warning).")
  flags.DEFINE_string("clip_weights", None, "CLIP text weights for --vocab when the export's encoder is 'clip' "
                      "(default: the path recorded at export).")
  flags.mark_flags_as_required(["model", "images", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  start = time.time()
  try:
    n = run(f.model, f.images, f.out, f.vocab, f.things, f.clip_weights)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote predictions of {n} images to {f.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__, huge_pages=True)
