"""Bad data input never passes silently: a clear error naming the file, or a counted and logged skip."""
import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from data_pipelines import mixture
from data_pipelines import pipeline
from data_pipelines import registry
import test_data_common as common


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
  return common.write_toy(tmp_path_factory.mktemp("toy"), train=12, val=4, size=64)


def _single(data_dir, name, policy, batch=4):
  config = common.toy_config(data_dir, batch=batch)
  config.data.datasets = {name: config.data.datasets[name]}
  config.data.on_bad_example = policy
  return config


@pytest.fixture
def broken_ade(clean_dir, tmp_path):
  """toy_ade with a truncated JPEG (bad), a grayscale JPEG and an RGBA PNG (both fine) among its 12 training
  images."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_ade", root / "toy_ade")
  imgs = root / "toy_ade/images/training"
  data = (imgs / "ADE_train_00000002.jpg").read_bytes()
  (imgs / "ADE_train_00000002.jpg").write_bytes(data[: len(data) // 3])
  Image.open(imgs / "ADE_train_00000005.jpg").convert("L").save(imgs / "ADE_train_00000005.jpg")
  rgba = Image.open(imgs / "ADE_train_00000009.jpg").convert("RGBA")
  (imgs / "ADE_train_00000009.jpg").unlink()
  rgba.save(imgs / "ADE_train_00000009.png")
  return root


def test_missing_directory_names_the_path_and_layout(tmp_path):
  config = _single(tmp_path, "toy_ade", "skip")
  with pytest.raises(FileNotFoundError, match=r"toy_ade/images/training.*ADEChallengeData2016 layout"):
    registry.build_index(config, "toy_ade", "train")
  config = _single(tmp_path, "toy_coco", "skip")
  with pytest.raises(FileNotFoundError, match=r"toy_coco/train.*COCO panoptic layout"):
    registry.build_index(config, "toy_coco", "train")


def test_corrupt_image_is_skipped_grayscale_and_rgba_are_trained(broken_ade):
  config = _single(broken_ade, "toy_ade", "skip")
  vocab = registry.build_vocab(config)
  it = mixture.TrainIterator(config, vocab)
  n = 0
  while it.get_state()["consumed"]["toy_ade"] < 12:  # one full epoch
    batch = next(it)
    n += len(batch["image"])
    assert batch["image"].shape[-1] == 3
  assert it.bad_counts["toy_ade"]["undecodable_or_invalid"] == 1  # only the truncated JPEG
  assert it.get_state()["consumed"]["toy_ade"] == n + 1


def test_corrupt_image_is_an_error_naming_the_file(broken_ade):
  config = _single(broken_ade, "toy_ade", "error", batch=12)
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  with pytest.raises(ValueError, match=r"bad example.*ADE_train_00000002"):
    next(it)


def test_grayscale_rgba_and_cmyk_images_decode_to_rgb_like_pil(tmp_path):
  """Real COCO and ADE20K hold some grayscale JPEGs: they are trained and evaluated as RGB (grayscale
  replicated), as detectron2's PIL convert('RGB') reads them, not rejected as bad input."""
  y, x = np.mgrid[:24, :32]
  rgb = Image.fromarray(np.stack([8 * x, 10 * y, 255 - 4 * (x + y)], -1).astype(np.uint8))  # smooth colours
  images = {"gray.jpg": rgb.convert("L"), "gray.png": rgb.convert("L"), "rgba.png": rgb.convert("RGBA"),
            "cmyk.jpg": rgb.convert("CMYK"), "rgb.jpg": rgb}
  labels = {f.split(".")[0] + ".png": Image.fromarray(np.zeros((24, 32), np.uint8)) for f in images}
  config = common.write_semantic_png(tmp_path, images, labels)
  config.data.on_bad_example = "error"
  index = registry.build_index(config, "tiny", "train")
  tables = pipeline.Tables(index)
  for r, path in enumerate(index.image_paths):
    got = pipeline.decode_example(index, tables, tf.constant(r, tf.int64), False)["image"].numpy()
    with Image.open(path) as im:
      want = np.asarray(im.convert("RGB")).astype(int)
    assert got.shape == (24, 32, 3), path
    # PNGs are exact; the JPEG decoders of TF and PIL may differ by a few levels (as on any RGB JPEG)
    np.testing.assert_allclose(got, want, atol=0 if path.endswith(".png") else 4, err_msg=path)
    if "/gray." in path:
      assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all(), path
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  next(it)
  assert not it.bad_counts["tiny"]


def test_a_dataset_whose_every_example_fails_raises_instead_of_hanging(tmp_path):
  """With on_bad_example='skip' an endless stream of failures used to spin forever in ignore_errors; now
  the iterator stops after pipeline.MAX_CONSECUTIVE_BAD failures in a row with an error naming the
  dataset and the first failure. Run in a subprocess with a deadline, so a regression fails, not hangs."""
  rng = np.random.default_rng(0)
  images = {f"a{i}.jpg": Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)) for i in range(3)}
  labels = {f"a{i}.png": Image.fromarray(np.full((24, 32), 7, np.uint8)) for i in range(3)}  # class 7 of 5
  config = common.write_semantic_png(tmp_path, images, labels)
  (tmp_path / "config.json").write_text(config.to_json())
  code = textwrap.dedent(f"""
      import json, time, ml_collections
      from data_pipelines import mixture, registry
      config = ml_collections.ConfigDict(json.load(open({str(tmp_path / "config.json")!r})))
      assert config.data.on_bad_example == "skip"
      it = mixture.TrainIterator(config, registry.build_vocab(config))
      t = time.time()
      try:
        next(it)
        print("NO ERROR")
      except ValueError as e:
        print("ERROR", e)
      print("SECONDS", time.time() - t)
      """)
  try:
    out = subprocess.run([sys.executable, "-c", code], cwd=common.REPO, capture_output=True, text=True,
                         timeout=120, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail("the training iterator hangs on a dataset whose every example fails to decode")
  assert "ERROR dataset 'tiny'" in out.stdout, out.stdout + out.stderr[-3000:]
  assert "label value outside the 5 classes" in out.stdout and "tiny/annotations/training/a0.png" in out.stdout
  assert float(out.stdout.split("SECONDS")[-1]) < 60, out.stdout


@pytest.fixture
def broken_o365(clean_dir, tmp_path):
  """toy_o365 whose train JSON has each kind of bad annotation."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_o365", root / "toy_o365")
  path = root / "toy_o365/annotations/train.json"
  data = json.loads(path.read_text())
  anns = data["annotations"]
  first = anns[0]["image_id"]
  anns[0] = dict(anns[0], category_id=999)                     # unknown category
  anns[1] = dict(anns[1], bbox=[5, 5, 0, 10])                  # zero width
  anns[2] = dict(anns[2], bbox=[5, 5, -3, 10])                 # negative width
  anns[3] = dict(anns[3], bbox=[500, 500, 10, 10])             # outside the image
  last = data["images"][-1]["id"]
  data["annotations"] = [a for a in anns if a["image_id"] != last]  # an image with no annotations
  path.write_text(json.dumps(data))
  return root, first, last


def test_bad_annotations_are_counted_with_skip(broken_o365):
  root, _, last = broken_o365
  config = _single(root, "toy_o365", "skip")
  index = registry.build_index(config, "toy_o365", "train")
  assert index.skipped["unknown_category"] == 1
  assert index.skipped["degenerate_box"] == 2
  assert index.skipped["box_outside_image"] == 1
  assert index.skipped["empty_annotations"] >= 1 and last not in index.image_ids
  it = mixture.TrainIterator(config, registry.build_vocab(config))
  assert it.bad_counts["toy_o365"]["degenerate_box"] == 2
  batch = next(it)
  y0, x0, y1, x1 = np.moveaxis(batch["seg_box"][batch["seg_valid"]], -1, 0)
  assert ((y1 > y0) & (x1 > x0)).all()


def test_val_images_without_annotations_stay_for_evaluation_and_nested_file_names_are_found(clean_dir, tmp_path):
  """A val image with no annotation is evaluated (its false positives count, as COCOeval over the split counts
  them; COCO val2017 has 48); training skips it. A file_name with sub-folders (Objects365 v2's
  'images/v1/patch8/...') names a file under the images folder."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_o365", root / "toy_o365")
  for split, files in (("train", ["train"]), ("val", ["val", "val_instances"])):  # val reads val_instances
    for k, f in enumerate(files):
      path = root / f"toy_o365/annotations/{f}.json"
      data = json.loads(path.read_text())
      empty, moved = data["images"][0]["id"], data["images"][1]
      data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty]
      nested = root / "toy_o365" / split / "images/v1/patch0" / moved["file_name"]
      if k == 0:
        nested.parent.mkdir(parents=True)
        (root / "toy_o365" / split / moved["file_name"]).rename(nested)
      moved["file_name"] = f"images/v1/patch0/{moved['file_name']}"
      path.write_text(json.dumps(data))
    index = registry.build_index(_single(root, "toy_o365", "error" if split == "val" else "skip"), "toy_o365", split)
    assert (empty in index.image_ids) == (split == "val")
    assert int(moved["id"]) in index.image_ids and str(nested) in index.image_paths
    assert index.skipped.get("missing_image_file", 0) == 0
  config = _single(root, "toy_o365", "error", batch=len(index))
  batch = next(mixture.eval_batches(config, registry.build_vocab(config), "toy_o365"))
  row = list(batch["image_id"]).index(empty)
  assert not batch["seg_valid"][row].any() and (batch["segment_map"][row] == -1).all()


@pytest.mark.parametrize("field,pattern", [("category", "unknown_category"), ("bbox", "degenerate_box")])
def test_bad_annotation_is_an_error_with_error_policy(broken_o365, field, pattern):
  root, _, _ = broken_o365
  path = root / "toy_o365/annotations/train.json"
  data = json.loads(path.read_text())
  keep = 0 if field == "category" else 1
  data["annotations"] = [a for i, a in enumerate(data["annotations"]) if i == keep or i > 3]
  path.write_text(json.dumps(data))
  config = _single(root, "toy_o365", "error")
  with pytest.raises(ValueError, match=pattern + r".*train.json image_id"):
    registry.build_index(config, "toy_o365", "train")


def test_panoptic_unknown_category_and_empty_image(clean_dir, tmp_path):
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_coco", root / "toy_coco")
  path = root / "toy_coco/annotations/panoptic_train.json"
  data = json.loads(path.read_text())
  data["annotations"][0]["segments_info"][0]["category_id"] = 12345
  data["annotations"][1]["segments_info"] = []
  path.write_text(json.dumps(data))
  index = registry.build_index(_single(root, "toy_coco", "skip"), "toy_coco", "train")
  assert index.skipped["unknown_category"] == 1 and index.skipped["empty_annotations"] == 1
  assert len(index) == 11
  with pytest.raises(ValueError, match="unknown_category.*category_id 12345"):
    registry.build_index(_single(root, "toy_coco", "error"), "toy_coco", "train")


# ------------------------------------------------------------------ one row per bad JSON entry (issue 24)
def _nan_box(doc, _):
  doc["annotations"][0]["bbox"] = [float("nan"), 5, 10, 10]


def _infinite_box(doc, _):
  doc["annotations"][0]["bbox"] = [5, 5, float("inf"), 10]


def _short_box(doc, _):
  doc["annotations"][0]["bbox"] = [5, 5, 10]


def _string_in_box(doc, _):
  doc["annotations"][0]["bbox"] = ["5", 5, 10, 10]


def _no_bbox(doc, _):
  del doc["annotations"][0]["bbox"]


def _no_height(doc, _):
  del doc["images"][0]["height"]


def _zero_width(doc, _):
  doc["images"][0]["width"] = 0


def _escaping_file_name(doc, folder):
  shutil.copy(folder / doc["images"][0]["file_name"], folder.parent.parent / "outside.jpg")
  doc["images"][0]["file_name"] = "../../outside.jpg"


def _absolute_file_name(doc, folder):
  outside = folder.parent.parent / "outside.jpg"
  shutil.copy(folder / doc["images"][0]["file_name"], outside)
  doc["images"][0]["file_name"] = str(outside)


def _escaping_panoptic_png(doc, folder):
  png = folder.parent / "annotations/panoptic_train" / doc["annotations"][0]["file_name"]
  shutil.copy(png, folder.parent.parent / "outside.png")
  doc["annotations"][0]["file_name"] = "../../../outside.png"


def _segment_without_category(doc, _):
  del doc["annotations"][0]["segments_info"][0]["category_id"]


JSON_CASES = [  # (dataset, JSON, images folder, change, reason, message)
    ("toy_o365", "train.json", "train", _nan_box, "nonfinite_box", r"bbox \[nan, 5, 10, 10\] holds a NaN or infinite"),
    ("toy_o365", "train.json", "train", _infinite_box, "nonfinite_box", r"bbox \[5, 5, inf, 10\] holds a NaN"),
    ("toy_o365", "train.json", "train", _short_box, "malformed_box", r"bbox \[5, 5, 10\] is not a list \[x, y, width"),
    ("toy_o365", "train.json", "train", _string_in_box, "malformed_box", r"holds a value that is not a number"),
    ("toy_o365", "train.json", "train", _no_bbox, "malformed_annotation",
     r"train.json annotations\[0\] \(id \d+\) has no 'bbox'. Add the key"),
    ("toy_o365", "train.json", "train", _no_height, "missing_image_size",
     r"train.json image_id \d+ \(.*\) has no 'height'. Add the image's 'height' and 'width'"),
    ("toy_o365", "train.json", "train", _zero_width, "missing_image_size", r"has width 0, not a positive number"),
    ("toy_o365", "train.json", "train", _escaping_file_name, "path_outside_root",
     r"train.json image_id \d+ \(../../outside.jpg\): file name '../../outside.jpg' leaves its folder. Fix the file"),
    ("toy_o365", "train.json", "train", _absolute_file_name, "path_outside_root", r"outside.jpg' is an absolute path"),
    ("toy_coco", "panoptic_train.json", "train", _escaping_panoptic_png, "path_outside_root",
     r"panoptic_train.json image_id \d+: file name '../../../outside.png' leaves its folder"),
    ("toy_coco", "panoptic_train.json", "train", _segment_without_category, "malformed_segment",
     r"panoptic_train.json image_id \d+ segments_info\[0\] has no 'category_id'"),
]


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("dataset,json_name,folder,change,reason,message", JSON_CASES,
                         ids=[c[3].__name__.strip("_") for c in JSON_CASES])
def test_a_bad_json_entry_is_named_and_never_read(clean_dir, tmp_path, dataset, json_name, folder, change, reason,
                                                  message, policy):
  """Issue 24: a NaN box trained as an image with no objects, an image without 'height' was a KeyError, and a
  file_name with '../' or an absolute path was read from outside data_dir without a word. Each is now an error naming
  the JSON and the image or annotation id (on_bad_example='error') or a counted skip that reads no file outside."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / dataset, root / dataset)
  path = root / dataset / "annotations" / json_name
  doc = json.loads(path.read_text())
  change(doc, root / dataset / folder)
  path.write_text(json.dumps(doc))
  config = _single(root, dataset, policy)
  if policy == "error":
    with pytest.raises(ValueError, match=f"{dataset}/train: {reason}: .*{message}"):
      registry.build_index(config, dataset, "train")
    return
  index = registry.build_index(config, dataset, "train")
  assert index.skipped[reason] == 1, dict(index.skipped)
  assert not any("outside" in p for p in index.image_paths + index.label_paths)
  assert np.isfinite(index.boxes).all()
  assert [m for r, m in index.skip_messages if r == reason]


def test_an_annotation_file_that_is_not_json_is_named(clean_dir, tmp_path):
  """Issue 24: 'Expecting value: line 1 column 1' with no file name."""
  root = tmp_path / "toy"
  shutil.copytree(clean_dir / "toy_o365", root / "toy_o365")
  path = root / "toy_o365/annotations/train.json"
  path.write_text('{"images": [], oops')
  with pytest.raises(ValueError, match=f"^{path} is not a valid JSON file \\(Expecting property name enclosed in "
                                       r"double quotes: line 1 column 16 \(char 15\)\); re-export or re-download"):
    registry.build_vocab(_single(root, "toy_o365", "error"))


def test_training_skips_are_named_in_the_skip_log(broken_ade, tmp_path):
  """Issue 24: skips during training were counted but not named. WORKDIR/skipped.tsv names each skipped item with
  its reason: items skipped while indexing (step 'index') and examples the input pipeline skipped (the step whose
  batch they would have joined); a resumed run lists each skip once."""
  (broken_ade / "toy_ade/annotations/training/ADE_train_00000007.png").unlink()  # skipped while indexing
  config = _single(broken_ade, "toy_ade", "skip")
  vocab = registry.build_vocab(config)
  log = mixture.skip_log_path(str(tmp_path))
  it = mixture.TrainIterator(config, vocab, skip_log=log)
  states = []
  while it.get_state()["consumed"]["toy_ade"] < 11:  # one epoch of the 11 indexed images
    states.append(it.get_state())
    next(it)
  lines = pathlib.Path(log).read_text().splitlines()
  assert lines[0] == "step\tdataset\treason\tmessage"
  assert [tuple(line.split("\t")[:3]) for line in lines[1:]] == [
      ("index", "toy_ade", "missing_annotation"), (lines[2].split("\t")[0], "toy_ade", "undecodable_or_invalid")]
  assert "ADE_train_00000007.jpg has no" in lines[1] and "ADE_train_00000007.png. Add the label PNG" in lines[1]
  assert lines[2].split("\t")[3].startswith(f"{broken_ade}/toy_ade/images/training/ADE_train_00000002.jpg: ")
  step = int(lines[2].split("\t")[0])
  it = mixture.TrainIterator(config, vocab, skip_log=log)  # resumed before the skip: it is listed once
  it.set_state(states[step - 1])
  while it.get_state()["consumed"]["toy_ade"] < 11:
    next(it)
  assert pathlib.Path(log).read_text().splitlines() == lines
