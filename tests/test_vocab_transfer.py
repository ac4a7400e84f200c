"""Transfer benchmarks: converted labels read back through the real readers, and their names files."""
import json
import pathlib

import ml_collections
import numpy as np
from PIL import Image
import pytest

from data_pipelines import pipeline
from data_pipelines import registry
from data_pipelines import transfer
from dataseg_jax import config as config_lib
from dataseg_jax.vocab import names as names_lib

tf = pytest.importorskip("tensorflow")

# A few Cityscapes classes by labelId, from the dataset's documentation (independent of the trainId table).
CITYSCAPES_BY_LABEL_ID = {7: "road", 11: "building", 24: "person", 26: "car", 33: "bicycle"}


def _config(tmp_path, key, prepared, **kw):
  c = config_lib.base_config()
  c.data_dir = str(tmp_path)
  c.data.datasets = ml_collections.ConfigDict({key: config_lib.dataset_entry(**transfer.entry_kwargs(key, prepared,
                                                                                                         **kw))})
  return c


def _decoded_idmaps(config, key):
  index = registry.build_index(config, key, "val")
  tables = pipeline.Tables(index)
  e = config.data.datasets[key]
  out = {}
  for r in range(len(index)):
    ex = pipeline.decode_example(index, tables, tf.constant(r, tf.int64), e.reduce_zero_label)
    out[pathlib.Path(index.image_paths[r]).stem] = ex["idmap"].numpy()
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
  index, idmaps = _decoded_idmaps(_config(tmp_path, key, key), key)
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
  _, idmaps = _decoded_idmaps(_config(tmp_path, "pascal_context59", "pc59"), "pascal_context59")
  np.testing.assert_array_equal(idmaps["2008_000002"], lab.astype(np.int32) - 1)
  lab[0, 0] = 60
  Image.fromarray(lab, mode="L").save(root / "SegmentationClassContext/2008_000002.png")
  with pytest.raises(ValueError, match=r"2008_000002.png: label values \[60\] are not in this benchmark"):
    transfer.prepare_pascal_context59(root, tmp_path / "pc59")


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
  index, idmaps = _decoded_idmaps(config, "cityscapes")
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
            "cityscapes19.txt": 19, "cityscapes_things.txt": 8}
  read = {f: names_lib.read_names(transfer.names_file(f)) for f in counts}
  assert {f: len(n) for f, n in read.items()} == counts
  assert set(read["voc_things.txt"]) == set(read["voc21.txt"][1:])
  assert set(read["cityscapes_things.txt"]) <= set(read["cityscapes19.txt"])
  assert read["pascal_context459.txt"][:2] == ["accordion", "aeroplane"] and read["pascal_context459.txt"][-1] == "wool"
  assert set(read["pascal_context59.txt"]) <= set(read["pascal_context459.txt"])


def test_transfer_missing_inputs_say_what_layout_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/<split>.txt"):
    transfer.prepare_voc(tmp_path / "nowhere", tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=r"leftImg8bit/<split>/<city>"):
    transfer.prepare_cityscapes(tmp_path, tmp_path / "out")
  with pytest.raises(ValueError, match="unknown transfer benchmark 'ade847'"):
    transfer.entry_kwargs("ade847")
  with pytest.raises(SystemExit, match="error: image list"):
    transfer.main(["--benchmark", "voc21", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
