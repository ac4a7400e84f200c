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
