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
  by_id = {int(i): r for r, i in enumerate(index.image_ids)}
  for ex in tfds.as_numpy(builder.as_dataset(split="train")):
    r = by_id[int(ex["image_id"])]
    lo, hi = index.seg_splits[r], index.seg_splits[r + 1]
    np.testing.assert_array_equal(ex["segments"]["class"], index.seg_class[lo:hi])
    np.testing.assert_allclose(ex["segments"]["box"].reshape(-1, 4), index.boxes[lo:hi])
    assert ex["image"].shape[-1] == 3
    if name != "toy_o365":
      assert ex["label"].shape[:2] == ex["image"].shape[:2]
  assert builder.info.metadata["class_names"] == list(index.vocab.names)
