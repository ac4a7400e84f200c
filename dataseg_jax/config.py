"""Default configuration shared by every file in `configs/`, and its validation.

A config file in `configs/` is a big_vision-style `get_config(arg=None)` that starts from
`base_config()` and overrides what it needs. `validate(config)` runs at start (train, eval, bench)
and fails with a message that names the offending key instead of failing deep inside a trace.
Values marked [paper] come from DaTaSeg; [default] from Mask2Former / BoxInst (the project's paper brief,
DATASEG.md); [ours] are this codebase's choices; untagged values are settings (sizes, intervals, paths).
"""
import ml_collections

BACKBONES = ("resnet", "vit")
SCHEDULES = ("poly", "cosine", "constant")  # config.optimizer.schedule (train/optimizer.py)
PARAM_SHARDINGS = ("replicate", "fsdp")      # config.mesh.param_sharding (train/mesh.py)
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
  m.init_from = ""                    # whole-model .npz (convert_weights.py --from hf_mask2former): its backbone /
                                      # pixel_decoder / transformer_decoder; classifier at init; backbone.init_from wins
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
  l.num_points = 12544                # 112 x 112 importance-sampled points
  l.oversample_ratio = 3.0
  l.importance_sample_ratio = 0.75
  l.deep_supervision = True
  l.row_block = 16                    # [not in paper] target rows per skippable block of the point-sampled terms
  l.merge = "hard"                    # 'hard' (argmax class, clipped sum) or 'soft' (ablation: sum_i p_i(c) m_i)
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
  d.on_bad_example = "skip"           # 'skip' (counted, logged) or 'error'
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

  # ---------------------------------------------------------------- sharding
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)              # ('data', 'model'); -1 takes the remaining devices
  c.mesh.param_sharding = "replicate"  # or 'fsdp' (shard the largest axis over 'data')
  c.distributed = False               # call jax.distributed.initialize() at start
  return c


def dataset_entry(**kw) -> ml_collections.ConfigDict:
  """One entry of `config.data.datasets`; relative paths are joined to `config.data_dir`."""
  e = ml_collections.ConfigDict()
  e.format = ""             # semantic_png | coco_panoptic | coco_detection | coco_instances
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
  """Keeps only entry `name` (a single-dataset baseline), with an error listing the valid names."""
  if name not in datasets:
    raise ValueError(f"{config_path}:{name}: unknown dataset; expected one of {list(datasets)}")
  return ml_collections.ConfigDict({name: datasets[name]})


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key; called at the start of every script."""
  m, d = config.model, config.data

  def fail(key, msg):
    raise ValueError(f"config.{key}: {msg}")

  if m.backbone.name not in BACKBONES:
    fail("model.backbone.name", f"unknown backbone {m.backbone.name!r}; expected one of {BACKBONES}")
  if m.num_queries <= 0:
    fail("model.num_queries", f"must be > 0, got {m.num_queries}")
  if d.max_segments <= 0:
    fail("data.max_segments", f"must be > 0, got {d.max_segments}")
  if d.max_segments > m.num_queries:
    fail("data.max_segments", f"{d.max_segments} targets cannot be matched one-to-one to "
         f"model.num_queries={m.num_queries} queries; lower data.max_segments or raise num_queries")
  if m.embed_dim <= 0:
    fail("model.embed_dim", f"must be > 0, got {m.embed_dim}")
  if m.classifier not in ("text", "learned"):
    fail("model.classifier", f"must be 'text' or 'learned', got {m.classifier!r}")
  if m.dtype not in ("float32", "bfloat16"):
    fail("model.dtype", f"must be 'float32' or 'bfloat16', got {m.dtype!r}")
  if d.image_size % 32:
    fail("data.image_size", f"must be a multiple of 32 (the coarsest feature stride), got {d.image_size}")
  if d.mixture_mode not in ("per_batch", "per_example"):
    fail("data.mixture_mode", f"must be 'per_batch' or 'per_example', got {d.mixture_mode!r}")
  if config.loss.row_block <= 0:
    fail("loss.row_block", f"must be > 0, got {config.loss.row_block}")
  if config.loss.oversample_ratio < 1:
    fail("loss.oversample_ratio", f"must be >= 1 (candidates per sampled point), got {config.loss.oversample_ratio}")
  if not 0 <= config.loss.importance_sample_ratio <= 1:
    fail("loss.importance_sample_ratio", f"must be in [0, 1], got {config.loss.importance_sample_ratio}")
  if config.loss.merge not in ("hard", "soft"):
    fail("loss.merge", f"must be 'hard' or 'soft', got {config.loss.merge!r}")
  if config.total_steps <= 0:
    fail("total_steps", f"must be > 0, got {config.total_steps}")
  for key in ("log_every_steps", "checkpoint_every_steps"):
    if config[key] <= 0:
      fail(key, f"must be > 0, got {config[key]}")
  for name, e in d.datasets.items():
    if e.image_size % 32:
      fail(f"data.datasets.{name}.image_size", f"must be a multiple of 32 (0: data.image_size), got {e.image_size}")
    if e.ratio < 0:
      fail(f"data.datasets.{name}.ratio", f"must be >= 0 (0 = evaluation only), got {e.ratio}")
    eval_tasks(config, name)
  if config.optimizer.schedule not in SCHEDULES:
    fail("optimizer.schedule", f"must be one of {SCHEDULES}, got {config.optimizer.schedule!r}")
  if config.mesh.param_sharding not in PARAM_SHARDINGS:
    fail("mesh.param_sharding", f"must be one of {PARAM_SHARDINGS}, got {config.mesh.param_sharding!r}")
  _validate_best_checkpoint(config, fail)


def eval_tasks(config: ml_collections.ConfigDict, name: str) -> tuple:
  """The `eval_tasks` of dataset entry `name`; ValueError naming the key where its ground truth cannot score one."""
  e = config.data.datasets[name]
  tasks = tuple(e.eval_tasks)
  for t in tasks:
    if t not in EVAL_METRICS:
      raise ValueError(f"config.data.datasets.{name}.eval_tasks: {t!r} is not one of {', '.join(EVAL_METRICS)}")
  if "instance" in tasks and e.format == "semantic_png":
    raise ValueError(f"config.data.datasets.{name}.eval_tasks: instance evaluation needs instance ground "
                     f"truth; a semantic_png dataset has none")
  if "instance" in tasks and e.format != "coco_instances" and not e.val_instances:
    raise ValueError(f"config.data.datasets.{name}: instance evaluation of a {e.format} dataset needs "
                     f"val_instances (a COCO instances JSON with masks of the val images)")
  if e.format in ("coco_detection", "coco_instances") and set(tasks) - {"instance"}:
    raise ValueError(f"config.data.datasets.{name}.eval_tasks: a {e.format} dataset supports only 'instance'")
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
