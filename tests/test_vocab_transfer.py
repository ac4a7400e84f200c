"""Transfer benchmarks: converted labels read back through the real readers, and their names files."""
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from data_pipelines import pipeline
from data_pipelines import readers
from data_pipelines import registry
from data_pipelines import transfer
from dataseg_jax import config as config_lib
from dataseg_jax.vocab import names as names_lib
from dataseg_jax.vocab import vocabulary

REPO = pathlib.Path(__file__).resolve().parents[1]

tf = pytest.importorskip("tensorflow")

# A few Cityscapes classes by labelId, from the dataset's documentation (independent of the trainId table).
CITYSCAPES_BY_LABEL_ID = {7: "road", 11: "building", 24: "person", 26: "car", 33: "bicycle"}
# Class names at a few 16-bit .tif values, from the sources (independent of our names files): Pascal Context's
# labels as ODISE's openseg_labels/pascal_context_459.txt lists them (raw label = value + 1), and MaskFormer's
# ADE20K_SEM_SEG_FULL_CATEGORIES by trainId (first name).
PASCAL_CONTEXT459_BY_VALUE = {0: "accordion", 255: "monkey", 283: "person", 299: "plume", 458: "wool"}
ADE847_BY_TRAIN_ID = {0: "wall", 11: "person", 255: "pier", 299: "coffee maker", 846: "adding machine"}
# mmsegmentation's tools/dataset_converters/pascal_context.py: the raw 459-label values of the 59 classes (+ 0).
PASCAL_CONTEXT59_RAW = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
                        420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72,
                        458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]
D2_LAYOUT = {"pascal_context459": ("images/validation", "annotations_ctx459/validation"),
             "ade847": ("images_detectron2/validation", "annotations_detectron2/validation")}


def _config(tmp_path, key, prepared, **kw):
  c = config_lib.base_config()
  c.data_dir = str(tmp_path)
  c.data.datasets = ml_collections.ConfigDict({key: config_lib.dataset_entry(**transfer.entry_kwargs(key, prepared,
                                                                                                         **kw))})
  return c


def _decoded_classes(config, key):
  """(index, {image stem: dataset-local class per pixel, -1 void}) as tf.data decodes the val split."""
  index = registry.build_index(config, key, "val")
  tables = pipeline.Tables(index)
  e = config.data.datasets[key]
  out = {}
  for r in range(len(index)):
    ex = pipeline.decode_example(index, tables, tf.constant(r, tf.int64), e.reduce_zero_label)
    idmap, seg_class = ex["idmap"].numpy(), ex["seg_class"].numpy()
    out[pathlib.Path(index.image_paths[r]).stem] = np.where(idmap >= 0, seg_class[np.maximum(idmap, 0)], -1)
  return index, out


def _rng_image(path, h, w, seed):
  Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _voc_root(tmp_path, values) -> dict:
  root = tmp_path / "VOC2012"
  for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    (root / d).mkdir(parents=True)
  labels = {}
  for i, name in enumerate(["2007_000032", "2007_000039"]):
    _rng_image(root / "JPEGImages" / f"{name}.jpg", 6, 8, i)
    lab = np.random.default_rng(10 + i).choice(values, (6, 8)).astype(np.uint8)
    im = Image.fromarray(lab, mode="P")
    im.putpalette(list(np.random.default_rng(0).integers(0, 255, 768, dtype=np.uint8)))  # colours, not classes
    im.save(root / "SegmentationClass" / f"{name}.png")
    labels[name] = lab.astype(np.int32)
  (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000039\n")
  return labels


@pytest.mark.parametrize("key", ["voc21", "voc20"])
def test_voc_labels_read_back_as_class_indices_with_borders_ignored(tmp_path, key):
  labels = _voc_root(tmp_path, [0, 1, 5, 20, 255])
  assert transfer.PREPARE[key](tmp_path / "VOC2012", tmp_path / key) == 2
  index, idmaps = _decoded_classes(_config(tmp_path, key, key), key)
  for stem, lab in labels.items():
    expected = np.where(lab == 255, -1, lab) if key == "voc21" else np.where((lab == 0) | (lab == 255), -1, lab - 1)
    np.testing.assert_array_equal(idmaps[stem], expected)
  vocab = registry.dataset_vocab(registry.resolve_entry(_config(tmp_path, key, key), key))
  first = vocab.names.index("aeroplane")
  assert (first, len(vocab.names), vocab.names[-1]) == ((1, 21, "tv monitor") if key == "voc21" else (0, 20, "tv monitor"))
  assert sum(vocab.is_thing) == 20


def test_pascal_context59_labels_and_unexpected_values(tmp_path):
  root = tmp_path / "VOC2010"
  for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
    (root / d).mkdir(parents=True)
  _rng_image(root / "JPEGImages/2008_000002.jpg", 5, 7, 0)
  lab = np.random.default_rng(1).integers(0, 60, (5, 7)).astype(np.uint8)
  Image.fromarray(lab, mode="L").save(root / "SegmentationClassContext/2008_000002.png")
  (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
  transfer.prepare_pascal_context59(root, tmp_path / "pc59")
  _, idmaps = _decoded_classes(_config(tmp_path, "pascal_context59", "pc59"), "pascal_context59")
  np.testing.assert_array_equal(idmaps["2008_000002"], lab.astype(np.int32) - 1)
  lab[0, 0] = 60
  Image.fromarray(lab, mode="L").save(root / "SegmentationClassContext/2008_000002.png")
  with pytest.raises(ValueError, match=r"2008_000002.png: label values \[60\] are not in this benchmark"):
    transfer.prepare_pascal_context59(root, tmp_path / "pc59")


def _d2_root(tmp_path, key, values, labels=None) -> dict:
  """detectron2 sem_seg layout of `key`: two images with 16-bit .tif labels holding every value of `values`
  (plus a third whose label is all 65535 = ignore); `labels` {stem: array} overrides them. -> {stem: label}."""
  root = tmp_path / "native"
  images, label_dir = (root / d for d in D2_LAYOUT[key])
  images.mkdir(parents=True, exist_ok=True)
  label_dir.mkdir(parents=True, exist_ok=True)
  if labels is None:
    labels = {}
    for i, stem in enumerate(["img_0001", "img_0002"]):
      lab = np.random.default_rng(20 + i).choice(values, (6, 8))
      lab[0, :len(values)] = values
      labels[stem] = lab
    labels["img_0003"] = np.full((6, 8), transfer.D2_IGNORE)
  for i, (stem, lab) in enumerate(labels.items()):
    _rng_image(images / f"{stem}.jpg", *lab.shape, i)
    Image.fromarray(lab.astype(np.uint16)).save(label_dir / f"{stem}.tif")
  return labels


@pytest.mark.parametrize("key,by_value", [("pascal_context459", PASCAL_CONTEXT459_BY_VALUE),
                                          ("ade847", ADE847_BY_TRAIN_ID)])
def test_16bit_labels_keep_class_ids_above_255_through_the_pipeline(tmp_path, key, by_value):
  labels = _d2_root(tmp_path, key, [0, 254, 255, 256, 299, max(by_value), transfer.D2_IGNORE])
  assert transfer.PREPARE[key](tmp_path / "native", tmp_path / key) == 2  # the all-ignore image is left out
  index, classes = _decoded_classes(_config(tmp_path, key, key), key)
  assert sorted(classes) == ["img_0001", "img_0002"]
  for stem, got in classes.items():
    np.testing.assert_array_equal(got, np.where(labels[stem] == transfer.D2_IGNORE, -1, labels[stem]))
    assert {255, 256, 299, max(by_value)} <= set(got.ravel().tolist())
  assert len(index.vocab.names) == max(by_value) + 1 and not any(index.vocab.is_thing)
  assert {v: vocabulary.normalise_name(index.vocab.names[v]) for v in by_value} == by_value


def test_evaluation_ground_truth_keeps_class_255(tmp_path):
  from dataseg_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  labels = _d2_root(tmp_path, "ade847", None, {"img_0001": np.array([[255, 256], [65535, 3]])})
  transfer.prepare_ade847(tmp_path / "native", tmp_path / "ade847")
  config = _config(tmp_path, "ade847", "ade847")
  ev = evaluator._DatasetEval(config, registry.build_vocab(config), "ade847", ("semantic",), str(tmp_path / "eval"))
  gt, lab = ev.ground_truth.semantic(0, ev.index.image_ids[0]), labels["img_0001"]
  np.testing.assert_array_equal(gt == evaluator.IGNORE, lab == transfer.D2_IGNORE)  # void exactly where ignored
  np.testing.assert_array_equal(gt[lab != transfer.D2_IGNORE], lab[lab != transfer.D2_IGNORE])


@pytest.mark.parametrize("key", sorted(transfer.WIDE_SEMANTIC))
def test_16bit_converters_refuse_values_outside_the_classes_and_8bit_labels(tmp_path, key):
  k = len(names_lib.read_names(transfer.names_file(transfer.WIDE_SEMANTIC[key])))
  _d2_root(tmp_path, key, None, {"img_0001": np.array([[0, k], [k - 1, transfer.D2_IGNORE]])})
  with pytest.raises(ValueError, match=rf"img_0001.tif: label values \[{k}\] are not in this benchmark's {k}"):
    transfer.PREPARE[key](tmp_path / "native", tmp_path / key)
  label = tmp_path / "native" / D2_LAYOUT[key][1] / "img_0001.tif"
  Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="L").save(label)
  with pytest.raises(ValueError, match="label mode L; expected 16-bit class indices"):
    transfer.PREPARE[key](tmp_path / "native", tmp_path / key)


def _semantic_png_config(tmp_path, names, label: np.ndarray):
  """A semantic_png evaluation entry over one image and its label PNG (8-bit or 16-bit by the array's dtype)."""
  root = tmp_path / "sem"
  for d in ("images/validation", "annotations/validation"):
    (root / d).mkdir(parents=True)
  _rng_image(root / "images/validation/a.jpg", *label.shape, 0)
  Image.fromarray(label).save(root / "annotations/validation/a.png")
  c = config_lib.base_config()
  c.data_dir = str(tmp_path)
  c.data.datasets = ml_collections.ConfigDict({"sem": config_lib.dataset_entry(
      format="semantic_png", task="semantic", reduce_zero_label=True, ratio=0.0, names=names,
      val_images="sem/images/validation", val_annotations="sem/annotations/validation", eval_tasks=("semantic",))})
  return c


def test_semantic_png_refuses_more_than_255_classes(tmp_path):
  config = _semantic_png_config(tmp_path, transfer.names_file("pascal_context459.txt"), np.ones((4, 4), np.uint8))
  with pytest.raises(ValueError, match="at most 255 classes.*has 459 classes"):
    registry.build_index(config, "sem", "val")


def test_semantic_png_refuses_16bit_labels_that_tf_would_read_as_other_classes(tmp_path):
  label = np.array([[1, 300], [20, 2]], np.uint16)
  config = _semantic_png_config(tmp_path, transfer.names_file("voc21.txt"), label)
  png = tmp_path / "sem/annotations/validation/a.png"
  assert readers.png_bit_depth(png) == 16
  decoded = tf.io.decode_png(png.read_bytes(), channels=1)[..., 0].numpy()
  assert decoded[0, 1] != 300  # what the 8-bit decode would have trained and evaluated on
  with pytest.raises(ValueError, match="a.png: 16-bit label PNG"):
    registry.build_index(config, "sem", "val")


def _cityscapes_root(tmp_path) -> pathlib.Path:
  root = tmp_path / "cityscapes"
  for split_city in ("leftImg8bit/val/frankfurt", "leftImg8bit/val/lindau", "gtFine/val/frankfurt", "gtFine/val/lindau"):
    (root / split_city).mkdir(parents=True)
  for i, stem in enumerate(["frankfurt_000000_000294", "lindau_000001_000019"]):
    city = stem.split("_")[0]
    _rng_image(root / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png", 4, 6, i)
    lab = np.random.default_rng(i).choice([0, 1, 4, 7, 11, 24, 26, 33], (4, 6)).astype(np.uint8)
    Image.fromarray(lab, mode="L").save(root / f"gtFine/val/{city}/{stem}_gtFine_labelIds.png")
  return root


def test_cityscapes_label_ids_become_the_19_train_classes(tmp_path):
  root = _cityscapes_root(tmp_path)
  assert transfer.prepare_cityscapes(root, tmp_path / "cs") == 2
  config = _config(tmp_path, "cityscapes", "cs")
  index, idmaps = _decoded_classes(config, "cityscapes")
  names = index.vocab.names
  assert len(names) == 19 and sum(index.vocab.is_thing) == 8
  for stem, idmap in idmaps.items():
    lab = np.asarray(Image.open(next(root.glob(f"gtFine/val/*/{stem}_gtFine_labelIds.png"))))
    for label_id in np.unique(lab):
      got = set(idmap[lab == label_id].tolist())
      if label_id in CITYSCAPES_BY_LABEL_ID:
        assert [names[k] for k in got] == [CITYSCAPES_BY_LABEL_ID[label_id]]
      else:
        assert got == {-1}


def test_cityscapes_panoptic_json_gets_integer_ids_and_flat_images(tmp_path):
  root = _cityscapes_root(tmp_path)
  png_dir = root / "gtFine/cityscapes_panoptic_val"
  png_dir.mkdir()
  cats = [{"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128], "supercategory": "flat"},
          {"id": 26, "name": "car", "isthing": 1, "color": [0, 0, 142], "supercategory": "vehicle"}]
  images, anns = [], []
  for stem in ["lindau_000001_000019", "frankfurt_000000_000294"]:
    ids = np.zeros((4, 6), np.int64)
    ids[:2], ids[2:, :3] = 7, 26 * 1000 + 1
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(png_dir / f"{stem}_gtFine_panoptic.png")
    images.append({"id": stem, "width": 6, "height": 4, "file_name": f"{stem}_gtFine_leftImg8bit.png"})
    anns.append({"image_id": stem, "file_name": f"{stem}_gtFine_panoptic.png", "segments_info": [
        {"id": 7, "category_id": 7, "area": 12, "bbox": [0, 0, 6, 2], "iscrowd": 0},
        {"id": 26001, "category_id": 26, "area": 6, "bbox": [0, 2, 3, 2], "iscrowd": 0}]})
  (root / "gtFine/cityscapes_panoptic_val.json").write_text(json.dumps(
      {"images": images, "annotations": anns, "categories": cats}))
  assert transfer.prepare_cityscapes_panoptic(root, tmp_path / "csp") == 2
  data = json.loads((tmp_path / "csp/panoptic_val.json").read_text())
  assert [im["id"] for im in data["images"]] == [1, 2]
  assert {a["image_id"] for a in data["annotations"]} == {1, 2}
  index = registry.build_index(_config(tmp_path, "cityscapes_panoptic", "csp"), "cityscapes_panoptic", "val")
  assert len(index) == 2 and list(index.vocab.names) == ["road", "car"]
  assert pathlib.Path(index.image_paths[0]).name == "frankfurt_000000_000294_leftImg8bit.png"


def test_transfer_names_files_are_valid_vocabularies():
  counts = {"voc21.txt": 21, "voc_things.txt": 20, "pascal_context59.txt": 59, "pascal_context459.txt": 459,
            "cityscapes19.txt": 19, "cityscapes_things.txt": 8, "ade847.txt": 847}
  read = {f: names_lib.read_names(transfer.names_file(f)) for f in counts}  # also: no duplicate after normalising
  assert {f: len(n) for f, n in read.items()} == counts
  assert set(read["voc_things.txt"]) == set(read["voc21.txt"][1:])
  assert set(read["cityscapes_things.txt"]) <= set(read["cityscapes19.txt"])
  assert read["pascal_context459.txt"][:2] == ["accordion", "aeroplane"] and read["pascal_context459.txt"][-1] == "wool"
  pc459 = read["pascal_context459.txt"]
  assert [pc459[v - 1] for v in sorted(PASCAL_CONTEXT59_RAW)[1:]] == read["pascal_context59.txt"]
  ade847 = read["ade847.txt"]
  assert (ade847[0], ade847[-1]) == ("wall", "adding machine, totalizer, totaliser")
  assert (ade847[147], ade847[153]) == ("crt screen, screen", "screen, silver screen, projection screen")


def test_ade847_classes_sharing_a_first_name_are_led_by_a_synonym_as_documented():
  ade847 = names_lib.read_names(transfer.names_file("ade847.txt"))
  led_by_synonym = {130: "flowerpot, pot", 147: "crt screen, screen", 174: "wharf, pier, wharfage, dock",
                    191: "traveling bag, bag, travelling bag, grip, suitcase", 229: "grille, grill, grillwork",
                    252: "handbag, bag, pocketbook, purse", 280: "terrace, patio", 371: "basketball hoop, basket, hoop",
                    412: "tube, pipe", 768: "control board, control panel, instrument panel, board, panel"}
  assert {k: ade847[k] for k in led_by_synonym} == led_by_synonym
  kept = {114: "bag", 137: "basket, handbasket", 153: "screen, silver screen, projection screen", 188: "pot",
          208: "control panel", 214: "pipe, pipage, piping", 235: "patio", 255: "pier", 663: "grill"}
  assert {k: ade847[k] for k in kept} == kept
  ade150 = {vocabulary.normalise_name(n) for n in vocabulary.load_builtin("ade150")[0].names}
  assert {"crt screen", "screen", "basket"} <= ade150  # the tie-break follows ADE-150's names


def test_transfer_missing_inputs_say_what_layout_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/<split>.txt"):
    transfer.prepare_voc(tmp_path / "nowhere", tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=r"leftImg8bit/<split>/<city>"):
    transfer.prepare_cityscapes(tmp_path, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=r"images_detectron2/validation/NAME.jpg and annotations_detectron2"):
    transfer.prepare_ade847(tmp_path, tmp_path / "out")
  with pytest.raises(ValueError, match="unknown transfer benchmark 'mapillary'"):
    transfer.entry_kwargs("mapillary")
  proc = subprocess.run([sys.executable, "scripts/prepare_transfer.py", "--benchmark", "voc21", "--src",
                         str(tmp_path), "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 1 and proc.stderr.startswith("error: image list"), proc.stderr
