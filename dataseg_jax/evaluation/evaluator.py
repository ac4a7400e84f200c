"""Evaluates every dataset entry on each of its `eval_tasks`; writes standard files and metrics.json.

One pass over a dataset's val split per evaluation: the model runs once per batch, the per-task
post-processing (`postprocess`) runs on device at `data.eval_size` with the padding around the image
belonging to no segment (`postprocess`'s `in_image`), and the host crops each example to its valid region,
resizes label maps to the original size (nearest) [default: Mask2Former crops the mask logits to the image
and resizes them to the original size before post-processing; we post-process at the evaluation size so
the device shapes stay static] and accumulates metrics against the original ground-truth files, which the entry's
format module loads (`ground_truth`, `data_pipelines.formats`):
- semantic: confusion matrix (`semantic.SemanticConfusion`) against the format's semantic ground truth (label PNGs,
  or the panoptic PNGs' classes), on the dataset's own classes;
- panoptic: `panoptic.PQStat` against the format's panoptic ground truth (COCO panoptic PNGs and JSON; on a
  semantic-only dataset, weak transfer [paper], ground truth derived from its label PNGs: see semantic_png);
- instance: pycocotools COCOeval (mask AP and box AP) against `val_instances`, or the val annotations of
  a format that holds instance masks (`INSTANCE_GT_IN_ANNOTATIONS`); ground-truth boxes from masks where absent.

A val image or label that does not decode stops the evaluation with an error naming the file
(`config.eval.on_bad_example='error'`, the default, which also makes bad input found while indexing the val split an
error). With 'skip' such an image is logged, counted (`<dataset>/skipped_images` in the metrics) and scored as
missed: its ground truth counts with no prediction (every labelled pixel unpredicted, every segment a false negative,
its image id in COCOeval's images), as are the images of a COCO-format val JSON that indexing skipped.

Files under WORKDIR/eval/<step>/<dataset>/: semantic/*.png, panoptic.json + panoptic/*.png,
instance_results.json, and for the first `eval.num_overlays` images overlays/<task>/*.png (image, ground truth and
prediction side by side; instances scored at least OVERLAY_MIN_SCORE); the metrics in WORKDIR/eval/metrics.json (and per step; an evaluation of
the same step with other datasets adds its metrics to those files).
Progress (images done, images/s, ETA) is logged every `PROGRESS_EVERY_S` seconds of a dataset's pass.

The model runs data-parallel on the training mesh (`config.mesh`, dataseg_jax/sharding.py): each batch is split over
the 'data' devices and the parameters are replicated (the devices of a 'model' axis above 1 repeat the work). Every
process reads the whole split and scores every image (with several processes the outputs are gathered to every
process), so all processes return the same metrics; process 0 writes the files.
"""
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from data_pipelines import formats
from data_pipelines import mixture
from data_pipelines import readers
from data_pipelines import registry
from dataseg_jax import config as config_lib
from dataseg_jax import progress as progress_lib
from dataseg_jax.evaluation import instance
from dataseg_jax.evaluation import panoptic
from dataseg_jax.evaluation import postprocess
from dataseg_jax.evaluation import semantic
from dataseg_jax.evaluation import writers
from dataseg_jax import sharding as sharding_lib

IGNORE = readers.IGNORE  # void ground truth: outside every class id (benchmarks with > 255 classes use 255)
PROGRESS_EVERY_S = 30.0
OVERLAY_MIN_SCORE = 0.5  # instances drawn in an overlay [default: detectron2's demo threshold]


def make_infer_fn(model, tasks: tuple, eval_config, out_shardings=None):
  """Jitted (variables, images [B, H, W, 3], valid [B, H, W], embeddings [C, D], class_mask [B, C], local_classes
  [K] int32, local_things [K] bool) -> per-task post-processed outputs at the input size, from the final decoder
  layer, with the padding (`valid` False) belonging to no segment; `out_shardings` as `jax.jit`'s (default: as
  the inputs make them).

  Post-processing runs on the dataset's own K classes (logits gathered from the union's C, background
  last), so class ids in the outputs are dataset-local and the [B, K, H, W] semantic scores stay small.
  """

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def infer(variables, images, valid, embeddings, class_mask, local_classes, local_things):
    out = model.apply(variables, images, embeddings, class_mask, train=False)
    union_logits = out["pred_logits"][-1]  # [B, Q, C + 1]
    logits = jnp.concatenate([union_logits[..., local_classes], union_logits[..., -1:]], -1)  # [B, Q, K + 1]
    return postprocess.infer_tasks(logits, out["pred_masks"][-1], valid, tasks, local_things, eval_config)

  return infer


def resize_nearest(a: np.ndarray, size) -> np.ndarray:
  """[h, w] or [K, h, w] -> [..., H, W] nearest-neighbour: output pixel i reads floor((i + 0.5) h / H) (PIL's
  NEAREST but for rounding where that lands exactly on a pixel edge); one axis at a time (3x faster than
  one 2-D fancy index on 100 masks)."""
  h, w = a.shape[-2:]
  rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
  return a.take(rows, axis=-2).take(cols, axis=-1)


def crop_resize_labels(labels: np.ndarray, extent, size) -> np.ndarray:
  """One example's label map or panoptic id map [H', W'] (`postprocess.infer_tasks`) cropped to the valid `extent`
  (h, w) and resized to the original `size` (H, W) -> int64 [H, W]."""
  return resize_nearest(labels[:extent[0], :extent[1]], size).astype(np.int64)


def panoptic_segments(p: dict, extent, size, category_ids, local_thing) -> tuple:
  """One example's panoptic outputs (`postprocess.panoptic_inference`, batch row taken) -> (ids int64 [H, W] at
  the original `size`, panopticapi segments_info, {segment id: dataset-local class}); segments whose pixels
  all fell outside the valid `extent` or between the resized pixels are dropped."""
  ids = crop_resize_labels(p["panoptic_seg"], extent, size)
  present = set(np.unique(ids).tolist())
  segs, classes = [], {}
  for q in np.nonzero(p["segment_id"] > 0)[0]:
    sid, local = int(p["segment_id"][q]), int(p["segment_class"][q])
    if sid in present:
      segs.append({"id": sid, "category_id": category_ids[local], "iscrowd": 0,
                   "isthing": int(local_thing[local]), "score": float(p["segment_score"][q])})
      classes[sid] = local
  return ids, segs, classes


def encode_instances(image_id, masks_t, scores, category_ids, extent, size) -> list:
  """COCO results of one example's instances: transposed masks bool [K, W, H] (`postprocess.infer_tasks`)
  cropped to the valid `extent` (h, w), resized to the original `size` (H, W) when it differs, RLE-encoded."""
  masks_t = masks_t[:, :extent[1], :extent[0]]
  if tuple(extent) != tuple(size):
    masks_t = resize_nearest(masks_t, (size[1], size[0]))
  return instance.encode_results(image_id, masks_t, scores, category_ids, transposed=True)


def _class_ids(labels: np.ndarray) -> dict:
  """{class + 1: class} of the classes in a label map [H, W] (-1 void), the segment ids of `labels + 1`."""
  return {int(k) + 1: int(k) for k in np.unique(labels) if k >= 0}


def instance_map(masks: list, classes: list, size) -> tuple:
  """Instance masks (bool [H, W] each) and their classes -> (segment ids int64 [H, W], {id: class}), painted
  largest first so that a smaller instance on top of a larger one stays visible; ids 1..K, 0 where none."""
  ids = np.zeros(size, np.int64)
  for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
    ids[masks[k]] = k + 1
  return ids, {k + 1: int(c) for k, c in enumerate(classes)}


def _annotation_mask(coco, ann: dict, size) -> np.ndarray:
  """bool [H, W] of a ground-truth annotation: its mask, or its box where it has none (box-only annotations)."""
  if ann.get("segmentation"):
    return coco.annToMask(ann).astype(bool)
  x, y, w, h = (int(round(v)) for v in ann["bbox"])
  out = np.zeros(size, bool)
  out[y:y + h, x:x + w] = True
  return out


def _valid_extent(valid: np.ndarray) -> tuple:
  return int(valid.any(1).sum()), int(valid.any(0).sum())


class _DatasetEval:
  """Host-side state of one dataset's evaluation: ground truth, accumulators, writers (files: `writes` only, so
  that with several processes one of them writes)."""

  def __init__(self, config, vocab, name: str, tasks: tuple, out_dir: str, writes: bool = True):
    self.name, self.tasks, self.out_dir, self.writes = name, tasks, out_dir, writes
    self.entry = e = registry.resolve_entry(config, name)
    self.d = vocab.dataset_index(name)
    local_vocab = registry.dataset_vocab(e)
    self.local_names = list(local_vocab.names)
    self.local_thing = np.array(local_vocab.is_thing, bool)
    self.local_classes = np.asarray(vocab.local_to_union[self.d], np.int32)
    self.unseen = ~vocab.seen[self.local_classes]  # [K] classes of no training dataset (open vocabulary)
    self.num_classes = len(self.local_classes)
    self.index = registry.build_index(config, name, "val", local_vocab)
    self.row_of_id = {int(i): r for r, i in enumerate(self.index.image_ids)}
    self.num_overlays = int(config.eval.num_overlays) if writes else 0
    self.overlays = 0
    if writes:
      os.makedirs(out_dir, exist_ok=True)
    self.instance_gt = instance.load_ground_truth(e.val_instances or e.val_annotations) if "instance" in tasks else None
    self.ground_truth = formats.get(e.format).ground_truth(e, self.index, local_vocab, self.instance_gt)
    self.category_ids, self.categories = self.ground_truth.category_ids, self.ground_truth.categories
    self.confusion = semantic.SemanticConfusion.empty(self.num_classes)
    self.pq = panoptic.PQStat({c["id"]: c for c in self.categories})
    self.instance_results = []
    self.image_ids = []  # evaluated images, in order (skipped ones included: scored as missed)
    self.skipped = []  # messages of the val images that did not decode
    if "semantic" in tasks and writes:
      os.makedirs(os.path.join(out_dir, "semantic"), exist_ok=True)
    if "panoptic" in tasks and writes:
      self.pan_writer = writers.PanopticWriter(os.path.join(out_dir, "panoptic.json"),
                                               os.path.join(out_dir, "panoptic"), self.categories)

  def _stem(self, row: int) -> str:
    return os.path.splitext(os.path.basename(self.index.image_paths[row]))[0]

  def add(self, batch: dict, res: dict, b: int) -> None:
    """Accumulates example `b` of a batch and its post-processed outputs."""
    image_id = batch["image_id"][b].item()
    self.image_ids.append(image_id)
    row = self.row_of_id[int(image_id)]
    stem = self._stem(row)
    hv, wv = _valid_extent(batch["valid"][b])
    size = tuple(int(v) for v in batch["orig_size"][b])
    layers = {}  # task -> (predicted ids, {id: class}, ground-truth ids, {id: class}) for the overlays
    if "semantic" in self.tasks:
      sem = crop_resize_labels(res["semantic"][b], (hv, wv), size)
      gt = self.ground_truth.semantic(row, image_id)
      layers["semantic"] = (sem + 1, _class_ids(sem), gt + 1, _class_ids(gt))
      self.confusion = self.confusion.merge(
          semantic.SemanticConfusion.from_model_output(sem, gt, self.num_classes, IGNORE))
      if self.writes:
        writers.write_semantic_png(os.path.join(self.out_dir, "semantic", stem + ".png"),
                                   np.maximum(sem, 0) + self.ground_truth.semantic_offset)
    if "panoptic" in self.tasks:
      p = {k: v[b] for k, v in res["panoptic"].items()}
      pan_ids, segs, pan_classes = panoptic_segments(p, (hv, wv), size, self.category_ids, self.local_thing)
      json_id = self.index.panoptic_gt[row]["image_id"] if self.index.panoptic_gt else image_id
      if self.writes:
        self.pan_writer.add(json_id, stem + ".png", pan_ids, segs)  # ids of the ground-truth JSON when one exists
      gt_ids, gt_segs = self.ground_truth.panoptic(row, image_id)
      self.pq.add_image(gt_ids, gt_segs, pan_ids, segs, f"{self.name} image_id {image_id}")
      layers["panoptic"] = (pan_ids, pan_classes, gt_ids,
                            {s["id"]: self.category_ids.index(int(s["category_id"])) for s in gt_segs})
    if "instance" in self.tasks:
      r = {k: v[b] for k, v in res["instance"].items()}
      if not r["valid"].all():  # fewer (query, thing class) pairs than instance_topk
        r = {k: v[r["valid"]] for k, v in r.items()}
      cats = [self.category_ids[c] for c in r["classes"]]
      found = encode_instances(image_id, r["masks"], r["scores"], cats, (hv, wv), size)
      self.instance_results += found
      if self.overlays < self.num_overlays:
        layers["instance"] = self._instance_layers(image_id, found, size)
    if self.overlays < self.num_overlays:
      self._overlay(row, stem, layers, size)

  def add_missed(self, image_id: int, message: str) -> None:
    """Scores val image `image_id`, which did not decode (`message` names it), as missed: its ground truth counts
    with no prediction (semantic: every labelled pixel unpredicted; panoptic: every segment a false negative;
    instance: its id stays in COCOeval's images). A ground truth that does not decode either is not scored."""
    row = self.row_of_id.get(int(image_id))
    try:
      gt_sem = self.ground_truth.semantic(row, image_id) if "semantic" in self.tasks else None
      gt_pan = self.ground_truth.panoptic(row, image_id) if "panoptic" in self.tasks else None
    except (OSError, ValueError) as e:
      message += f"; its ground truth does not decode either ({e}), so it is not scored"
      gt_sem = gt_pan = None
    self.skipped.append(message)
    self.image_ids.append(image_id)
    if gt_sem is not None:
      self.confusion = self.confusion.merge(semantic.SemanticConfusion.from_model_output(
          np.full(gt_sem.shape, -1), gt_sem, self.num_classes, IGNORE))
    if gt_pan is not None:
      self.pq.add_image(gt_pan[0], gt_pan[1], np.zeros_like(gt_pan[0]), [], f"{self.name} image_id {image_id}")

  def skipped_at_indexing(self) -> list:
    """Image ids of the val ground truth (a COCO-format JSON) that indexing skipped as bad input (only with
    config.eval.on_bad_example='skip'; 'error' stops there)."""
    listed = self.ground_truth.listed_image_ids()
    if listed is None and "instance" in self.tasks:
      listed = set(self.instance_gt.getImgIds())
    if listed is None:
      return []
    return sorted(listed - {int(i) for i in self.index.image_ids})

  def _instance_layers(self, image_id, found: list, size) -> tuple:
    """(predicted ids, {id: class}, ground-truth ids, {id: class}) of one image's instances: the COCO results
    `found` scored at least OVERLAY_MIN_SCORE, and the ground-truth annotations (masks, or boxes where none)."""
    shown = [x for x in found if x["score"] >= OVERLAY_MIN_SCORE]
    anns = self.instance_gt.loadAnns(self.instance_gt.getAnnIds(imgIds=[image_id]))
    return (*instance_map([mask_utils.decode(x["segmentation"]).astype(bool) for x in shown],
                          [self.category_ids.index(x["category_id"]) for x in shown], size),
            *instance_map([_annotation_mask(self.instance_gt, a, size) for a in anns],
                          [self.category_ids.index(a["category_id"]) for a in anns], size))

  def _overlay(self, row, stem, layers: dict, size) -> None:
    """Writes overlays/<task>/<stem>.png for each task: image, ground truth and prediction side by side."""
    image = np.array(Image.open(self.index.image_paths[row]).convert("RGB"))
    if image.shape[:2] != size:
      return
    for task, (ids, classes, gt_ids, gt_classes) in layers.items():
      os.makedirs(os.path.join(self.out_dir, "overlays", task), exist_ok=True)
      writers.overlay(image, ids, classes, self.local_names, ground_truth=(gt_ids, gt_classes)).save(
          os.path.join(self.out_dir, "overlays", task, stem + ".png"))
    self.overlays += 1

  def finish(self) -> dict:
    """Writes the remaining files; returns {f'{name}/{task}/{metric}': value} (and `<name>/skipped_images` when val
    images were skipped)."""
    out = {}
    if self.skipped:
      out[f"{self.name}/skipped_images"] = float(len(self.skipped))
      logging.warning("%s: %d val images were skipped and scored as missed: %s", self.name, len(self.skipped),
                      "; ".join(self.skipped[:5]))
    if "semantic" in self.tasks:
      scores = semantic.metrics_from_confusion(self.confusion.matrix)
      iou = scores.pop("IoU")
      for name, v in zip(self.local_names, iou):
        if np.isfinite(v):  # classes in the ground truth or the predictions
          out[f"{self.name}/semantic/IoU/{name}"] = float(v)
      scored = self.unseen & np.isfinite(iou)  # unseen classes in the ground truth or the predictions
      if scored.any():
        out[f"{self.name}/semantic/mIoU_unseen"] = float(np.mean(iou[scored]))
        chance = semantic.chance_iou(self.confusion.matrix.sum(1))[scored]  # over the same classes
        out[f"{self.name}/semantic/mIoU_unseen_chance"] = float(np.mean(chance))
      for k, v in scores.items():
        out[f"{self.name}/semantic/{k}"] = v
    if "panoptic" in self.tasks:
      if self.writes:
        self.pan_writer.close()
      for k, v in self.pq.summary().items():
        out[f"{self.name}/panoptic/{k}"] = v
    if "instance" in self.tasks:
      path = os.path.join(self.out_dir, "instance_results.json")
      if self.writes:
        writers.write_json(path, self.instance_results)
      for iou_type, prefix in (("segm", ""), ("bbox", "box_")):
        for k, v in instance.coco_evaluate(self.instance_gt, self.instance_results, iou_type, path,
                                           self.image_ids).items():
          out[f"{self.name}/instance/{prefix}{k}"] = v
    return out


def evaluate(config, variables, vocab, embeddings, workdir: str, step: int, model=None) -> dict:
  """Evaluates every dataset entry on its `eval_tasks`; see the module docstring.

  Args:
    config: the full config; `config.eval` holds thresholds, `num_overlays` and `max_examples`.
    variables: model variables ({'params': ...}).
    vocab: `UnionVocab`; embeddings: float32 [C, D] text embeddings of `vocab.names`.
    workdir, step: files go to WORKDIR/eval/<step>/.
    model: a module with DataSeg's `apply` contract; default `DataSeg(config.model)`.

  Returns:
    Flat {'<dataset>/<task>/<metric>': float}, also written to WORKDIR/eval/metrics.json.
  """
  if model is None:
    from dataseg_jax.models import dataseg  # pylint: disable=g-import-not-at-top
    model = dataseg.DataSeg(config.model)
  eval_dir = os.path.join(workdir, "eval")
  embeddings = jnp.asarray(embeddings, jnp.float32)
  mesh = sharding_lib.make_mesh(config)
  if config.data.eval_batch_size % mesh.shape["data"]:
    raise ValueError(f"config.data.eval_batch_size={config.data.eval_batch_size} does not split over the mesh's "
                     f"{mesh.shape['data']} 'data' devices; pick a multiple of {mesh.shape['data']}")
  rows = sharding_lib.batch_sharding(mesh)
  variables = jax.device_put(variables, sharding_lib.replicated(mesh))
  gathered = sharding_lib.replicated(mesh) if jax.process_count() > 1 else None  # a process reads only its own devices
  metrics = {}
  max_examples = int(config.eval.max_examples)
  for name in config.data.datasets:
    tasks = config_lib.eval_tasks(config, name)
    if not tasks:
      continue
    state = _DatasetEval(config, vocab, name, tasks, os.path.join(eval_dir, str(step), name),
                         writes=jax.process_index() == 0)
    infer = make_infer_fn(model, tasks, config.eval, gathered)
    seen, total = 0, min(len(state.index), max_examples) if max_examples else len(state.index)
    progress = progress_lib.Progress(name, total, logging.info, every_s=PROGRESS_EVERY_S)
    if not max_examples:
      for image_id in state.skipped_at_indexing():
        state.add_missed(image_id, f"{name} image_id {image_id}: skipped while indexing the val split (see the "
                                   "warnings above)")
    for batch in mixture.eval_batches(config, vocab, name, on_skip=state.add_missed):
      cm = vocab.class_mask[batch["dataset_id"]]
      images, valid, cm = (sharding_lib.global_array_from_whole(x, rows) for x in (batch["image"], batch["valid"], cm))
      res = jax.device_get(infer(variables, images, valid, embeddings, cm, state.local_classes, state.local_thing))
      for b in np.nonzero(batch["example_valid"])[0]:
        if max_examples and seen >= max_examples:
          break
        state.add(batch, res, int(b))
        seen += 1
      progress.update(seen)
      if max_examples and seen >= max_examples:
        break
    metrics.update(state.finish())
    logging.info("evaluated %s (%s) on %d images in %s", name, ", ".join(tasks), seen, progress.elapsed())
  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    for path in (os.path.join(eval_dir, "metrics.json"), os.path.join(eval_dir, str(step), "metrics.json")):
      _write_metrics(path, int(step), metrics)
  return metrics


def _write_metrics(path: str, step: int, metrics: dict) -> None:
  """Writes {'step', 'metrics'} to `path`, keeping the metrics of other datasets that an evaluation of the same
  step wrote there before (e.g. a direct-transfer benchmark evaluated after the training datasets)."""
  earlier = {}
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    if old.get("step") == step:
      earlier = old.get("metrics", {})
  with open(path, "w") as f:
    json.dump({"step": step, "metrics": {**earlier, **metrics}}, f, indent=1, sort_keys=True)

