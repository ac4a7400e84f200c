"""Default configuration shared by every file in `configs/`, and its validation.

A config file in `configs/` is a big_vision-style `get_config(arg=None)` that starts from
`base_config()` and overrides what it needs. `validate(config)` runs at start (train, eval, bench)
and fails with a message that names the offending key instead of failing deep inside a trace.
Values marked [paper] come from DaTaSeg (Gu et al., NeurIPS 2023); [default] from Mask2Former / BoxInst, where
DaTaSeg leaves a value to them; [ours] are this codebase's choices; untagged values are settings (sizes, intervals,
paths).
"""
import math

import ml_collections

from data_pipelines import formats
from dataseg_jax import contract

BACKBONES = ("resnet", "vit")
SCHEDULES = ("poly", "cosine", "constant")  # config.optimizer.schedule (train/optimizer.py)
PARAM_SHARDINGS = ("replicate", "fsdp", "logical")  # config.mesh.param_sharding (sharding.py)
MERGE_MODES = ("hard", "soft")               # config.loss.merge (losses/merge.py)
MERGE_MASKS = ("noisy_or", "max", "clip")    # config.loss.merge_mask (losses/merge.py)
SAMPLINGS = ("points", "dense")              # config.loss.sampling (losses/criterion.py)
BAD_INPUT_POLICIES = ("error", "skip")       # config.data.on_bad_example, config.eval.on_bad_example
EVAL_METRICS = {  # the '<dataset>/<task>/<metric>' values evaluation/evaluator.py reports, by task
    "semantic": ("mIoU", "fwIoU", "mAcc", "pixel_acc", "mIoU_unseen", "mIoU_unseen_chance"),  # and IoU/<class>
    "panoptic": ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"),
    "instance": tuple(p + k for p in ("", "box_") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
}


def base_config() -> ml_collections.ConfigDict:
  """The R50 recipe at 512x512; configs override sizes, datasets and schedule."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 90_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # the latest N checkpoints are kept
  c.best_checkpoint_metric = ""  # e.g. 'ade/semantic/mIoU': also keep the evaluated checkpoint that scored best
  c.best_checkpoint_mode = "max"  # 'max' or 'min': which end of best_checkpoint_metric is best
  c.eval_every_steps = 0  # 0: evaluate only at the end.
  c.profile_at_step = 0   # > 0: a profiler trace (TensorBoard) of a few steps from this one, in the workdir
  c.data_dir = ""  # root that relative dataset paths are joined to
  c.compilation_cache_dir = "~/.cache/dataseg_jax/jax"  # persistent XLA cache: a restart skips compiling; '' = off

  # ---------------------------------------------------------------- model
  c.model = m = ml_collections.ConfigDict()
  m.backbone = ml_collections.ConfigDict()
  m.backbone.name = "resnet"          # one of BACKBONES
  m.backbone.depth = 50               # resnet: 18, 34, 50, 101 or a tiny test size
  m.backbone.width = 64               # resnet stem width (64 for torchvision layouts)
  m.backbone.patch_size = 16          # vit
  m.backbone.hidden_dim = 768         # vit
  m.backbone.num_layers = 12          # vit
  m.backbone.num_heads = 12           # vit
  m.backbone.mlp_dim = 3072           # vit
  m.backbone.window_size = 14         # vit: windowed attention
  m.backbone.global_blocks = (2, 5, 8, 11)  # vit: blocks with global attention
  m.backbone.rel_pos = False          # vit: decomposed relative position bias
  m.backbone.remat = False            # rematerialise each backbone block
  m.backbone.init_from = ""           # .npz from scripts/convert_weights.py ('' = random init)
  m.init_from = ""                    # whole-model .npz (convert_weights.py --from hf_mask2former or --from dataseg):
                                      # the top-level parts it holds; the rest at init; backbone.init_from wins
  m.hidden_dim = 256                  # pixel + transformer decoder width [default]
  m.num_queries = 100                 # [default] 200 for large backbones
  m.pixel_decoder = ml_collections.ConfigDict()
  m.pixel_decoder.num_layers = 6      # [default] MSDeformAttn encoder layers
  m.pixel_decoder.num_heads = 8
  m.pixel_decoder.num_points = 4
  m.pixel_decoder.ffn_dim = 1024
  m.decoder = ml_collections.ConfigDict()
  m.decoder.num_layers = 9            # [default] 3 rounds over 3 scales
  m.decoder.num_heads = 8
  m.decoder.ffn_dim = 2048
  m.mask_dim = 256
  m.embed_dim = 384                   # text-embedding width (384 MiniLM, 768 CLIP ViT-L/14)
  m.temperature = 0.01                # [default] initial cosine-logit temperature (learned)
  m.inference_temperature = 0.0       # [not in paper] > 0: the temperature outside training (0: the learned one)
  m.classifier = "text"               # [paper] frozen text embeddings; 'learned': ablation, a learned table
  m.dtype = "bfloat16"                # activation dtype; params stay float32

  # ---------------------------------------------------------------- losses
  c.loss = l = ml_collections.ConfigDict()
  l.class_weight = 2.0                # [default: Mask2Former]
  l.no_object_weight = 0.1
  l.mask_weight = 5.0                 # sigmoid BCE
  l.dice_weight = 5.0
  l.projection_weight = 5.0           # box-only [default: BoxInst]
  l.sampling = "points"               # 'points' [default: Mask2Former] or 'dense' [ours: every cell, matmuls]
  l.dense_stride = 1                  # 'dense': average-pool the mask grid by 1, 2, 4 or 8 (the loss grid)
  l.num_points = 12544                # 'points': 112 x 112 importance-sampled points
  l.oversample_ratio = 3.0
  l.importance_sample_ratio = 0.75
  l.deep_supervision = True
  l.row_block = 16                    # [not in paper] target rows per skippable block (mask cost; point-sampled terms)
  l.merge = "hard"                    # 'hard' (groups by argmax class) or 'soft' (ablation: weights p_i(c) for all i)
  l.merge_mask = "noisy_or"           # [ours, docs/results.md A/B] merged mask: 'noisy_or', 'max' or 'clip' (merge.py)
  l.merge_background = False          # [ours] True: a proposal whose argmax is background joins its class's group
  l.match_leftover = True             # [ours] segments left over by MERGE are matched to single proposals
  l.merge_stats_stride = 4            # the MERGE instrument counts every k-th row and column of the mask grid
  c.matcher = mt = ml_collections.ConfigDict()
  mt.class_cost = 2.0
  mt.mask_cost = 5.0
  mt.dice_cost = 5.0
  mt.projection_cost = 5.0
  mt.num_points = 12544

  # ---------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  d.image_size = 512                  # square crop / pad size for training
  d.eval_size = 512
  d.label_stride = 1
  d.max_segments = 100                # N; must be <= num_queries
  d.batch_size = 16                   # global
  d.eval_batch_size = 8
  d.mixture_mode = "per_batch"        # [paper] one dataset per step; or 'per_example'
  d.min_scale = 0.1                   # large-scale jitter [default]
  d.max_scale = 2.0
  d.prefetch = 2
  d.on_bad_example = "skip"           # training: 'skip' (counted, logged, listed in WORKDIR/skipped.tsv) or 'error'
  d.datasets = ml_collections.ConfigDict()  # name -> entry, see data_pipelines.registry

  # ---------------------------------------------------------------- vocabulary
  c.vocab = v = ml_collections.ConfigDict()
  v.encoder = "minilm"                # 'minilm' (offline default) or 'clip' (user weights)
  v.clip_weights = ""
  v.prompts = ("a photo of a {}.", "a photo of the {}.", "{}")
  v.cache_dir = ""                    # '' -> WORKDIR/vocab_cache

  # ---------------------------------------------------------------- optimiser
  c.optimizer = o = ml_collections.ConfigDict()
  o.learning_rate = 1e-4              # [default: Mask2Former] AdamW
  o.weight_decay = 0.05
  o.backbone_multiplier = 0.1
  o.warmup_steps = 1000               # [ours] linear warm-up (Mask2Former's warm-up factor is 1: none)
  o.schedule = "poly"                 # 'poly' (power 0.9), 'cosine' or 'constant'
  o.clip_norm = 0.01                  # Mask2Former's full-model clip value
  o.ema_decay = 0.0                   # 0 disables EMA
  o.max_nonfinite_steps = 10          # stop after this many non-finite updates in a row

  # ---------------------------------------------------------------- evaluation
  c.eval = e = ml_collections.ConfigDict()
  e.object_mask_threshold = 0.8       # [default: Mask2Former] panoptic
  e.overlap_threshold = 0.8
  e.instance_topk = 100
  e.num_overlays = 4
  e.max_examples = 0                  # 0: the whole split
  e.on_bad_example = "error"          # a val image or label that does not decode: 'error' (names the file) or
                                      # 'skip' (counted, reported; its ground truth is scored as missed)

  # ---------------------------------------------------------------- sharding
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)              # ('data', 'model'); -1 takes the remaining devices
  c.mesh.param_sharding = "replicate"  # or 'fsdp' (the largest axis over 'data'), or 'logical' (the params'
                                       # logical axis names: tensor parallel over 'model', FSDP over 'data')
  c.distributed = False               # call jax.distributed.initialize() at start
  return c


def dataset_entry(**kw) -> ml_collections.ConfigDict:
  """One entry of `config.data.datasets`; relative paths are joined to `config.data_dir`."""
  e = ml_collections.ConfigDict()
  e.format = ""             # a module of data_pipelines/formats/: semantic_png, coco_panoptic, coco_detection, ...
  e.task = ""               # semantic | panoptic | instance | box
  e.train_images = ""
  e.train_annotations = ""  # PNG dir (semantic_png) or JSON file (coco_*)
  e.train_panoptic_dir = ""  # coco_panoptic PNG dir
  e.val_images = ""
  e.val_annotations = ""
  e.val_panoptic_dir = ""
  e.val_instances = ""      # COCO instances JSON with masks for weak-transfer instance eval
  e.val_panoptic_annotations = ""  # semantic_png: COCO panoptic JSON of the val images (PNGs in val_panoptic_dir)
  e.names = ""              # names file; '' -> from the annotation JSON
  e.thing_classes = ""      # names file of thing classes where the format cannot say
  e.reduce_zero_label = False  # semantic_png: label 0 is void, k -> class k-1
  e.ratio = 1.0
  e.image_size = 0          # 0 -> data.image_size
  e.eval_tasks = ()         # tasks evaluated on the val split
  e.tfds_dir = ""           # '' -> native files; else the --out of scripts/prepare_tfds.py
  e.update(kw)
  return e


def paper_datasets() -> ml_collections.ConfigDict:
  """The paper's three training sets, with paths relative to `config.data_dir`.

  ADE's panoptic PQ (weak transfer [paper]) is scored against ground truth derived from the semantic labels
  (one segment per stuff class and per connected component of a thing class), which merges touching instances
  of a class: not the ADE20K panoptic benchmark the paper reports. For that, add
  `val_panoptic_annotations="ADEChallengeData2016/ade20k_panoptic_val.json"` and
  `val_panoptic_dir="ADEChallengeData2016/ade20k_panoptic_val"` (Mask2Former's `prepare_ade20k_pan_seg.py`).
  """
  ds = ml_collections.ConfigDict()
  ds.ade = dataset_entry(
      format="semantic_png", task="semantic",
      train_images="ADEChallengeData2016/images/training",
      train_annotations="ADEChallengeData2016/annotations/training",
      val_images="ADEChallengeData2016/images/validation",
      val_annotations="ADEChallengeData2016/annotations/validation",
      names="", reduce_zero_label=True, ratio=1.0, image_size=512,
      eval_tasks=("semantic", "panoptic"))
  ds.coco = dataset_entry(
      format="coco_panoptic", task="panoptic",
      train_images="coco/train2017",
      train_annotations="coco/annotations/panoptic_train2017.json",
      train_panoptic_dir="coco/annotations/panoptic_train2017",
      val_images="coco/val2017",
      val_annotations="coco/annotations/panoptic_val2017.json",
      val_panoptic_dir="coco/annotations/panoptic_val2017",
      ratio=2.0, eval_tasks=("panoptic",))
  ds.o365 = dataset_entry(
      format="coco_detection", task="box",
      train_images="objects365/train",
      train_annotations="objects365/zhiyuan_objv2_train.json",
      val_images="objects365/val",
      val_annotations="objects365/zhiyuan_objv2_val.json",
      val_instances="objects365/instance_masks_1k.json",
      ratio=2.0, eval_tasks=("instance",))
  return ds


def paper_recipe(arg, config_path: str) -> ml_collections.ConfigDict:
  """The paper's R50 three-dataset recipe; `arg` names one dataset for a single-dataset baseline."""
  c = base_config()
  c.total_steps = 90_000
  c.data.image_size = 1024
  c.data.eval_size = 1024
  c.data.max_segments = 100
  c.data.batch_size = 16
  c.data.datasets = paper_datasets()
  if arg:
    c.data.datasets = select_dataset(c.data.datasets, arg, config_path)
  return c


def select_dataset(datasets: ml_collections.ConfigDict, name: str, config_path: str) -> ml_collections.ConfigDict:
  """Keeps only entry `name`, or the entries of `name`='a+b+...' in config order (a single-dataset baseline, or a
  subset of the mixture), with an error listing the valid names."""
  names = name.split("+")
  unknown = [n for n in names if n not in datasets]
  if unknown:
    raise ValueError(f"{config_path}:{name}: unknown dataset {unknown[0]!r}; expected one of {list(datasets)}, or "
                     "several joined by '+'")
  return ml_collections.ConfigDict({n: datasets[n] for n in datasets if n in names})


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# (key, predicate, what the value must be): the retention, schedule and size keys `validate` checks, each once.
_BOUNDS = (
    ("total_steps", lambda v: v >= 1, ">= 1"),
    ("log_every_steps", lambda v: v >= 1, ">= 1"),
    ("checkpoint_every_steps", lambda v: v >= 1, ">= 1"),
    ("keep_checkpoints", lambda v: v >= 1, ">= 1 (the latest N checkpoints are kept; 0 would delete every one)"),
    ("profile_at_step", lambda v: v >= 0, ">= 0 (0: no profile)"),
    ("model.num_queries", lambda v: v >= 1, ">= 1"),
    ("model.embed_dim", lambda v: v >= 1, ">= 1"),
    ("data.image_size", lambda v: v >= 32 and v % 32 == 0, "a positive multiple of 32 (the coarsest feature stride)"),
    ("data.eval_size", lambda v: v >= 32 and v % 32 == 0, "a positive multiple of 32 (the coarsest feature stride)"),
    ("data.label_stride", lambda v: v >= 1, ">= 1"),
    ("data.max_segments", lambda v: v >= 1, ">= 1"),
    ("data.batch_size", lambda v: v >= 1, ">= 1 (the global batch, split over the 'data' devices)"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1 (split over the 'data' devices)"),
    ("data.min_scale", lambda v: v > 0, "> 0"),
    ("data.prefetch", lambda v: v >= 0, ">= 0"),
    ("optimizer.learning_rate", lambda v: v > 0, "a finite number > 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer.backbone_multiplier", lambda v: v >= 0, ">= 0 (0 freezes the backbone)"),
    ("optimizer.warmup_steps", lambda v: v >= 0, ">= 0 (0: no warm-up)"),
    ("optimizer.clip_norm", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("optimizer.ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)"),
    ("optimizer.max_nonfinite_steps", lambda v: v >= 1, ">= 1"),
    ("loss.num_points", lambda v: v >= 1, ">= 1"),
    ("loss.row_block", lambda v: v >= 1, ">= 1"),
    ("loss.merge_stats_stride", lambda v: v >= 1, ">= 1"),
    ("loss.oversample_ratio", lambda v: v >= 1, ">= 1 (candidates per sampled point)"),
    ("loss.importance_sample_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("matcher.num_points", lambda v: v >= 1, ">= 1"),
    ("eval.object_mask_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("eval.overlap_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("eval.instance_topk", lambda v: v >= 1, ">= 1"),
    ("eval.num_overlays", lambda v: v >= 0, ">= 0"),
    ("eval.max_examples", lambda v: v >= 0, ">= 0 (0: the whole split)"),
) + tuple((f"loss.{k}", lambda v: v >= 0, ">= 0") for k in (
    "class_weight", "no_object_weight", "mask_weight", "dice_weight", "projection_weight"))
# (key, allowed values)
_CHOICES = (
    ("model.backbone.name", BACKBONES),
    ("model.classifier", ("text", "learned")),
    ("model.dtype", ("float32", "bfloat16")),
    ("data.mixture_mode", ("per_batch", "per_example")),
    ("data.on_bad_example", BAD_INPUT_POLICIES),
    ("eval.on_bad_example", BAD_INPUT_POLICIES),
    ("loss.merge", MERGE_MODES),
    ("loss.merge_mask", MERGE_MASKS),
    ("loss.sampling", SAMPLINGS),
    ("loss.dense_stride", (1, 2, 4, 8)),
    ("optimizer.schedule", SCHEDULES),
    ("mesh.param_sharding", PARAM_SHARDINGS),
)


def _value(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key, what it must be and the value given; called at the start of every
  script."""
  m, d = config.model, config.data

  def fail(key, msg):
    raise ValueError(f"config.{key}: {msg}")

  for key, allowed in _CHOICES:
    if _value(config, key) not in allowed:
      fail(key, f"must be one of {allowed}, got {_value(config, key)!r}")
  for key, ok, requirement in _BOUNDS:
    value = _value(config, key)
    if not _finite(value) or not ok(value):
      fail(key, f"must be {requirement}, got {value!r}; e.g. --config.{key}={_value(base_config(), key)!r} "
           "(the default)")
  if d.max_segments > m.num_queries:
    fail("data.max_segments", f"{d.max_segments} targets cannot be matched one-to-one to "
         f"model.num_queries={m.num_queries} queries; lower data.max_segments or raise num_queries")
  if d.max_scale < d.min_scale:
    fail("data.max_scale", f"must be >= data.min_scale={d.min_scale}, got {d.max_scale}")
  for key in ("image_size", "eval_size"):
    if d[key] % d.label_stride:
      fail("data.label_stride", f"{d.label_stride} does not divide data.{key}={d[key]}")
  if int(config.mesh.shape[1]) > 1 and config.mesh.param_sharding != "logical":
    fail("mesh.shape", f"a 'model' axis of {config.mesh.shape[1]} devices needs mesh.param_sharding='logical' "
         f"(the one rule that shards over 'model'), got {config.mesh.param_sharding!r}; use (-1, 1) otherwise")
  data_devices = int(config.mesh.shape[0])
  for key in ("batch_size", "eval_batch_size"):
    if data_devices > 0 and d[key] % data_devices:
      fail(f"data.{key}", f"{d[key]} does not split over config.mesh.shape[0]={data_devices} 'data' devices; "
           f"pick a multiple of {data_devices}")
  if (4 * config.loss.dense_stride) % d.label_stride:
    fail("loss.dense_stride", f"a dense cell ({4 * config.loss.dense_stride} px) must hold whole label pixels of "
         f"data.label_stride={d.label_stride}")
  if config.loss.merge_mask == "max" and config.loss.merge == "soft":
    fail("loss.merge_mask", "'max' takes the largest member of a hard group; the soft merge weighs every "
         "proposal: use 'noisy_or' or 'clip' with loss.merge='soft'")
  for name, e in d.datasets.items():
    if e.image_size < 0 or e.image_size % 32:
      fail(f"data.datasets.{name}.image_size", f"must be a multiple of 32 (0: data.image_size), got {e.image_size}")
    if e.ratio < 0:
      fail(f"data.datasets.{name}.ratio", f"must be >= 0 (0 = evaluation only), got {e.ratio}")
    _validate_entry_format(name, e, fail)
    eval_tasks(config, name)
    if e.ratio > 0 and e.tfds_dir and e.task != "box" and not formats.get(e.format).TFDS_LABEL_CHANNELS:
      fail(f"data.datasets.{name}.tfds_dir", f"prepared TFDS data holds no {e.format} masks (only boxes), so it "
           f"cannot train task {e.task!r}; train it from the native files (tfds_dir='') or with task='box'")
  _validate_best_checkpoint(config, fail)


def _validate_entry_format(name: str, e: ml_collections.ConfigDict, fail) -> None:
  """The entry's task is one its format can train, and val_panoptic_annotations only where the format takes it."""
  fmt = formats.get(e.format, f"config.data.datasets.{name}.format")
  if e.task.lower() not in contract.TASK_NAMES:
    fail(f"data.datasets.{name}.task", f"unknown task {e.task!r}; expected one of {sorted(contract.TASK_NAMES)}")
  if e.task not in fmt.TRAIN_TASKS:
    fail(f"data.datasets.{name}.task", f"{e.task!r} cannot be trained from {e.format}; expected one of "
         f"{fmt.TRAIN_TASKS}")
  panoptic_json = e.get("val_panoptic_annotations", "")
  if panoptic_json and not fmt.VAL_PANOPTIC_ANNOTATIONS:
    takers = " and ".join(f.NAME for f in formats.modules() if f.VAL_PANOPTIC_ANNOTATIONS)
    fail(f"data.datasets.{name}.val_panoptic_annotations", f"is for {takers} entries; a {e.format} entry takes "
         "its val ground truth from val_annotations")
  if panoptic_json and not e.val_panoptic_dir:
    fail(f"data.datasets.{name}.val_panoptic_dir", f"is empty; set it to the folder of the PNGs of "
         f"val_panoptic_annotations={panoptic_json!r}")


def eval_tasks(config: ml_collections.ConfigDict, name: str) -> tuple:
  """The `eval_tasks` of dataset entry `name`; ValueError naming the key where its ground truth cannot score one."""
  e = config.data.datasets[name]
  tasks = tuple(e.eval_tasks)
  for t in tasks:
    if t not in EVAL_METRICS:
      raise ValueError(f"config.data.datasets.{name}.eval_tasks: {t!r} is not one of {', '.join(EVAL_METRICS)}")
  fmt = formats.get(e.format, f"config.data.datasets.{name}.format")
  if "instance" in tasks and "instance" not in fmt.EVAL_TASKS:
    raise ValueError(f"config.data.datasets.{name}.eval_tasks: instance evaluation needs instance ground "
                     f"truth; a {e.format} dataset has none")
  if "instance" in tasks and not fmt.INSTANCE_GT_IN_ANNOTATIONS and not e.val_instances:
    raise ValueError(f"config.data.datasets.{name}: instance evaluation of a {e.format} dataset needs "
                     f"val_instances (a COCO instances JSON with masks of the val images)")
  if set(tasks) - set(fmt.EVAL_TASKS):
    raise ValueError(f"config.data.datasets.{name}.eval_tasks: a {e.format} dataset supports only "
                     f"{' and '.join(repr(t) for t in fmt.EVAL_TASKS)}")
  return tasks


def _validate_best_checkpoint(config: ml_collections.ConfigDict, fail) -> None:
  """best_checkpoint_metric must name a metric that an evaluation during training reports."""
  metric, mode = config.best_checkpoint_metric, config.best_checkpoint_mode
  if mode not in ("max", "min"):
    fail("best_checkpoint_mode", f"must be 'max' or 'min', got {mode!r}")
  if not metric:
    return
  if config.eval_every_steps < 0:
    fail("best_checkpoint_metric", f"{metric!r} is never measured: eval_every_steps < 0 turns evaluation off")
  name, _, rest = metric.partition("/")
  task, _, key = rest.partition("/")
  datasets = config.data.datasets
  if name not in datasets:
    fail("best_checkpoint_metric", f"{metric!r}: no dataset {name!r}; expected '<dataset>/<task>/<metric>' "
         f"with a dataset of {list(datasets)}")
  if task not in datasets[name].eval_tasks:
    fail("best_checkpoint_metric", f"{metric!r}: {name} is evaluated on {tuple(datasets[name].eval_tasks)}, "
         f"not {task!r}")
  if key not in EVAL_METRICS.get(task, ()) and not (task == "semantic" and key.startswith("IoU/")):
    fail("best_checkpoint_metric", f"{metric!r}: {task} evaluation reports {EVAL_METRICS.get(task, ())}, "
         f"not {key!r}")
