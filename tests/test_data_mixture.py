"""The mixture: ratios, process agreement, exact restore, determinism; augmentation and packing."""
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import augment
from data_pipelines import mixture
from data_pipelines import packing
from data_pipelines import registry
from dataseg_jax import contract
import test_data_common as common


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return common.write_toy(tmp_path_factory.mktemp("toy"), train=20, val=6, size=64)


@pytest.mark.parametrize("mode", ["per_batch", "per_example"])
def test_realised_proportions_match_ratios_over_10k_examples(toy_dir, mode):
  config = common.toy_config(toy_dir, batch=8 if mode == "per_batch" else 1, mode=mode)
  config.data.datasets.toy_ade.ratio = 1.0
  config.data.datasets.toy_coco.ratio = 2.0
  config.data.datasets.toy_o365.ratio = 2.0
  steps = 10_000 // config.data.batch_size
  choices = mixture.dataset_choices(config, steps)
  realised = np.bincount(choices.ravel(), minlength=3) / choices.size
  np.testing.assert_allclose(realised, [0.2, 0.4, 0.4], atol=0.02)
  if mode == "per_batch":
    assert (choices == choices[:, :1]).all()
  # The same sequence drawn in pieces (as a resumed run does) is identical.
  np.testing.assert_array_equal(np.concatenate([mixture.dataset_choices(config, 7),
                                                mixture.dataset_choices(config, steps - 7, 7)]), choices)


def test_two_processes_draw_the_same_dataset_each_step_per_batch(toy_dir):
  config = common.toy_config(toy_dir, batch=4)
  vocab = registry.build_vocab(config)
  its = [mixture.TrainIterator(config, vocab, process_index=p, process_count=2) for p in (0, 1)]
  for _ in range(6):
    b0, b1 = next(its[0]), next(its[1])
    assert b0["image"].shape[0] == b1["image"].shape[0] == 2
    assert len(set(b0["dataset_id"]) | set(b1["dataset_id"])) == 1
    assert not np.array_equal(b0["image"], b1["image"])  # different shards


@pytest.mark.parametrize("mode", ["per_batch", "per_example"])
def test_restored_iterator_continues_with_the_same_batches(toy_dir, mode):
  config = common.toy_config(toy_dir, batch=4, mode=mode)
  vocab = registry.build_vocab(config)
  it = mixture.TrainIterator(config, vocab)
  for _ in range(7):  # past one epoch of some dataset (20 images)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  fresh = mixture.TrainIterator(config, vocab)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_iterator_is_deterministic_and_in_contract(toy_dir):
  config = common.toy_config(toy_dir, batch=4, mode="per_example")
  vocab = registry.build_vocab(config)
  a, b = mixture.TrainIterator(config, vocab), mixture.TrainIterator(config, vocab)
  spec = contract.batch_spec(64, 64, config.data.max_segments)
  for _ in range(3):
    x, y = next(a), next(b)
    for k, (shape, dtype) in spec.items():
      assert x[k].shape == (4,) + shape and x[k].dtype == dtype, k
      np.testing.assert_array_equal(x[k], y[k])
    _check_targets(x, vocab)


def _check_targets(batch, vocab):
  """Independent re-derivation: boxes from segment_map, classes allowed by the dataset's class mask."""
  for i in range(batch["image"].shape[0]):
    d, task = batch["dataset_id"][i], batch["task"][i]
    n = batch["seg_valid"][i].sum()
    assert batch["seg_valid"][i, :n].all() and not batch["seg_valid"][i, n:].any()
    assert vocab.class_mask[d, batch["seg_class"][i, :n]].all()
    seg_map = batch["segment_map"][i]
    if task == contract.Task.BOX:
      assert (seg_map == contract.VOID).all() and not batch["seg_has_mask"][i].any()
      y0, x0, y1, x1 = batch["seg_box"][i, :n].T
      assert ((y1 > y0) & (x1 > x0)).all() and (batch["seg_box"][i, :n] <= 1).all()
      continue
    assert seg_map.max() < n and (seg_map[~batch["valid"][i]] == contract.VOID).all()
    size = seg_map.shape[0]
    for j in range(n):
      ys, xs = np.nonzero(seg_map == j)
      assert len(ys), "a valid segment has pixels"
      np.testing.assert_allclose(batch["seg_box"][i, j],
                                 [ys.min() / size, xs.min() / size, (ys.max() + 1) / size, (xs.max() + 1) / size])


def test_semantic_has_one_segment_per_class_present(toy_dir):
  config = common.toy_config(toy_dir, batch=6)
  vocab = registry.build_vocab(config)
  batch = next(mixture.eval_batches(config, vocab, "toy_ade"))
  index = registry.build_index(config, "toy_ade", "val")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in range(6):
    label = np.asarray(Image.open(index.label_paths[i]))
    present = sorted(set(np.unique(label).tolist()) - {0})
    n = batch["seg_valid"][i].sum()
    assert sorted(batch["seg_class"][i, :n]) == sorted(vocab.local_to_union[0][np.array(present) - 1])
    h, w = batch["orig_size"][i]
    assert batch["valid"][i].sum() == round(h * 64 / max(h, w)) * round(w * 64 / max(h, w))


def test_eval_batches_pad_the_last_batch(toy_dir):
  config = common.toy_config(toy_dir, batch=4)
  vocab = registry.build_vocab(config)
  batches = list(mixture.eval_batches(config, vocab, "toy_o365"))
  assert [b["example_valid"].sum() for b in batches] == [4, 2]
  assert (batches[-1]["task"][:2] == contract.Task.INSTANCE).all()  # val_instances: masks
  assert batches[-1]["seg_has_mask"][:2].any() and not batches[-1]["seg_valid"][2:].any()


def test_lsj_boxes_stay_consistent_with_the_cropped_masks():
  rng = np.random.default_rng(0)
  idmap = np.full((90, 120), -1, np.int32)
  boxes = []
  while len(boxes) < 5:  # non-overlapping rectangles: a crop of one is still its box
    y, x, h, w = rng.integers(0, 70), rng.integers(0, 100), rng.integers(6, 20), rng.integers(6, 20)
    if (idmap[y:y + h, x:x + w] == -1).all():
      idmap[y:y + h, x:x + w] = len(boxes)
      boxes.append([x, y, x + w, y + h])
  for g in range(12):
    ex = dict(image=tf.zeros((90, 120, 3), tf.uint8), idmap=tf.constant(idmap),
              boxes=tf.constant(boxes, tf.float32))
    out = augment.large_scale_jitter(ex, tf.constant([3, g], tf.int64), 64, 0.3, 2.0)
    out = augment.pad_to(out, 64)
    mb, area = packing.mask_boxes(out["idmap"], 5)
    b = out["boxes"].numpy() / 64
    for j in range(5):
      if area[j] > 0:  # nearest-neighbour resize moves an edge by at most one output pixel
        np.testing.assert_allclose(mb[j].numpy(), [b[j, 1], b[j, 0], b[j, 3], b[j, 2]], atol=1.6 / 64)


def test_pack_keeps_the_largest_segments_and_counts_the_rest():
  idmap = np.full((32, 32), -1, np.int32)
  for j, s in enumerate([3, 9, 5, 7, 1]):
    idmap[j * 6:j * 6 + s, :s] = j
  ex = dict(image=tf.zeros((32, 32, 3), tf.uint8), valid=tf.ones((32, 32), tf.bool), idmap=tf.constant(idmap),
            seg_class=tf.constant([0, 1, 2, 3, 4]), seg_crowd=tf.zeros([5], tf.bool),
            boxes=tf.zeros([5, 4]), has_mask=True)
  out, dropped = packing.pack(ex, 3, 1, tf.constant([10, 11, 12, 13, 14]), tf.ones([5], tf.bool))
  assert int(dropped) == 2
  np.testing.assert_array_equal(out["seg_class"], [11, 12, 13])  # areas 81, 25, 49 kept in row order
  seg_map = out["segment_map"].numpy()
  np.testing.assert_array_equal(seg_map == 0, idmap == 1)
  assert (seg_map[(idmap == 0) | (idmap == 4)] == -1).all()
