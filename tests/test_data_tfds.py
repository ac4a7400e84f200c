"""TFDS builders (manual_dir) prepare the three training formats from the toy benchmark."""
import numpy as np
import pytest

from data_pipelines import registry
import test_data_common as common

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name", ["toy_ade", "toy_coco", "toy_o365"])
def test_tfds_builder_matches_the_direct_reader(tmp_path, name):
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  data_dir = common.write_toy(tmp_path / "toy", train=6, val=3, size=48)
  config = common.toy_config(data_dir)
  builder = tfds_builders.build(config, name, str(tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 6
  assert builder.info.splits["validation"].num_examples == 3
  index = registry.build_index(config, name, "train")
  source = builder.as_data_source(split="train")
  for r in range(len(source)):  # record r is native row r (unshuffled, random access)
    ex = source[r]
    assert int(ex["image_id"]) == int(index.image_ids[r])
    lo, hi = index.seg_splits[r], index.seg_splits[r + 1]
    np.testing.assert_array_equal(np.asarray(ex["segments"]["class"], np.int32), index.seg_class[lo:hi])
    np.testing.assert_allclose(np.asarray(ex["segments"]["box"], np.float32).reshape(-1, 4), index.boxes[lo:hi])
    assert ex["image"].shape[-1] == 3
    if name != "toy_o365":
      assert ex["label"].shape[:2] == ex["image"].shape[:2]
  assert builder.info.metadata["class_names"] == list(index.vocab.names)


def _batches(config, vocab, steps, state=None):
  from data_pipelines import mixture  # pylint: disable=g-import-not-at-top
  it = mixture.TrainIterator(config, vocab)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(steps)], it.get_state()


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_tfds_backed_mixture_gives_the_native_batches(tmp_path):
  """Prepared TFDS data of all three sets: same train batches, same restore, same eval batches."""
  from data_pipelines import mixture  # pylint: disable=g-import-not-at-top
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  data_dir = common.write_toy(tmp_path / "toy", train=6, val=2, size=64)
  native = common.toy_config(data_dir, size=48, batch=2)
  names = ["toy_ade", "toy_coco", "toy_o365"]
  for name in names:
    tfds_builders.build(native, name, str(tmp_path / "tfds"))
  prepared = common.toy_config(data_dir, size=48, batch=2)
  for name in names:
    prepared.data.datasets[name].tfds_dir = str(tmp_path / "tfds")
  vocab = registry.build_vocab(native)
  want, end = _batches(native, vocab, 8)
  assert all(end["consumed"][n] > 0 for n in names), end  # every dataset was drawn
  got, state = _batches(prepared, vocab, 4)
  resumed, _ = _batches(prepared, vocab, 4, state)
  for a, b in zip(want, got + resumed):
    _assert_same(a, b)
  for name in names:
    a_all, b_all = list(mixture.eval_batches(native, vocab, name)), list(mixture.eval_batches(prepared, vocab, name))
    assert len(a_all) == len(b_all) > 0
    for a, b in zip(a_all, b_all):
      _assert_same(a, b)


def test_tfds_path_decodes_palette_labels_and_grayscale_images_like_native(tmp_path):
  """Prepared records keep the files' bytes, so the shared decode reads palette indices and RGB there too."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_pipelines import pipeline, tfds_builders  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = {}
  for i in range(2):
    p = Image.fromarray(rng.integers(0, 5, (24, 32)).astype(np.uint8), mode="P")
    p.putpalette([(j * 37) % 256 for j in range(768)])
    labels[f"a{i}.png"] = p
  images = {"a0.jpg": Image.fromarray(rng.integers(0, 256, (24, 32), np.uint8)),  # grayscale
            "a1.jpg": Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8))}
  config = common.write_semantic_png(tmp_path, images, labels)
  config.data.on_bad_example = "error"
  tfds_builders.build(config, "tiny", str(tmp_path / "tfds"))
  vocab = registry.dataset_vocab(registry.resolve_entry(config, "tiny"))
  native = registry.build_index(config, "tiny", "train")
  index, tables = tfds_builders.load_split(str(tmp_path / "tfds"), "tiny", "train", vocab)
  for r in range(2):
    a = pipeline.decode_example(native, pipeline.Tables(native), tf.constant(r, tf.int64), False)
    b = pipeline.decode_example(index, tables, tf.constant(r, tf.int64), False)
    np.testing.assert_array_equal(b["idmap"], np.array(Image.open(native.label_paths[r])))
    np.testing.assert_array_equal(b["image"], a["image"])
    assert b["image"].shape == (24, 32, 3)


def test_command_line_takes_config_arguments_and_overrides(tmp_path):
  """`python scripts/prepare_tfds.py --config FILE[:arg] --config.data_dir=DIR ...` (the README's command) prepares
  the entry from DIR, wherever it is run from."""
  import pathlib
  import subprocess
  import sys
  repo = pathlib.Path(__file__).resolve().parents[1]
  data_dir = common.write_toy(tmp_path / "toy", train=2, val=2, size=32)
  proc = subprocess.run(
      [sys.executable, str(repo / "scripts/prepare_tfds.py"), f"--config={repo / 'configs/toy.py'}",
       f"--config.data_dir={data_dir}", "--dataset", "toy_o365", "--out", str(tmp_path / "tfds")],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "'train': <SplitInfo num_examples=2" in proc.stdout


def test_preparing_again_after_the_native_files_changed_is_refused(tmp_path):
  """TFDS reuses a prepared version; training would read the old images without a word."""
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  config = common.toy_config(common.write_toy(tmp_path / "toy", train=6, val=3, size=48))
  tfds_builders.build(config, "toy_o365", str(tmp_path / "tfds"))
  tfds_builders.build(config, "toy_o365", str(tmp_path / "tfds"))  # unchanged files: reused
  common.write_toy(tmp_path / "toy5", train=5, val=3, size=48)
  config.data_dir = str(tmp_path / "toy5")
  with pytest.raises(ValueError, match=r"prepared from other train images \(6 then, 5 now\); delete .*toy_o365"):
    tfds_builders.build(config, "toy_o365", str(tmp_path / "tfds"))
