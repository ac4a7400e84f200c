"""Metrics against independent references: a transcription of panopticapi's pq_compute, pycocotools'
COCOeval run directly (and its published expected numbers), and a plain numpy confusion matrix."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import coco as coco_lib
from pycocotools import cocoeval

from dataseg_jax import panoptic_ids
from dataseg_jax.evaluation import instance
from dataseg_jax.evaluation import panoptic
from dataseg_jax.evaluation import semantic

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import evaluate_predictions  # noqa: E402

CATEGORIES = [{"id": i, "name": f"c{i}", "isthing": t}
              for i, t in ((1, 1), (2, 1), (3, 1), (5, 1), (7, 0), (9, 0), (10, 0))]


# ------------------------------------------------------------- panopticapi transcription (reference)
def _ref_rgb2id(color):
  color = color.astype(np.int32)
  return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def ref_pq_compute(gt_json, gt_dir, pred_json, pred_dir):
  """Transcription of panopticapi evaluation.py pq_compute / pq_compute_single_core / pq_average."""
  offset, void = 256 * 256 * 256, 0
  gt = json.load(open(gt_json))
  pred = json.load(open(pred_json))
  categories = {c["id"]: c for c in gt["categories"]}
  pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
  stat = {c: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0} for c in categories}
  for gt_ann in gt["annotations"]:
    pred_ann = pred_by_image[gt_ann["image_id"]]
    pan_gt = _ref_rgb2id(np.array(Image.open(f"{gt_dir}/{gt_ann['file_name']}"), dtype=np.uint32))
    pan_pred = _ref_rgb2id(np.array(Image.open(f"{pred_dir}/{pred_ann['file_name']}"), dtype=np.uint32))
    gt_segms = {el["id"]: dict(el) for el in gt_ann["segments_info"]}
    pred_segms = {el["id"]: dict(el) for el in pred_ann["segments_info"]}
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
      if label not in pred_segms:
        continue
      pred_segms[label]["area"] = label_cnt
    pan_gt_pred = pan_gt.astype(np.uint64) * offset + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
      gt_pred_map[(label // offset, label % offset)] = intersection
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
      if gt_label not in gt_segms or pred_label not in pred_segms:
        continue
      if gt_segms[gt_label]["iscrowd"] == 1:
        continue
      if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
        continue
      union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
               - gt_pred_map.get((void, pred_label), 0))
      iou = intersection / union
      if iou > 0.5:
        stat[gt_segms[gt_label]["category_id"]]["tp"] += 1
        stat[gt_segms[gt_label]["category_id"]]["iou"] += iou
        gt_matched.add(gt_label)
        pred_matched.add(pred_label)
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
      if gt_label in gt_matched:
        continue
      if gt_info["iscrowd"] == 1:
        crowd_labels_dict[gt_info["category_id"]] = gt_label
        continue
      stat[gt_info["category_id"]]["fn"] += 1
    for pred_label, pred_info in pred_segms.items():
      if pred_label in pred_matched:
        continue
      intersection = gt_pred_map.get((void, pred_label), 0)
      if pred_info["category_id"] in crowd_labels_dict:
        intersection += gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
      if intersection / pred_info["area"] > 0.5:
        continue
      stat[pred_info["category_id"]]["fp"] += 1
  results = {}
  for name, isthing in (("", None), ("_th", True), ("_st", False)):
    pq = sq = rq = 0.0
    n = 0
    for label, info in categories.items():
      if isthing is not None and (info["isthing"] == 1) != isthing:
        continue
      s = stat[label]
      if s["tp"] + s["fp"] + s["fn"] == 0:
        continue
      n += 1
      pq += s["iou"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
      sq += s["iou"] / s["tp"] if s["tp"] != 0 else 0
      rq += s["tp"] / (s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"])
    results.update({"PQ" + name: 100 * pq / n, "SQ" + name: 100 * sq / n, "RQ" + name: 100 * rq / n})
  return results


# ------------------------------------------------------------- generated panoptic sets
def _random_gt_image(rng, h, w):
  ids = np.zeros((h, w), np.int64)
  segs, crowd_cats = [], set()  # COCO: at most one crowd region per category and image
  for k in range(rng.integers(4, 9)):
    cat = CATEGORIES[rng.integers(len(CATEGORIES))]
    y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
    y1, x1 = y0 + rng.integers(3, h // 2), x0 + rng.integers(3, w // 2)
    sid = int(rng.integers(1, 2 ** 24 - 1))
    ids[y0:y1, x0:x1] = sid
    crowd = int(cat["isthing"] and cat["id"] not in crowd_cats and rng.random() < 0.25)
    crowd_cats |= {cat["id"]} if crowd else set()
    segs.append({"id": sid, "category_id": cat["id"], "iscrowd": crowd})
  present = set(np.unique(ids).tolist())
  segs = [dict(s, area=int((ids == s["id"]).sum()), bbox=[0, 0, 1, 1]) for s in segs if s["id"] in present]
  return ids, segs


def _perturb(rng, ids, segs, mode):
  """Prediction (ids, segments_info) derived from the ground truth."""
  if mode == "perfect":
    return ids.copy(), [{"id": s["id"], "category_id": s["category_id"]} for s in segs]
  if mode == "empty":
    return np.zeros_like(ids), []
  out = np.zeros_like(ids)
  pred = []
  if mode == "random":
    for _ in range(rng.integers(0, 8)):
      y0, x0 = rng.integers(0, ids.shape[0] - 2), rng.integers(0, ids.shape[1] - 2)
      sid = int(rng.integers(1, 1000))
      out[y0:y0 + rng.integers(2, 20), x0:x0 + rng.integers(2, 20)] = sid
      pred.append({"id": sid, "category_id": CATEGORIES[rng.integers(len(CATEGORIES))]["id"]})
  else:  # 'shifted': every GT segment (crowd and void included) moved, some relabelled, some dropped
    for s in segs:
      if rng.random() < 0.15:
        continue
      m = np.roll(ids == s["id"], (rng.integers(-3, 4), rng.integers(-3, 4)), (0, 1))
      sid = int(rng.integers(1, 2 ** 24 - 1))
      out[m] = sid
      cat = s["category_id"] if rng.random() < 0.8 else CATEGORIES[rng.integers(len(CATEGORIES))]["id"]
      pred.append({"id": sid, "category_id": cat})
  present = set(np.unique(out).tolist())
  seen, kept = set(), []
  for s in reversed(pred):
    if s["id"] in present and s["id"] not in seen:
      kept.append(s)
      seen.add(s["id"])
  return out, kept


def _write_set(root, name, images):
  d = root / name
  d.mkdir(parents=True, exist_ok=True)
  anns = []
  for iid, (ids, segs) in images.items():
    fn = f"{iid:06d}.png"
    Image.fromarray(panoptic_ids.id_to_rgb(ids)).save(d / fn)
    anns.append({"image_id": iid, "file_name": fn, "segments_info": segs})
  data = {"images": [{"id": i, "file_name": f"{i:06d}.jpg"} for i in images], "annotations": anns,
          "categories": CATEGORIES}
  (root / f"{name}.json").write_text(json.dumps(data))
  return str(root / f"{name}.json"), str(d)


@pytest.fixture(scope="module")
def gt_set(tmp_path_factory):
  rng = np.random.default_rng(1)
  root = tmp_path_factory.mktemp("pan")
  images = {i: _random_gt_image(rng, 48, 64) for i in range(1, 9)}
  return root, images, _write_set(root, "gt", images)


def test_panoptic_id_codec_matches_panopticapi_rule_and_round_trips():
  """id = R + 256 G + 256^2 B (panopticapi rgb2id) on hand values, uint8 input without wrapping, the inverse on
  random ids, and an id that three 8-bit channels cannot hold refused."""
  hand = {(0, 0, 0): 0, (1, 0, 0): 1, (0, 1, 0): 256, (0, 0, 1): 65536, (1, 2, 3): 1 + 2 * 256 + 3 * 65536,
          (255, 255, 255): 16777215, (7, 0, 26): 7 + 26 * 65536}
  colours = np.array(list(hand), np.uint8)[None]  # [1, 7, 3] uint8, as a PNG decodes
  np.testing.assert_array_equal(panoptic_ids.rgb_to_id(colours), [list(hand.values())])
  np.testing.assert_array_equal(panoptic_ids.rgb_to_id(colours), _ref_rgb2id(colours))
  np.testing.assert_array_equal(panoptic_ids.id_to_rgb(np.array(list(hand.values()))), np.array(list(hand)))
  ids = np.random.default_rng(0).integers(0, panoptic_ids.MAX_ID + 1, (5, 7))
  rgb = panoptic_ids.id_to_rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
  np.testing.assert_array_equal(panoptic_ids.rgb_to_id(rgb), ids)
  for bad in (-1, panoptic_ids.MAX_ID + 1):
    with pytest.raises(ValueError, match="0..16777215"):
      panoptic_ids.id_to_rgb(np.array([[0, bad]]))


@pytest.mark.parametrize("mode", ["perfect", "empty", "random", "shifted"])
def test_pq_equals_panopticapi_transcription(gt_set, mode):
  root, images, (gt_json, gt_dir) = gt_set
  rng = np.random.default_rng(len(mode))
  preds = {i: _perturb(rng, ids, segs, mode) for i, (ids, segs) in images.items()}
  pred_json, pred_dir = _write_set(root, f"pred_{mode}", preds)
  ours = evaluate_predictions.evaluate("panoptic", gt_json=gt_json, gt_dir=gt_dir, pred_json=pred_json,
                                        pred_dir=pred_dir)
  ref = ref_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
  for key, value in ref.items():
    assert ours[key] == pytest.approx(value, abs=1e-6), key
  if mode == "perfect":
    assert ours["PQ"] == pytest.approx(100.0)
  if mode == "empty":
    assert ours["PQ"] == 0.0


def test_pq_crowd_and_void_are_not_false_positives():
  """A prediction lying mostly on void + same-class crowd is ignored; on another class's crowd it is FP."""
  gt = np.zeros((10, 10), np.int64)
  gt[:, :5] = 7  # crowd of category 1
  gt[:, 5:] = 8  # non-crowd category 2
  gt_segs = [{"id": 7, "category_id": 1, "iscrowd": 1}, {"id": 8, "category_id": 2, "iscrowd": 0}]
  pred = np.zeros((10, 10), np.int64)
  pred[:, 5:] = 3
  pred[:, :4] = 4
  cats = {1: {"isthing": 1}, 2: {"isthing": 1}}
  for cat, fp in ((1, 0), (2, 1)):
    stat = panoptic.PQStat(cats)
    stat.add_image(gt, gt_segs, pred, [{"id": 3, "category_id": 2}, {"id": 4, "category_id": cat}])
    assert stat.tp.tolist() == [0, 1] and stat.fp.sum() == fp


def test_pq_on_coco_sample_with_dropped_segment(refdata, tmp_path):
  """Real COCO PNGs: GT vs itself is 100; dropping one thing segment gives exactly the reference."""
  r = refdata / "coco_panoptic_sample"
  data = json.loads((r / "panoptic_examples.json").read_text())
  ann = data["annotations"][0]
  ids = panoptic_ids.rgb_to_id(np.array(Image.open(r / "panoptic_examples" / ann["file_name"])))
  drop = next(s for s in ann["segments_info"] if s["iscrowd"] == 0)
  ids[ids == drop["id"]] = 0
  ann["segments_info"] = [s for s in ann["segments_info"] if s["id"] != drop["id"]]
  (tmp_path / "pred").mkdir()
  Image.fromarray(panoptic_ids.id_to_rgb(ids)).save(tmp_path / "pred" / ann["file_name"])
  for other in data["annotations"][1:]:
    (tmp_path / "pred" / other["file_name"]).write_bytes((r / "panoptic_examples" / other["file_name"]).read_bytes())
  (tmp_path / "pred.json").write_text(json.dumps(data))
  args = (str(r / "panoptic_examples.json"), str(r / "panoptic_examples"), str(tmp_path / "pred.json"),
          str(tmp_path / "pred"))
  ours = panoptic.pq_compute(*args)
  ref = ref_pq_compute(*args)
  assert ours["PQ"] < 100.0
  for key, value in ref.items():
    assert ours[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("problem", ["missing_png", "absent_segment", "duplicate_image", "unknown_category"])
def test_bad_panoptic_predictions_name_file_and_id(gt_set, tmp_path, problem):
  _, images, (gt_json, gt_dir) = gt_set
  preds = {i: _perturb(None, ids, segs, "perfect") for i, (ids, segs) in images.items()}
  pred_json, pred_dir = _write_set(tmp_path, "pred", preds)
  data = json.loads(pathlib.Path(pred_json).read_text())
  ann = data["annotations"][2]
  iid = ann["image_id"]
  if problem == "missing_png":
    (pathlib.Path(pred_dir) / ann["file_name"]).unlink()
    expect = [ann["file_name"], f"image_id {iid}", "missing"]
  elif problem == "absent_segment":
    ann["segments_info"].append({"id": 4242, "category_id": 1})
    expect = ["4242", f"image_id {iid}", "absent from the PNG"]
  elif problem == "duplicate_image":
    data["annotations"].append(dict(ann))
    expect = [f"image_id {iid}", "more than one"]
  else:
    ann["segments_info"][0]["category_id"] = 77
    expect = [f"image_id {iid}", "category_id 77", str(ann["segments_info"][0]["id"])]
  pathlib.Path(pred_json).write_text(json.dumps(data))
  proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_predictions.py"), "--task", "panoptic",
                         "--gt_json", gt_json, "--gt_dir", gt_dir, "--pred_json", pred_json, "--pred_dir", pred_dir],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 1 and proc.stdout == ""
  assert "pred.json" in proc.stderr
  for text in expect:
    assert text in proc.stderr, (text, proc.stderr)


# ------------------------------------------------------------- instance AP
def _cocoeval_stats(gt_path, results, iou_type):
  gt = coco_lib.COCO(gt_path)
  ev = cocoeval.COCOeval(gt, gt.loadRes(results), iou_type)
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return 100.0 * ev.stats[:3]


def test_ap_matches_published_cocoeval_numbers(refdata, capsys):
  r = refdata / "coco_instances_fake100"
  gt = str(r / "instances_val2014_100.json")
  segm = evaluate_predictions.evaluate("instance", gt_json=gt,
                                        pred_json=str(r / "instances_val2014_fakesegm100_results.json"))
  bbox = evaluate_predictions.evaluate("instance", gt_json=gt, iou_type="bbox",
                                        pred_json=str(r / "instances_val2014_fakebbox100_results.json"))
  expected = {"segm": (0.320, 0.562, 0.299, 0.387, 0.310, 0.327), "bbox": (0.505, 0.697, 0.573, 0.586, 0.519, 0.501)}
  for ours, exp in ((segm, expected["segm"]), (bbox, expected["bbox"])):
    got = [ours[k] / 100 for k in instance.STAT_NAMES]
    np.testing.assert_allclose(got, exp, atol=5e-4)
  ref = _cocoeval_stats(gt, str(r / "instances_val2014_fakesegm100_results.json"), "segm")
  np.testing.assert_allclose([segm["AP"], segm["AP50"], segm["AP75"]], ref, atol=1e-6)


@pytest.mark.parametrize("mode", ["perfect", "random", "jittered"])
def test_ap_equals_cocoeval_on_generated_results(refdata, tmp_path, mode):
  r = refdata / "coco_instances_small"
  gt_path = str(r / "gt_dataset.json")
  gt = coco_lib.COCO(gt_path)
  rng = np.random.default_rng(3)
  results = []
  for ann in gt.dataset["annotations"]:
    m = gt.annToMask(ann).astype(bool)
    if mode == "random":
      m = np.zeros_like(m)
      y, x = rng.integers(0, m.shape[0] - 40), rng.integers(0, m.shape[1] - 40)
      m[y:y + 40, x:x + 40] = True
    elif mode == "jittered":
      m = np.roll(m, (rng.integers(-6, 7), rng.integers(-6, 7)), (0, 1))
    results += instance.encode_results(ann["image_id"], m[None], [rng.random()], [ann["category_id"]])
  for iou_type in ("segm", "bbox"):
    ours = instance.coco_evaluate(gt_path, results, iou_type)
    ref = _cocoeval_stats(gt_path, [{k: v for k, v in x.items() if k != ("bbox" if iou_type == "segm" else
                                                                         "segmentation")} for x in results],
                          iou_type)
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP75"]], ref, atol=1e-6)
    if mode == "perfect":
      assert ours["AP"] == pytest.approx(100.0)


def test_ap_on_part_of_the_images_equals_ap_against_their_ground_truth_alone(refdata, tmp_path):
  """Results for 20 of 100 images, evaluated on those images (`image_ids`), score what they score against a
  ground truth holding only those images; without `image_ids` the other 80 images count as missed."""
  r = refdata / "coco_instances_fake100"
  data = json.loads((r / "instances_val2014_100.json").read_text())
  ids = sorted(im["id"] for im in data["images"])[:20]
  alone = dict(data, images=[im for im in data["images"] if im["id"] in ids],
               annotations=[a for a in data["annotations"] if a["image_id"] in ids])
  (tmp_path / "alone.json").write_text(json.dumps(alone))
  for iou_type in ("segm", "bbox"):
    results = json.loads((r / f"instances_val2014_fake{iou_type}100_results.json").read_text())
    part = [x for x in results if x["image_id"] in ids]
    ours = instance.coco_evaluate(data, part, iou_type, image_ids=ids)
    ref = _cocoeval_stats(str(tmp_path / "alone.json"), part, iou_type)
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP75"]], ref, atol=1e-6)
    assert instance.coco_evaluate(data, part, iou_type)["AP"] < ours["AP"] - 5


def test_gt_boxes_from_masks_when_absent(refdata):
  data = json.loads((refdata / "coco_instances_small" / "gt_dataset.json").read_text())
  for a in data["annotations"]:
    del a["bbox"]
  gt = instance.load_ground_truth(data)
  for a in gt.dataset["annotations"]:
    ys, xs = np.nonzero(gt.annToMask(a))
    np.testing.assert_allclose(a["bbox"], [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])


def test_bad_instance_results_name_file_and_id(refdata, tmp_path):
  r = refdata / "coco_instances_small"
  results = json.loads((r / "dt_dataset_segm_rle_results.json").read_text())
  results[1]["category_id"] = 999
  bad = tmp_path / "res.json"
  bad.write_text(json.dumps(results))
  with pytest.raises(ValueError, match=r"res\.json: result 1 .*category_id 999"):
    instance.coco_evaluate(str(r / "gt_dataset.json"), str(bad), "segm")


# ------------------------------------------------------------- semantic mIoU
def _numpy_miou(preds, labels, k, ignore):
  inter = np.zeros(k)
  union = np.zeros(k)
  gt_area = np.zeros(k)
  correct = total = 0
  for p, g in zip(preds, labels):
    v = g != ignore
    p, g = p[v], g[v]
    correct += (p == g).sum()
    total += g.size
    for c in range(k):
      inter[c] += ((p == c) & (g == c)).sum()
      union[c] += ((p == c) | (g == c)).sum()
      gt_area[c] += (g == c).sum()
  present = union > 0
  iou = inter[present] / union[present]
  return 100 * iou.mean(), 100 * correct / total, 100 * (iou * gt_area[present] / gt_area.sum()).sum()


def test_miou_equals_numpy_confusion(tmp_path):
  rng = np.random.default_rng(5)
  k = 6
  labels = [rng.integers(0, k + 1, (20, 30)) for _ in range(4)]
  labels = [np.where(g == k, 255, g) for g in labels]
  preds = [np.where(rng.random(g.shape) < 0.6, np.where(g == 255, 0, g), rng.integers(0, k, g.shape)) for g in labels]
  (tmp_path / "gt").mkdir()
  (tmp_path / "pred").mkdir()
  for i, (p, g) in enumerate(zip(preds, labels)):
    Image.fromarray(g.astype(np.uint8)).save(tmp_path / "gt" / f"{i}.png")
    Image.fromarray(p.astype(np.uint8)).save(tmp_path / "pred" / f"{i}.png")
  ours = evaluate_predictions.evaluate("semantic", gt_dir=str(tmp_path / "gt"), pred_dir=str(tmp_path / "pred"),
                                        num_classes=k)
  miou, acc, fwiou = _numpy_miou(preds, labels, k, 255)
  assert ours["mIoU"] == pytest.approx(miou, abs=1e-9)
  assert ours["pixel_acc"] == pytest.approx(acc, abs=1e-9)
  assert ours["fwIoU"] == pytest.approx(fwiou, abs=1e-9)
  parts = [semantic.SemanticConfusion.from_model_output(p, g, k) for p, g in zip(preds, labels)]
  merged = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))
  assert merged.compute()["mIoU"] == pytest.approx(miou, abs=1e-9)


def test_miou_on_ade_sample(refdata, tmp_path):
  """ADE devkit sample: predictions identical to annotations give 100; shifted ones match numpy."""
  s = refdata / "ade20k_sample" / "sampleData"
  perfect = evaluate_predictions.evaluate("semantic", gt_dir=str(s / "annotations"), pred_dir=str(s / "predictions"),
                                           num_classes=150, reduce_zero_label=True)
  assert perfect["mIoU"] == pytest.approx(100.0) and perfect["pixel_acc"] == pytest.approx(100.0)
  preds, labels = [], []
  for f in sorted((s / "annotations").iterdir()):
    g = np.array(Image.open(f)).astype(np.int64)
    p = np.roll(np.array(Image.open(s / "predictions" / f.name)), 7, axis=1)
    p[:5] = 0
    Image.fromarray(p).save(tmp_path / f.name)
    labels.append(np.where(g == 0, 255, g - 1))
    preds.append(p.astype(np.int64) - 1)
  ours = evaluate_predictions.evaluate("semantic", gt_dir=str(s / "annotations"), pred_dir=str(tmp_path),
                                        num_classes=150, reduce_zero_label=True)
  miou, acc, _ = _numpy_miou(preds, labels, 150, 255)
  assert ours["mIoU"] == pytest.approx(miou, abs=1e-9)
  assert ours["pixel_acc"] == pytest.approx(acc, abs=1e-9)


def test_semantic_missing_prediction_names_file(tmp_path):
  (tmp_path / "gt").mkdir()
  (tmp_path / "pred").mkdir()
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gt" / "a.png")
  with pytest.raises(FileNotFoundError, match=r"pred/a\.png"):
    evaluate_predictions.evaluate_semantic(str(tmp_path / "gt"), str(tmp_path / "pred"), 3)


def test_chance_iou_equals_uniform_random_labelling():
  """The closed form against simulation: random labels over K classes scored by our confusion matrix."""
  rng = np.random.default_rng(0)
  k = 5
  gt = rng.choice(k, size=400_000, p=[0.5, 0.3, 0.15, 0.05, 0.0])
  counts = np.bincount(gt, minlength=k)
  chance = semantic.chance_iou(counts)
  simulated = semantic.metrics_from_confusion(semantic.confusion_matrix(rng.integers(0, k, gt.size), gt, k))["IoU"]
  np.testing.assert_allclose(chance[:4], simulated[:4], rtol=0.02)
  assert chance[4] == 0 and simulated[4] == 0  # absent class: predicted all the same, never right
  assert np.isnan(semantic.chance_iou([0, 0])).all()
  np.testing.assert_allclose(semantic.chance_iou([1, 1]), [100 / 3, 100 / 3])  # (1/2) / (1 + 1 - 1/2)


def test_mask_ap_takes_areas_from_masks_and_leaves_undefined_ranges_out():
  """Two images, one small object each, found; a false positive (a small mask whose 'bbox' covers the image)
  ranks above each hit. Scored by its mask area, the false positive counts in APs; pycocotools given the raw results
  takes its area from the 'bbox' (large) and ignores it in APs. No object is large, so APl is undefined: left out,
  not reported as -1."""
  gt = {"images": [{"id": i, "height": 200, "width": 200} for i in (1, 2)],
        "categories": [{"id": 1, "name": "thing"}], "annotations": []}
  results = []
  for i in (1, 2):
    hit, false = np.zeros((200, 200), bool), np.zeros((200, 200), bool)
    hit[20:40, 20:40] = True
    false[150:170, 150:170] = True
    gt["annotations"].append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 400.0,
                              "bbox": [20.0, 20.0, 20.0, 20.0],
                              "segmentation": instance.encode_results(i, hit[None], [1.0], [1])[0]["segmentation"]})
    results += instance.encode_results(i, np.stack([hit, false]), [0.5, 0.9], [1, 1])
    results[-1]["bbox"] = [0.0, 0.0, 200.0, 200.0]
  ours = instance.coco_evaluate(gt, results, "segm")
  assert "APl" not in ours and {"AP", "AP50", "AP75", "APs"} <= set(ours)
  assert ours["APs"] < 60.0
  raw = coco_lib.COCO()
  raw.dataset = gt
  raw.createIndex()
  ev = cocoeval.COCOeval(raw, raw.loadRes(results), "segm")
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  assert ev.stats[3] == pytest.approx(1.0) and ev.stats[5] == -1  # APs 100 and APl -1 when passed raw
  assert ours["AP"] == pytest.approx(100 * ev.stats[0])
