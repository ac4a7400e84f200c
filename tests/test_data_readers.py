"""Readers on the toy benchmark and on the real-format fixtures in ../shared/refdata."""
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from data_pipelines import pipeline
from data_pipelines import readers
from data_pipelines import registry
from data_pipelines.formats import coco_instances
from data_pipelines.formats import coco_panoptic
from data_pipelines.formats import semantic_png
from dataseg_jax import config as config_lib
from dataseg_jax.vocab import names as names_lib
from dataseg_jax.vocab import vocabulary
import test_data_common as common


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return common.write_toy(tmp_path_factory.mktemp("toy"))


def _decode(index, r, reduce_zero_label=True):
  tables = pipeline.Tables(index)
  ex = pipeline.decode_example(index, tables, tf.constant(r, tf.int64), reduce_zero_label)
  return {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ex.items()}


def test_toy_coco_json_loads_in_pycocotools(toy_dir):
  coco_lib = pytest.importorskip("pycocotools.coco")
  for name in ("train.json", "val.json", "val_instances.json"):
    coco = coco_lib.COCO(str(toy_dir / "toy_o365/annotations" / name))
    assert len(coco.getImgIds()) == (24 if name == "train.json" else 8)
    assert len(coco.getAnnIds()) > 0
  coco = coco_lib.COCO(str(toy_dir / "toy_o365/annotations/val_instances.json"))
  ann = coco.loadAnns(coco.getAnnIds())[0]
  assert coco.annToMask(ann).sum() == ann["area"]


def test_toy_layout_matches_config_paths(toy_dir):
  config = common.toy_config(toy_dir)
  for name in config.data.datasets:
    e = registry.resolve_entry(config, name)
    for key in ("train_images", "train_annotations", "train_panoptic_dir", "val_images",
                "val_annotations", "val_panoptic_dir", "val_instances", "names", "thing_classes"):
      if e[key]:
        assert (toy_dir / e[key]).exists(), (name, key, e[key])
  assert (toy_dir / "heldout_names.txt").read_text().split() == ["kitten", "parrot", "canoe", "beach"]
  assert (toy_dir / "toy_heldout/images/validation").is_dir()


def test_toy_vocab_has_shared_names_and_synonyms(toy_dir):
  union = registry.build_vocab(common.toy_config(toy_dir))
  assert union.datasets == ["toy_ade", "toy_coco", "toy_o365", "toy_heldout"]
  assert union.eval_only == ("toy_heldout",)
  rows = {n: i for i, n in enumerate(union.names)}
  assert "automobile" in rows and "car" in rows and "human" in rows
  assert union.class_mask[:, rows["sky"]].tolist() == [True, True, False, True]  # 'sky-other-merged' -> sky
  for d, k in enumerate(union.local_to_union):
    assert union.class_mask[d].sum() == len(k) == len(union.local_names[d])


def test_heldout_names_are_in_no_training_class_mask(toy_dir):
  """Evaluation-only entries come last; their own names are rows no training example can predict."""
  config = common.toy_config(toy_dir)
  union = registry.build_vocab(config)
  heldout = [union.names.index(n) for n in (toy_dir / "heldout_names.txt").read_text().split()]
  train = [union.dataset_index(n) for n in ("toy_ade", "toy_coco", "toy_o365")]
  assert min(heldout) == len(union.names) - len(heldout)  # after every training row
  assert not union.class_mask[np.ix_(train, heldout)].any()
  assert union.class_mask[union.dataset_index("toy_heldout"), heldout].all()
  # The training rows and masks do not depend on the evaluation-only entry.
  del config.data.datasets["toy_heldout"]
  alone = registry.build_vocab(config)
  assert alone.names == union.names[:len(alone.names)]
  np.testing.assert_array_equal(alone.class_mask, union.class_mask[:3, :len(alone.names)])
  # A ratio-0 entry without eval_tasks is unused: not in the vocabulary at all.
  config = common.toy_config(toy_dir)
  config.data.datasets.toy_heldout.eval_tasks = ()
  assert registry.build_vocab(config).datasets == ["toy_ade", "toy_coco", "toy_o365"]
  assert "kitten" not in registry.build_vocab(config).names


def test_toy_ade_panoptic_ground_truth_is_the_drawn_instances(toy_dir):
  """toy_ade's val panoptic PNG + JSON: RGB -> id decodes to segments whose class is the semantic label, stuff
  one segment per class, things one per instance (so it is finer than connected components)."""
  index = registry.build_index(common.toy_config(toy_dir), "toy_ade", "val")
  assert len(index.panoptic_gt) == len(index) == 8
  is_thing = np.asarray(index.vocab.is_thing)
  for r, gt in enumerate(index.panoptic_gt):
    label = np.asarray(Image.open(index.label_paths[r]), np.int64) - 1
    rgb = np.asarray(Image.open(gt["png"]), np.int64)
    np.testing.assert_array_equal(semantic_png.load_panoptic_gt(gt, label.shape),
                                  rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])
    ids = semantic_png.load_panoptic_gt(gt, label.shape)
    np.testing.assert_array_equal(ids > 0, label >= 0)  # void (0) exactly where the label is void
    classes = [s["class"] for s in gt["segments_info"]]
    for s in gt["segments_info"]:
      assert s["category_id"] == s["class"] + 1
      assert (label[ids == s["id"]] == s["class"]).all() and (ids == s["id"]).any()
    for k in np.unique(label[label >= 0]):
      assert classes.count(k) >= 1 and (is_thing[k] or classes.count(k) == 1)
  with open(index.panoptic_gt[0]["png"].rsplit("/", 2)[0] + "/panoptic_val.json") as f:
    data = json.load(f)
  assert [c["isthing"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(map(int, is_thing))


def test_panoptic_ground_truth_errors_name_the_file(toy_dir, tmp_path):
  config = common.toy_config(toy_dir)
  gt = registry.build_index(config, "toy_ade", "val").panoptic_gt[0]
  with pytest.raises(ValueError, match="panoptic PNG is .* but its image is"):
    semantic_png.load_panoptic_gt(gt, (3, 3))
  bad_png = tmp_path / "bad.png"
  bad_png.write_bytes(b"not a png")
  with pytest.raises(ValueError, match="bad.png: panoptic PNG does not decode"):
    semantic_png.load_panoptic_gt(dict(gt, png=str(bad_png)))
  doc = json.loads((toy_dir / "toy_ade/panoptic_val.json").read_text())
  doc["annotations"] = doc["annotations"][1:]
  doc["categories"] = doc["categories"][:-1]
  (tmp_path / "pan.json").write_text(json.dumps(doc))
  config.data.datasets.toy_ade.val_panoptic_annotations = str(tmp_path / "pan.json")
  with pytest.raises(ValueError, match="pan.json has 11 categories but the dataset's names file has 12"):
    registry.build_index(config, "toy_ade", "val")
  doc["categories"] = json.loads((toy_dir / "toy_ade/panoptic_val.json").read_text())["categories"]
  (tmp_path / "pan.json").write_text(json.dumps(doc))
  bad = readers.BadInput("skip", "toy_ade/val")
  index = registry.build_index(config, "toy_ade", "val", bad=bad)
  assert len(index) == 7 and bad.counts == {"missing_panoptic_annotation": 1}
  assert "ADE_val_00000001.jpg has no annotation in" in bad.messages[0][1]
  config.data.datasets.toy_ade.val_panoptic_dir = ""
  with pytest.raises(ValueError, match=r"^config\.data\.datasets\.toy_ade\.val_panoptic_dir: is empty"):
    config_lib.validate(config)


def test_toy_panoptic_reader_areas_match_json(toy_dir):
  config = common.toy_config(toy_dir)
  index = registry.build_index(config, "toy_coco", "val")
  data = json.loads((toy_dir / "toy_coco/annotations/panoptic_val.json").read_text())
  ann = {a["image_id"]: a for a in data["annotations"]}[int(index.image_ids[0])]
  ex = _decode(index, 0)
  lo, hi = index.seg_splits[0], index.seg_splits[1]
  for row, sid in enumerate(index.seg_ids[lo:hi]):
    info = next(s for s in ann["segments_info"] if s["id"] == sid)
    expected = 0 if info["iscrowd"] else info["area"]
    assert (ex["idmap"] == row).sum() == expected


def test_panoptic_png_rgb_to_id_on_coco_sample(refdata):
  root = refdata / "coco_panoptic_sample"
  bad = readers.BadInput("error", "coco_sample")
  index = coco_panoptic.read("coco_sample", "val", root / "input_images", root / "panoptic_examples.json",
                             root / "panoptic_examples", bad)
  data = json.loads((root / "panoptic_examples.json").read_text())
  assert len(index) == 2
  for r in range(len(index)):
    ex = _decode(index, r)
    png = np.asarray(Image.open(index.label_paths[r]), np.int64)
    pid = png[..., 0] + 256 * png[..., 1] + 256 ** 2 * png[..., 2]
    ann = next(a for a in data["annotations"] if a["image_id"] == index.image_ids[r])
    for row, sid in enumerate(index.seg_ids[index.seg_splits[r]:index.seg_splits[r + 1]]):
      info = next(s for s in ann["segments_info"] if s["id"] == sid)
      assert (pid == sid).sum() == info["area"]
      assert (ex["idmap"] == row).sum() == (0 if info["iscrowd"] else info["area"])
  cats = {c["id"]: c["name"] for c in data["categories"]}
  assert list(index.vocab.names) == [cats[i] for i in sorted(cats)]


def test_ade_sample_semantic_reader(refdata):
  root = refdata / "ade20k_sample/sampleData"
  vocab, _ = vocabulary.load_builtin("ade150")
  bad = readers.BadInput("error", "ade_sample")
  index = semantic_png.read("ade_sample", "val", root / "images", root / "annotations", vocab, bad)
  assert len(index) == 3
  for r in range(3):
    ex = _decode(index, r)
    label = np.asarray(Image.open(index.label_paths[r]), np.int32)
    np.testing.assert_array_equal(ex["idmap"], label - 1)
    assert ex["image"].shape == label.shape + (3,)


def test_ade_builtin_vocab_matches_objectinfo(refdata):
  names = names_lib.read_names(refdata / "ade20k_sample/objectInfo150.txt")
  ade, ids = vocabulary.load_builtin("ade150")
  assert list(ade.names) == names and ids == tuple(range(1, 151))
  assert sum(ade.is_thing) == 115
  coco, _ = vocabulary.load_builtin("coco133")
  assert len(coco.names) == 133 and sum(coco.is_thing) == 80
  o365, _ = vocabulary.load_builtin("objects365")
  assert len(set(vocabulary.normalise_name(n) for n in o365.names)) == 365


def test_a_names_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
  """Windows Notepad's UTF-8 starts with U+FEFF; kept, it would make '\ufeffsky' a class of its own."""
  (tmp_path / "bom.txt").write_bytes("sky\ngrass\n".encode("utf-8-sig"))
  assert names_lib.read_names(tmp_path / "bom.txt") == ["sky", "grass"]


def test_coco_instances_rasterised_like_pycocotools(refdata):
  coco_lib = pytest.importorskip("pycocotools.coco")
  root = refdata / "coco_instances_small"
  bad = readers.BadInput("error", "small")
  index = coco_instances.read("small", "val", root, root / "gt_dataset.json", bad)
  coco = coco_lib.COCO(str(root / "gt_dataset.json"))
  assert len(index) == len(coco.getImgIds())
  for r in range(len(index)):
    ex = _decode(index, r)
    anns = index.instance_anns[r]
    for j, ann in enumerate(anns):
      m = coco.annToMask(ann).astype(bool)
      painted = ex["idmap"] == j
      assert painted.sum() <= m.sum() and (painted & ~m).sum() == 0  # visible part of the mask
    np.testing.assert_allclose(index.boxes[index.seg_splits[r]:index.seg_splits[r + 1], 2:] -
                               index.boxes[index.seg_splits[r]:index.seg_splits[r + 1], :2],
                               [a["bbox"][2:] for a in anns], atol=1e-4)


def test_detection_reader_boxes_are_x0y0x1y1(toy_dir):
  config = common.toy_config(toy_dir)
  index = registry.build_index(config, "toy_o365", "train")
  data = json.loads((toy_dir / "toy_o365/annotations/train.json").read_text())
  assert len(index) == len(data["images"]) and len(index.boxes) == len(data["annotations"])
  first = [a for a in data["annotations"] if a["image_id"] == index.image_ids[0]]
  x, y, w, h = first[0]["bbox"]
  np.testing.assert_allclose(index.boxes[0], [x, y, x + w, y + h])


def test_overlapping_instances_smaller_on_top_polygon_and_rle(tmp_path):
  """coco_instances: masks are painted largest first, so where instances overlap the smaller one owns the
  pixel (whatever the JSON order); polygons, uncompressed and compressed RLE decode like pycocotools."""
  mask_utils = pytest.importorskip("pycocotools.mask")
  h, w = 20, 24
  Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.jpg")
  small = np.zeros((h, w), np.uint8)
  small[5:10, 6:12] = 1
  rle = mask_utils.encode(np.asfortranarray(small))
  rle["counts"] = rle["counts"].decode("ascii")
  crowd = np.zeros((h, w), np.uint8)
  crowd[15:19, 18:23] = 1
  col = crowd.T.reshape(-1)  # uncompressed RLE: run lengths in column-major order, starting with zeros
  change = np.flatnonzero(np.diff(np.concatenate([[0], col, [1 - col[-1]]])))
  counts = np.diff(np.concatenate([[0], change])).tolist()
  anns = [
      {"id": 1, "image_id": 1, "category_id": 2, "bbox": [6, 5, 6, 5], "area": 30, "iscrowd": 0, "segmentation": rle},
      {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 14, 12], "area": 168, "iscrowd": 0,
       "segmentation": [[2, 2, 16, 2, 16, 14, 2, 14]]},
      {"id": 3, "image_id": 1, "category_id": 1, "bbox": [18, 15, 5, 4], "area": 20, "iscrowd": 1,
       "segmentation": {"size": [h, w], "counts": counts}},
  ]
  doc = {"images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}], "annotations": anns,
         "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "chip"}]}
  (tmp_path / "inst.json").write_text(json.dumps(doc))
  index = coco_instances.read("t", "train", tmp_path, tmp_path / "inst.json", readers.BadInput("error", "t"))
  idmap = _decode(index, 0)["idmap"]
  big = mask_utils.decode(mask_utils.frPyObjects(anns[1]["segmentation"], h, w)).max(-1).astype(bool)
  expected = np.full((h, w), -1)
  expected[big] = 1
  expected[small.astype(bool)] = 0  # the smaller instance is on top
  np.testing.assert_array_equal(idmap, expected)  # the crowd region stays void
  assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(anns[2]["segmentation"], h, w)), crowd)


def test_palette_and_1bit_label_pngs_give_their_indices_like_pil(tmp_path):
  """VOC-style palette labels: training reads the palette indices (what PIL, and so the evaluator, reads),
  not the grey levels of the palette colours that tf.io.decode_png(channels=1) gives; 1-bit labels 0/1."""
  from data_pipelines import mixture  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  palette = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)]
  images, labels = {}, {}
  for i in range(3):
    lab = rng.integers(0, 5, (32, 64)).astype(np.uint8)
    lab[:4, :4] = 255  # void
    p = Image.fromarray(lab, mode="P")
    p.putpalette(palette)
    labels[f"p{i}.png"] = p
    images[f"p{i}.jpg"] = Image.fromarray(rng.integers(0, 256, (32, 64, 3), np.uint8))
  labels["b.png"] = Image.fromarray(rng.integers(0, 2, (32, 64)).astype(bool))  # mode '1'
  images["b.jpg"] = images["p0.jpg"]
  config = common.write_semantic_png(tmp_path, images, labels)
  config.data.on_bad_example = "error"
  index = registry.build_index(config, "tiny", "val")
  want = [np.array(Image.open(p)).astype(np.int32) for p in index.label_paths]
  assert Image.open(index.label_paths[-1]).mode == "P" and Image.open(index.label_paths[0]).mode == "1"
  assert any((tf.io.decode_png(open(p, "rb").read(), channels=1)[..., 0].numpy() != w).any()
             for p, w in zip(index.label_paths, want))  # the grey levels are other values
  for r, w in enumerate(want):  # eagerly
    np.testing.assert_array_equal(_decode(index, r, False)["idmap"], np.where(w == 255, -1, w))
  tables = pipeline.Tables(index)  # and inside tf.data (a graph)
  ds = tf.data.Dataset.range(len(index)).map(
      lambda r: pipeline.decode_example(index, tables, r, False)["idmap"])
  for got, w in zip(ds.as_numpy_iterator(), want):
    np.testing.assert_array_equal(got, np.where(w == 255, -1, w))
  vocab = registry.build_vocab(config)  # end to end: eval batches (64 px: no resize) carry those classes
  union = np.append(vocab.local_to_union[vocab.dataset_index("tiny")], -1)
  batches = list(mixture.eval_batches(config, vocab, "tiny"))
  seg_map = np.concatenate([b["segment_map"] for b in batches])
  seg_class = np.concatenate([b["seg_class"] for b in batches])
  for b, w in enumerate(want):
    got = np.where(seg_map[b] >= 0, np.take_along_axis(seg_class[b], np.maximum(seg_map[b], 0).ravel(), 0)
                   .reshape(seg_map[b].shape), -1)
    np.testing.assert_array_equal(got[:32], union[np.where(w == 255, -1, w)])
