"""evaluator.evaluate on the generated toy benchmark: every dataset and task, files and metrics.

The metrics it reports must equal those recomputed from its own written files by the file-based
evaluators (evaluate_predictions.py, COCOeval) against the original ground truth. The model is DataSeg
when it is importable, freshly initialised; a small stand-in with the same `apply` contract otherwise.
"""
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import evaluate_predictions  # noqa: E402
from configs import toy  # noqa: E402
from dataseg_jax import config as config_lib  # noqa: E402
from dataseg_jax.evaluation import evaluator  # noqa: E402
from dataseg_jax.evaluation import writers  # noqa: E402
from dataseg_jax.evaluation import instance  # noqa: E402
from dataseg_jax.evaluation import panoptic  # noqa: E402
from dataseg_jax.evaluation import semantic  # noqa: E402
from scripts import make_toy_data  # noqa: E402


class StandIn(nn.Module):
  """DataSeg's apply contract: logits [L, B, Q, C + 1] (-1e9 outside class_mask), masks [L, B, Q, H/4, W/4]."""
  queries: int = 8

  @nn.compact
  def __call__(self, images, class_embeddings, class_mask, train=False):
    x = images.astype(jnp.float32) / 255.0
    feats = nn.Conv(16, (4, 4), strides=(4, 4))(x)  # [B, H/4, W/4, 16]
    q = self.param("queries", nn.initializers.normal(1.0), (self.queries, 16))
    masks = 4.0 * jnp.einsum("bhwf,qf->bqhw", jnp.tanh(feats), q)
    cls = nn.Dense(class_embeddings.shape[1])(q + feats.mean((1, 2))[:, None])
    logits = 8.0 * jnp.einsum("bqd,cd->bqc", cls, class_embeddings)
    logits = jnp.where(class_mask[:, None], logits, -1e9)
    logits = jnp.concatenate([logits, jnp.zeros(logits.shape[:2] + (1,))], -1)
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


def stand_in(config):
  """(union vocabulary, unit random embeddings [C, 8], StandIn, its variables) for `config`'s datasets."""
  from data_pipelines import registry
  vocab = registry.build_vocab(config)
  emb = np.array(jax.random.normal(jax.random.PRNGKey(1), (len(vocab.names), 8)))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  model = StandIn()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.uint8), jnp.asarray(emb),
                         jnp.ones((1, len(vocab.names)), bool))
  return vocab, emb, model, variables


def eval_config(root):
  """configs/toy.py on the toy data at `root`, evaluated at 64 px in batches of 2 with thresholds for StandIn."""
  c = toy.get_config()
  c.data_dir = str(root)
  c.data.eval_size = 64
  c.data.eval_batch_size = 2
  c.eval.object_mask_threshold = 0.2
  c.eval.overlap_threshold = 0.3
  c.eval.instance_topk = 20
  c.eval.num_overlays = 2
  return c


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  make_toy_data.write(str(root), train=2, val=5, size=64, seed=0)
  c = eval_config(root)
  _number_categories_from_zero(root / c.data.datasets.toy_ade.val_panoptic_annotations)
  vocab, emb, model, variables = stand_in(c)
  workdir = tmp_path_factory.mktemp("work")
  logs = _Messages()
  logger = logging.getLogger()
  level = logger.level
  logger.addHandler(logs)
  logger.setLevel(logging.INFO)
  try:
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(evaluator, "PROGRESS_EVERY_S", 0.0)  # a progress line after every batch
      metrics = evaluator.evaluate(c, variables, vocab, emb, str(workdir), 7, model=model)
  finally:
    logger.removeHandler(logs)
    logger.setLevel(level)
  return c, root, workdir, metrics, logs.messages


def _number_categories_from_zero(path: pathlib.Path) -> None:
  """Renumbers a panoptic JSON's categories 1..K as 0..K-1, as ADE20K's own `ade20k_panoptic_val.json`."""
  data = json.loads(path.read_text())
  assert sorted(c["id"] for c in data["categories"]) == list(range(1, len(data["categories"]) + 1))
  for c in data["categories"]:
    c["id"] -= 1
  for a in data["annotations"]:
    for seg in a["segments_info"]:
      seg["category_id"] -= 1
  path.write_text(json.dumps(data))


class _Messages(logging.Handler):
  """The messages logged while it is attached."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_reports_every_dataset_and_task(evaluated):
  _, _, workdir, metrics, _ = evaluated
  for key in ("toy_ade/semantic/mIoU", "toy_ade/semantic/pixel_acc", "toy_ade/semantic/fwIoU",
              "toy_ade/panoptic/PQ", "toy_coco/panoptic/PQ", "toy_coco/panoptic/PQ_th", "toy_coco/panoptic/PQ_st",
              "toy_o365/instance/AP", "toy_o365/instance/box_AP"):
    assert key in metrics and np.isfinite(metrics[key]), key
  saved = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert saved["step"] == 7 and saved["metrics"] == pytest.approx(metrics)


def test_every_dataset_and_task_gets_overlays_with_a_ground_truth_panel(evaluated):
  """eval.num_overlays = 2 images per dataset, one picture per task: image | ground truth | prediction. toy_o365 is
  trained from boxes only; its instance overlays show the masks it predicts beside the held-out true masks."""
  workdir = evaluated[2]
  expected = {"toy_ade": ["panoptic", "semantic"], "toy_coco": ["panoptic"], "toy_o365": ["instance"],
              "toy_heldout": ["semantic"]}
  for name, tasks in expected.items():
    folder = workdir / "eval" / "7" / name / "overlays"
    assert sorted(p.name for p in folder.iterdir()) == tasks, name
    for task in tasks:
      pictures = sorted((folder / task).glob("*.png"))
      assert len(pictures) == 2, (name, task)
      pic = np.array(Image.open(pictures[0]))
      panel = pic.shape[1] // 3
      assert pic.shape[1] == 3 * panel, pic.shape
      truth = pic[:, panel:2 * panel].astype(int)
      drawn = (np.abs(truth - pic[:, :panel]).sum(-1) > 30).mean()
      assert drawn > 0.02, (name, task, drawn)  # the ground truth is drawn on the image


def test_config_eval_metrics_lists_every_metric_the_evaluator_reports(evaluated):
  """config.EVAL_METRICS is what validate() accepts as a best_checkpoint_metric; it must not fall behind."""
  metrics = evaluated[3]
  reported = {(k.split("/")[1], k.split("/")[2]) for k in metrics if "/IoU/" not in k}
  listed = {(task, name) for task, names in config_lib.EVAL_METRICS.items() for name in names}
  assert reported - listed == set()
  assert {t for t, _ in reported} == set(config_lib.EVAL_METRICS)


def test_semantic_metrics_equal_file_based_evaluation(evaluated):
  c, root, workdir, metrics, _ = evaluated
  k = len((root / "toy_ade" / "names.txt").read_text().split())
  ours = evaluate_predictions.evaluate_semantic(
      str(root / c.data.datasets.toy_ade.val_annotations), str(workdir / "eval" / "7" / "toy_ade" / "semantic"),
      k, reduce_zero_label=True)
  for key in ("mIoU", "pixel_acc", "fwIoU"):
    assert metrics[f"toy_ade/semantic/{key}"] == pytest.approx(ours[key], abs=1e-9)


@pytest.mark.parametrize("name,gt_json", [("toy_coco", "val_annotations"),
                                           ("toy_ade", "val_panoptic_annotations")])  # weak transfer: true instances
def test_panoptic_metrics_equal_file_based_pq(evaluated, name, gt_json):
  c, root, workdir, metrics, _ = evaluated
  e = c.data.datasets[name]
  out = workdir / "eval" / "7" / name
  ref = panoptic.pq_compute(str(root / e[gt_json]), str(root / e.val_panoptic_dir),
                            str(out / "panoptic.json"), str(out / "panoptic"))
  written = json.loads((out / "panoptic.json").read_text())
  assert any(a["segments_info"] for a in written["annotations"])
  gt_ids = {c["id"]: c["name"] for c in json.loads((root / e[gt_json]).read_text())["categories"]}
  assert {c["id"]: c["name"] for c in written["categories"]} == gt_ids  # toy_ade's: 0..K-1, as ADE20K's
  assert {s["category_id"] for a in written["annotations"] for s in a["segments_info"]} <= set(gt_ids)
  for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
    assert metrics[f"{name}/panoptic/{key}"] == pytest.approx(ref[key], abs=1e-9)


def test_instance_metrics_equal_cocoeval_on_written_results(evaluated):
  c, root, workdir, metrics, _ = evaluated
  gt = str(root / c.data.datasets.toy_o365.val_instances)
  res = str(workdir / "eval" / "7" / "toy_o365" / "instance_results.json")
  assert json.loads(pathlib.Path(res).read_text())
  assert metrics["toy_o365/instance/AP"] == pytest.approx(instance.coco_evaluate(gt, res, "segm")["AP"], abs=1e-9)
  assert metrics["toy_o365/instance/box_AP"] == pytest.approx(instance.coco_evaluate(gt, res, "bbox")["AP"], abs=1e-9)



def test_per_class_iou_and_the_open_vocabulary_mean_over_classes_no_training_dataset_has(evaluated):
  _, root, _, metrics, _ = evaluated
  ade = [v for k, v in metrics.items() if k.startswith("toy_ade/semantic/IoU/")]
  assert metrics["toy_ade/semantic/mIoU"] == pytest.approx(np.mean(ade))
  assert "toy_ade/semantic/mIoU_unseen" not in metrics  # every toy_ade class is trained on
  held = [f"toy_heldout/semantic/IoU/{n}" for n in (root / "heldout_names.txt").read_text().split()]
  assert any(k in metrics for k in held)
  assert metrics["toy_heldout/semantic/mIoU_unseen"] == pytest.approx(
      np.mean([metrics[k] for k in held if k in metrics]))
  # Chance level: uniform random labelling over the dataset's classes, from the ground truth PNGs themselves.
  names = (root / "toy_heldout/names.txt").read_text().splitlines()
  labels = [np.array(Image.open(p)) for p in sorted((root / "toy_heldout/annotations/validation").glob("*.png"))]
  counts = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=len(names) + 1)[1:len(names) + 1]
  scored = [names.index(n) for n in (root / "heldout_names.txt").read_text().split()
            if f"toy_heldout/semantic/IoU/{n}" in metrics]  # the classes mIoU_unseen averages
  expected = np.mean(semantic.chance_iou(counts)[scored])
  assert metrics["toy_heldout/semantic/mIoU_unseen_chance"] == pytest.approx(expected, rel=1e-9)


def test_logs_progress_with_rate_and_eta_for_each_dataset(evaluated):
  """Each dataset's pass logs images done of its total after every batch here: the first batch's time (compiling
  included), then a rate counted from the end of that batch and an ETA, ending at all of them and ETA 0s."""
  messages = evaluated[4]
  for name in ("toy_ade", "toy_coco", "toy_o365"):
    lines = [m for m in messages if m.startswith(f"{name}: ")]
    assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"], lines  # 5 images in batches of 2
    assert lines[0].startswith(f"{name}: 2/5 images (40 %) in ") and lines[0].endswith("rate and ETA from here on)")
    assert float(lines[1].split(", ")[1].split()[0]) > 0 and "ETA ?" not in lines[1]
    assert "(100 %)" in lines[-1] and lines[-1].endswith("ETA 0s")


# odd extents: no output pixel centre falls exactly on a source pixel edge, where PIL rounds its own way
@pytest.mark.parametrize("extent,size", [((24, 30), (24, 30)), ((25, 31), (17, 45)), ((31, 39), (50, 21))])
def test_encode_instances_crops_resizes_and_encodes_transposed_masks(rng, extent, size):
  """Transposed [K, W, H] masks -> crop to the valid extent, nearest resize, RLE: decoding gives PIL's NEAREST
  resize of each cropped [H, W] mask, and the boxes are the decoded masks' tight boxes."""
  from pycocotools import mask as mask_utils
  masks = rng.random((3, 32, 40)) > 0.6
  masks[1] = False  # an empty mask
  results = evaluator.encode_instances(5, np.ascontiguousarray(masks.swapaxes(1, 2)), [0.9, 0.5, 0.1],
                                       [1, 2, 3], extent, size)
  assert [r["category_id"] for r in results] == [1, 2, 3] and [r["score"] for r in results] == [0.9, 0.5, 0.1]
  for m, r in zip(masks, results):
    crop = Image.fromarray(m[:extent[0], :extent[1]].astype(np.uint8))
    want = np.asarray(crop.resize((size[1], size[0]), Image.NEAREST)).astype(bool)
    np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), want)
    ys, xs = np.nonzero(want)
    box = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] if len(ys) else [0, 0, 0, 0]
    np.testing.assert_allclose(r["bbox"], box)


def test_panoptic_segments_keeps_the_segments_left_after_crop_and_resize():
  """Segments are cropped to the valid extent and resized with the id map: a segment whose pixels all lie in
  the padding is dropped; the kept ones carry the dataset's category ids, thing flags and scores."""
  ids = np.zeros((8, 8), np.int32)
  ids[:4, :4], ids[:4, 4:6], ids[6:, :] = 1, 2, 3  # segment 3 only in the padded rows
  p = {"panoptic_seg": ids, "segment_id": np.array([0, 1, 3, 2]), "segment_class": np.array([-1, 0, 2, 1]),
       "segment_score": np.array([0.0, 0.9, 0.8, 0.7])}
  out_ids, segs, classes = evaluator.panoptic_segments(p, (4, 8), (8, 16), [10, 20, 30], np.array([True, False, True]))
  np.testing.assert_array_equal(out_ids, np.repeat(np.repeat(ids[:4], 2, 0), 2, 1))
  assert segs == [{"id": 1, "category_id": 10, "iscrowd": 0, "isthing": 1, "score": 0.9},
                  {"id": 2, "category_id": 20, "iscrowd": 0, "isthing": 0, "score": 0.7}]
  assert classes == {1: 0, 2: 1}


def test_eval_tasks_the_ground_truth_cannot_score_are_refused_up_front():
  from configs import toy4
  c = toy4.get_config()
  c.data.datasets.toy_coco.eval_tasks = ("panoptic", "instance")
  with pytest.raises(ValueError, match="toy_coco: instance evaluation of a coco_panoptic dataset needs val_instances"):
    config_lib.eval_tasks(c, "toy_coco")
  c.data.datasets.toy_city.eval_tasks = ("instance", "semantic")
  with pytest.raises(ValueError, match="toy_city.eval_tasks: a coco_instances dataset supports only 'instance'"):
    config_lib.eval_tasks(c, "toy_city")


def _evaluate_alone(config, name: str, workdir, step: int, **entry) -> dict:
  """`evaluator.evaluate` of dataset `name` alone (its entry updated with `entry`) with a fresh StandIn."""
  c = config.copy_and_resolve_references()
  for other in list(c.data.datasets):
    if other != name:
      del c.data.datasets[other]
  c.data.datasets[name].update(entry)
  vocab, emb, model, variables = stand_in(c)
  return evaluator.evaluate(c, variables, vocab, emb, str(workdir), step, model=model)


def _thing_instances_of_panoptic(pan_json: pathlib.Path, pan_dir: pathlib.Path, out: pathlib.Path) -> None:
  """A COCO instances JSON (RLE masks) of the thing segments of a COCO panoptic ground truth."""
  from pycocotools import mask as mask_utils
  data = json.loads(pan_json.read_text())
  things = {c["id"] for c in data["categories"] if c["isthing"]}
  anns = []
  for a in data["annotations"]:
    ids = panoptic.read_png_ids(str(pan_dir / a["file_name"]))
    for s in a["segments_info"]:
      if s["category_id"] in things:
        rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
        anns.append({"id": len(anns) + 1, "image_id": a["image_id"], "category_id": s["category_id"],
                     "segmentation": dict(rle, counts=rle["counts"].decode("ascii")), "iscrowd": s.get("iscrowd", 0),
                     "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
  out.write_text(json.dumps({"images": data["images"], "annotations": anns,
                             "categories": [c for c in data["categories"] if c["isthing"]]}))


def test_instance_ap_of_a_panoptic_dataset_on_its_thing_classes(evaluated, tmp_path):
  """COCO instance AP of a panoptic dataset given val_instances: instances of thing classes only (the stuff
  categories are unknown to the instances JSON, which COCOeval's checks would refuse), equal to COCOeval on the
  written results."""
  c, root, _, _, _ = evaluated
  e = c.data.datasets.toy_coco
  _thing_instances_of_panoptic(root / e.val_annotations, root / e.val_panoptic_dir, tmp_path / "instances.json")
  metrics = _evaluate_alone(c, "toy_coco", tmp_path / "work", 3, val_instances=str(tmp_path / "instances.json"),
                            eval_tasks=("instance",))
  res = tmp_path / "work" / "eval" / "3" / "toy_coco" / "instance_results.json"
  results = json.loads(res.read_text())
  thing_ids = {cat["id"] for cat in json.loads((tmp_path / "instances.json").read_text())["categories"]}
  assert results and {r["category_id"] for r in results} <= thing_ids
  assert metrics["toy_coco/instance/AP"] == pytest.approx(
      instance.coco_evaluate(str(tmp_path / "instances.json"), str(res), "segm")["AP"], abs=1e-9)


def test_instance_ap_of_part_of_a_split_counts_only_the_evaluated_images(evaluated, tmp_path, monkeypatch):
  """With eval.max_examples, AP is over the evaluated images (as detectron2): COCOeval is told those images
  (`coco_evaluate`'s image_ids, whose effect test_eval_metrics checks on real results) and the AP equals
  COCOeval's against a ground truth holding only them."""
  c, root, _, _, _ = evaluated
  c = c.copy_and_resolve_references()
  c.eval.max_examples = 2
  told = []
  coco_evaluate = instance.coco_evaluate
  monkeypatch.setattr(instance, "coco_evaluate", lambda *a, **k: told.append(a[4]) or coco_evaluate(*a, **k))
  metrics = _evaluate_alone(c, "toy_o365", tmp_path / "work", 1)
  monkeypatch.undo()
  res = tmp_path / "work" / "eval" / "1" / "toy_o365" / "instance_results.json"
  ids = {r["image_id"] for r in json.loads(res.read_text())}
  assert [sorted(t) for t in told] == [sorted(ids)] * 2  # segm and bbox
  gt = json.loads((root / c.data.datasets.toy_o365.val_instances).read_text())
  assert len(ids) == 2 < len(gt["images"])
  gt["images"] = [im for im in gt["images"] if im["id"] in ids]
  gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
  (tmp_path / "part.json").write_text(json.dumps(gt))
  assert metrics["toy_o365/instance/AP"] == pytest.approx(
      instance.coco_evaluate(str(tmp_path / "part.json"), str(res), "segm")["AP"], abs=1e-9)


def test_metrics_files_keep_other_datasets_of_the_same_step(evaluated, tmp_path):
  """A second evaluation of the same step (e.g. a transfer benchmark) adds its metrics to metrics.json; a later
  step replaces the top-level file."""
  c, *_ = evaluated
  runs = [_evaluate_alone(c, name, tmp_path, step, eval_tasks=tasks)
          for step, name, tasks in ((5, "toy_o365", ("instance",)), (5, "toy_ade", ("semantic",)),
                                    (6, "toy_ade", ("semantic",)))]
  read = lambda *p: json.loads((tmp_path / "eval" / pathlib.Path(*p) / "metrics.json").read_text())  # noqa: E731
  assert read("5")["metrics"] == {**runs[0], **runs[1]} and read("5")["step"] == 5
  assert any(k.startswith("toy_o365/") for k in runs[0]) and any(k.startswith("toy_ade/") for k in runs[1])
  assert read() == {"step": 6, "metrics": runs[2]} and read("6")["metrics"] == runs[2]


DATA_PARALLEL_SCRIPT = """
import json, sys
import jax
sys.path.insert(0, sys.argv[1])
import test_eval_evaluator as t
from dataseg_jax.evaluation import evaluator
c = t.eval_config(sys.argv[2])
c.data.eval_batch_size = 8
vocab, emb, model, variables = t.stand_in(c)
rows = []  # rows of a batch on one device
make = evaluator.make_infer_fn

def recording(*args):
  infer = make(*args)
  def run(variables, images, *rest):
    rows.append(images.sharding.shard_shape(images.shape)[0])
    return infer(variables, images, *rest)
  return run

evaluator.make_infer_fn = recording
metrics = evaluator.evaluate(c, variables, vocab, emb, sys.argv[3], 7, model=model)
print("RESULT=" + json.dumps({"rows": sorted(set(rows)), "metrics": metrics}))
"""


@pytest.mark.slow
def test_evaluation_splits_each_batch_over_the_devices_and_scores_the_same(evaluated, tmp_path):
  """The same StandIn and toy split, evaluated on 1 and on 8 CPU devices: the batches are sharded over 8 and the
  metrics agree."""
  root = evaluated[1]
  results = {}
  for n in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT, str(REPO / "tests"), str(root),
                           str(tmp_path / str(n))], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT=")]
    assert lines, proc.stderr[-3000:]
    results[n] = json.loads(lines[0][len("RESULT="):])
  assert results[1]["rows"] == [8] and results[8]["rows"] == [1]
  assert set(results[8]["metrics"]) == set(results[1]["metrics"])
  assert results[8]["metrics"] == pytest.approx(results[1]["metrics"], abs=1e-4)
  assert any(v > 0 for v in results[1]["metrics"].values())


def test_an_eval_batch_that_does_not_split_over_the_devices_is_refused(evaluated, tmp_path, monkeypatch):
  c = evaluated[0].copy_and_resolve_references()
  c.data.eval_batch_size = 3
  monkeypatch.setattr(evaluator.sharding_lib, "make_mesh", lambda config: types.SimpleNamespace(shape={"data": 2}))
  with pytest.raises(ValueError, match=r"eval_batch_size=3 does not split over the mesh's 2 'data' devices"):
    evaluator.evaluate(c, {}, None, np.zeros((1, 8)), str(tmp_path), 0)


TWO_PROCESS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_eval_evaluator as t
from dataseg_jax.evaluation import evaluator
from dataseg_jax import sharding as sharding_lib
c = t.eval_config(sys.argv[2])
c.distributed = True
sharding_lib.maybe_initialize_distributed(c)
vocab, emb, model, variables = t.stand_in(c)
metrics = evaluator.evaluate(c, variables, vocab, emb, sys.argv[3], 7, model=model)
print("RESULT=" + json.dumps(metrics))
"""


@pytest.mark.slow
def test_two_processes_evaluate_together_and_both_get_the_metrics_of_one(evaluated, tmp_path):
  """jax.distributed over two local processes (one device each): each batch is split over both, every process
  returns the one-process metrics, and process 0 alone writes the files."""
  _, root, workdir, metrics, _ = evaluated
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(REPO / "tests"), str(root), str(tmp_path)],
      env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    lines = [line for line in out.splitlines() if line.startswith("RESULT=")]
    assert p.returncode == 0 and lines, err[-3000:]
    assert json.loads(lines[0][len("RESULT="):]) == pytest.approx(metrics, abs=1e-4)
  saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert saved["metrics"] == pytest.approx(metrics, abs=1e-4)
  written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
  assert written == sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())


def test_a_process_other_than_the_first_scores_but_writes_no_files(evaluated, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  metrics = _evaluate_alone(evaluated[0], "toy_coco", tmp_path, 7)
  assert "toy_coco/panoptic/PQ" in metrics
  assert list(tmp_path.rglob("*")) == []


def test_a_label_sits_inside_its_segment_even_when_the_centroid_does_not():
  """A ring around another segment: its centroid is on the inner segment; its label anchor is on the ring, and the
  overlay writes the ring's name there (dark box, white text), not on the inner segment."""
  ids = np.zeros((96, 96), np.int64)
  yy, xx = np.mgrid[:96, :96]
  r = np.hypot(yy - 48, xx - 48)
  ids[(r > 24) & (r < 44)] = 1  # the ring
  ids[r <= 14] = 2  # the segment inside it
  y, x = writers.label_anchor(ids == 1)
  assert ids[y, x] == 1 and ids[48, 48] == 2
  pic = np.array(writers.overlay(np.full((96, 96, 3), 128, np.uint8), ids, {1: 0, 2: 1}, ["ring", "core"],
                                 min_side=96, ground_truth=(ids, {1: 0, 2: 1})))
  assert pic.shape == (96, 3 * 96, 3)
  prediction = pic[:, 2 * 96:]
  boxes, _ = ndimage.label(prediction.sum(-1) == 0)  # the dark label boxes
  ring_label = set(np.unique(boxes[y - 4:y + 5, x - 4:x + 5])) - {0}
  core_label = set(np.unique(boxes[44:53, 44:53])) - {0}
  assert ring_label and core_label and not ring_label & core_label
