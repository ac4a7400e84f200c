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


def test_instance_annotations_trained_as_semantic_give_one_segment_per_class(toy_dir):
  """toy_coco (COCO panoptic) trained with task 'semantic': the same pixels and classes as with task 'panoptic', each
  class one segment, as the semantic MERGE (one prediction per class) needs."""
  from dataseg_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  def batches(task):
    c = common.toy_config(toy_dir, batch=4)
    c.data.datasets = {"toy_coco": config_lib.dataset_entry(**dict(c.data.datasets.toy_coco, task=task))}
    it = mixture.TrainIterator(c, registry.build_vocab(c))
    return [next(it) for _ in range(3)]

  merged_any = False
  for sem, pan in zip(batches("semantic"), batches("panoptic")):
    np.testing.assert_array_equal(sem["image"], pan["image"])
    for i in range(len(sem["image"])):
      classes = {name: np.where(b["segment_map"][i] >= 0, b["seg_class"][i][np.maximum(b["segment_map"][i], 0)], -1)
                 for name, b in (("sem", sem), ("pan", pan))}
      np.testing.assert_array_equal(classes["sem"], classes["pan"])
      valid = sem["seg_class"][i][sem["seg_valid"][i]]
      assert len(set(valid.tolist())) == len(valid)
      assert set(valid.tolist()) == set(pan["seg_class"][i][pan["seg_valid"][i]].tolist())
      merged_any |= sem["seg_valid"][i].sum() < pan["seg_valid"][i].sum()
  assert merged_any  # some image had two instances of a class


def test_eval_batches_pad_the_last_batch(toy_dir):
  config = common.toy_config(toy_dir, batch=4)
  vocab = registry.build_vocab(config)
  batches = list(mixture.eval_batches(config, vocab, "toy_o365"))
  assert [b["example_valid"].sum() for b in batches] == [4, 2]
  assert (batches[-1]["task"][:2] == contract.Task.INSTANCE).all()  # val_instances: masks
  assert batches[-1]["seg_has_mask"][:2].any() and not batches[-1]["seg_valid"][2:].any()


def _lsj_example(labels_only_flip=False):
  """Non-overlapping rectangles (ids 0..4) in a 90 x 120 image whose colour encodes the id (void black)."""
  rng = np.random.default_rng(0)
  idmap = np.full((90, 120), -1, np.int32)
  boxes = []
  while len(boxes) < 5:  # non-overlapping rectangles: a crop of one is still its box
    y, x, h, w = rng.integers(0, 70), rng.integers(0, 100), rng.integers(6, 20), rng.integers(6, 20)
    if (idmap[y:y + h, x:x + w] == -1).all():
      idmap[y:y + h, x:x + w] = len(boxes)
      boxes.append([x, y, x + w, y + h])
  colours = np.array([[250, 40, 40], [40, 250, 40], [40, 40, 250], [250, 250, 40], [40, 250, 250]], np.uint8)
  image = np.where(idmap[..., None] >= 0, colours[np.maximum(idmap, 0)], 0).astype(np.uint8)
  return image, idmap, np.array(boxes, np.float32), colours


def _lsj_misaligned(image, idmap, boxes, colours, g, flip_labels_only=False):
  """LSJ of one example keyed by g; -> (ids whose box disagrees with their mask, pixels whose colour is not
  their segment's). Only pixels away from segment edges count (bilinear vs nearest resampling)."""
  ex = dict(image=tf.constant(image), idmap=tf.constant(idmap), boxes=tf.constant(boxes))
  out = augment.pad_to(augment.large_scale_jitter(ex, tf.constant([3, g], tf.int64), 64, 0.3, 2.0), 64)
  if flip_labels_only:  # the bug this test must catch: labels moved differently from the image
    ch, cw = (int(v) for v in out["content"])
    ids = out["idmap"].numpy()
    ids[:ch, :cw] = ids[:ch, :cw][:, ::-1]
    out["idmap"] = tf.constant(ids)
  mb, area = packing.mask_boxes(out["idmap"], 5)
  b = out["boxes"].numpy() / 64
  bad_boxes = [j for j in range(5) if area[j] > 0 and not np.allclose(  # nearest: an edge moves <= 1 px
      mb[j].numpy(), [b[j, 1], b[j, 0], b[j, 3], b[j, 2]], atol=1.6 / 64)]
  ids, img = out["idmap"].numpy(), out["image"].numpy().astype(int)
  pad = np.pad(ids, 1, constant_values=-2)
  interior = np.all([pad[1 + dy:65 + dy, 1 + dx:65 + dx] == ids for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
  want = np.where(ids[..., None] >= 0, colours[np.maximum(ids, 0)], 0)
  wrong = interior & out["valid"].numpy() & (np.abs(img - want).max(-1) > 40)
  return bad_boxes, int(wrong.sum()), int((interior & (ids >= 0)).sum())


def test_lsj_keeps_image_masks_and_boxes_aligned():
  """Image, label map and boxes go through the same resize, crop and flip: inside each segment the
  image has that segment's colour, and each box is its cropped mask's box."""
  image, idmap, boxes, colours = _lsj_example()
  flips = set()
  for g in range(16):
    bad_boxes, wrong, checked = _lsj_misaligned(image, idmap, boxes, colours, g)
    assert not bad_boxes, (g, bad_boxes)
    assert wrong == 0 and checked > 0, (g, wrong, checked)
    flips.add(bool(tf.random.stateless_uniform([4], seed=tf.constant([3, g], tf.int64))[3] < 0.5))
  assert flips == {True, False}  # both flipped and unflipped examples were checked


def test_lsj_alignment_check_catches_labels_moved_alone():
  """The check above is not vacuous: flipping only the label map is caught."""
  image, idmap, boxes, colours = _lsj_example()
  caught = [_lsj_misaligned(image, idmap, boxes, colours, g, flip_labels_only=True)[1] > 0 for g in range(16)]
  assert sum(caught) >= 14, caught


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


def test_coco_instances_with_task_box_is_trained_on_its_boxes_only(toy_dir):
  """A coco_instances entry with task='box' gives box-only examples (batch contract: segment_map all void,
  seg_has_mask False), the very batches of the same JSON read as coco_detection; its masks are not used."""
  from dataseg_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  def batches(fmt):
    c = common.toy_config(toy_dir, batch=2)
    c.data.datasets = {"toy_city": config_lib.dataset_entry(
        format=fmt, task="box", train_images="toy_city/train",
        train_annotations="toy_city/annotations/train_instances.json", ratio=1.0)}
    it = mixture.TrainIterator(c, registry.build_vocab(c))
    return [next(it) for _ in range(3)]

  for got, want in zip(batches("coco_instances"), batches("coco_detection")):
    assert (got["task"] == int(contract.Task.BOX)).all()
    assert (got["segment_map"] == contract.VOID).all() and not got["seg_has_mask"].any()
    assert got["seg_valid"].any()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # boxes (and everything else) unchanged
