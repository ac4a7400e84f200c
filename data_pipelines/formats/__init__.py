"""Dataset formats: one module per on-disk format; `get(name)` is the only way the rest of the code reaches one.

A dataset entry's `format` (`config.data.datasets.<name>.format`) names a module of this package; nothing outside it
compares format names. The modules are found by listing this folder (sorted by name), not registered by side effect,
so adding a format is one new file here (plus its test): see docs/datasets.md, "Adding a format". Each module
defines (`REQUIRED`, checked when the package loads):

  NAME                        the entry's `format` value: the module's own name
  LAYOUT                      the files it expects, quoted in every missing-file error ("Expected the <LAYOUT>.")
  TRAIN_TASKS                 the tasks an entry of this format can train (`entry.task`)
  EVAL_TASKS                  the tasks its val split can be evaluated on (`entry.eval_tasks`)
  INSTANCE_GT_IN_ANNOTATIONS  whether 'instance' evaluation reads the val annotations themselves (else it needs
                              `val_instances`)
  VAL_PANOPTIC_ANNOTATIONS    whether an entry may set `val_panoptic_annotations` (panoptic ground truth of a
                              semantic-only dataset)
  TFDS_LABEL_CHANNELS         channels of the per-image label PNG stored in prepared TFDS data (0: none; then only
                              the boxes are stored and the entry trains from TFDS with task 'box' only)
  SEGMENTS_ARE_CLASSES        whether a decoded example's segments are the names file's classes (a label map), so a
                              'semantic' task needs no merging per class and check_dataset counts classes per pixel
  dataset_vocab(entry) -> vocabulary.DatasetVocab: names in label order and thing flags of a resolved entry
  read_index(entry, name, split, vocab, bad) -> readers.Index: the split's files indexed, with the path rules of
      `data_pipelines.paths` and bad input reported to `bad` (`readers.BadInput`)
  decode(index, row, image, r, reduce_zero_label, masks) -> dict(image, idmap [h, w] int32 segment row (-1 void) or
      None, seg_class [M] local, seg_crowd [M], boxes [M, 4] pixel x0 y0 x1 y1, has_mask): image row `r` in tf.data,
      given its `pipeline.Tables.fetch` row and decoded `image` (`masks` False: task 'box', keep only boxes);
      failures are `tf.debugging.Assert`s whose message ends with the file
  val_task(entry) -> str: the task whose targets the val stream decodes
  ground_truth(entry, index, vocab, instance_gt) -> the evaluation ground truth of the val split: `category_ids`
      (per local class, the id written to prediction files), `categories` (panoptic categories), `semantic_offset`
      (added to classes written as semantic PNGs), `listed_image_ids()` (ids its JSON annotates, or None), and, for
      the tasks of EVAL_TASKS that it scores itself, `semantic(row, image_id)` -> local class ids [H, W]
      (`readers.IGNORE` void) and `panoptic(row, image_id)` -> (segment ids [H, W], segments_info); 'instance' is
      scored by COCOeval against `instance_gt` (the evaluator's pycocotools COCO of `val_instances` or the val
      annotations)
  check_example(index, r, ex) -> (class names to count, problems [(severity, reason, message)]): the format's own
      rules in scripts/check_dataset.py for decoded example `ex` of row `r`
"""
import importlib
import pkgutil

REQUIRED = ("NAME", "LAYOUT", "TRAIN_TASKS", "EVAL_TASKS", "INSTANCE_GT_IN_ANNOTATIONS", "VAL_PANOPTIC_ANNOTATIONS",
            "TFDS_LABEL_CHANNELS", "SEGMENTS_ARE_CLASSES", "dataset_vocab", "read_index", "decode", "val_task",
            "ground_truth", "check_example")


def _load() -> dict:
  """{name: module} of every module in this folder, each checked to define `REQUIRED` and to be named `NAME`."""
  found = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    module = importlib.import_module(f"{__name__}.{info.name}")
    missing = [k for k in REQUIRED if not hasattr(module, k)]
    if missing:
      raise ImportError(f"{module.__file__}: a format module must define {missing} (see {__file__})")
    if module.NAME != info.name:
      raise ImportError(f"{module.__file__}: NAME is {module.NAME!r}; a format module is named after its format")
    found[module.NAME] = module
  return found


_MODULES = _load()
NAMES = tuple(_MODULES)


def get(name: str, where: str = "format"):
  """The module of format `name`; ValueError at `where` (e.g. 'config.data.datasets.ade.format') listing the known
  formats."""
  if name not in _MODULES:
    raise ValueError(f"{where}: {name!r} is not one of {NAMES}")
  return _MODULES[name]


def modules() -> tuple:
  """Every format module, in the order of `NAMES`."""
  return tuple(_MODULES.values())
