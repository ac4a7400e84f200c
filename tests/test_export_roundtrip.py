"""The exported StableHLO function equals the in-framework model; the loader needs only jax, numpy and the names
reader; the SavedModel serves with TensorFlow alone and equals the StableHLO export.

Checked with DataSeg (tiny config, fresh weights) when dataseg_jax.models.dataseg is importable, and
always with a small stand-in that has DataSeg's apply contract.
"""
import json
import logging
import pathlib
import re
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from configs import toy  # noqa: E402
from dataseg_jax.evaluation import postprocess  # noqa: E402
from dataseg_jax.export import exporter  # noqa: E402
from dataseg_jax.export import loader  # noqa: E402
from dataseg_jax.export import savedmodel  # noqa: E402
from test_eval_evaluator import StandIn  # noqa: E402

SIZE, C, C_MAX, D = 64, 5, 7, 8
THINGS = np.array([True, False, True, False, True])


def _config():
  c = toy.get_config()
  c.data.eval_size = SIZE
  c.model.embed_dim = D
  c.model.num_queries = 8
  c.data.max_segments = 8
  c.eval.object_mask_threshold = 0.2
  c.eval.overlap_threshold = 0.3
  c.eval.instance_topk = 16
  return c


def _models():
  out = [("standin", lambda c: StandIn())]
  try:
    from dataseg_jax.models import dataseg
  except ImportError:
    return out
  return out + [("dataseg", lambda c: dataseg.DataSeg(c.model))]


@pytest.fixture(scope="module", params=[m[0] for m in _models()])
def exported(request, tmp_path_factory):
  make = dict(_models())[request.param]
  c = _config()
  model = make(c)
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(C, D)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, SIZE, SIZE, 3), jnp.uint8), jnp.asarray(emb),
                         jnp.ones((2, C), bool))
  out = tmp_path_factory.mktemp("export")
  exporter.export_model(c, variables, [f"class {k}" for k in range(C)], emb, THINGS, str(out), batch_size=2,
                        max_classes=C_MAX, model=model)
  return c, model, variables, emb, out


def _reference(c, model, variables, emb, images, things, sizes=((SIZE, SIZE), (SIZE, SIZE))):
  """The in-framework model and post-processing on the unpadded vocabulary, each image (h, w) of `sizes` at the
  top left of its input."""
  cm = jnp.ones((len(images), len(emb)), bool)
  raw = model.apply(variables, jnp.asarray(images), jnp.asarray(emb), cm, train=False)
  logits, masks = raw["pred_logits"][-1], raw["pred_masks"][-1]
  up = postprocess.upsample_masks(masks, (SIZE, SIZE))
  in_image = np.zeros((len(images), SIZE, SIZE), bool)
  for k, (h, w) in enumerate(sizes):
    in_image[k, :h, :w] = True
  pan = postprocess.panoptic_inference(logits, up, jnp.asarray(things), jnp.asarray(in_image),
                                       object_mask_threshold=0.2, overlap_threshold=0.3)
  return {"logits": np.asarray(logits), "masks": np.asarray(masks),
          "semantic": np.asarray(postprocess.semantic_inference(logits, up, cm)["labels"]),
          "panoptic": jax.tree.map(np.asarray, pan),
          "instance": jax.tree.map(np.asarray, postprocess.instance_inference(
              logits, up, cm & jnp.asarray(things), jnp.asarray(in_image), topk=16))}


def _logit_scale(variables, config) -> float:
  """1 / inference temperature of DataSeg's cosine classifier (1 for the stand-in, which has none)."""
  classifier = flax.core.meta.unbox(variables["params"]).get("classifier", {})
  if "log_temperature" not in classifier:
    return 1.0
  t = config.model.inference_temperature
  return 1.0 / t if t > 0 else float(np.exp(-classifier["log_temperature"]))


def _compare(got, ref, c_used, logit_scale=1.0):
  """`logit_scale`: 1 / temperature of a cosine classifier, whose logits are cosines / tau: 1e-5 on the cosine;
  probabilities (scores) then move by up to logit error / 4."""
  tol = 1e-5 * logit_scale
  score_tol = max(1e-5, tol / 4)
  np.testing.assert_allclose(got["pred_logits"][..., :c_used], ref["logits"][..., :c_used], atol=tol, rtol=1e-5)
  np.testing.assert_allclose(got["pred_logits"][..., -1], ref["logits"][..., -1], atol=tol, rtol=1e-5)
  np.testing.assert_allclose(got["pred_masks"], ref["masks"], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(got["semantic"], ref["semantic"])
  for k in ("panoptic_seg", "segment_id", "segment_is_thing"):
    np.testing.assert_array_equal(got[k], ref["panoptic"][k])
  np.testing.assert_allclose(got["segment_score"], ref["panoptic"]["segment_score"], atol=score_tol)
  np.testing.assert_allclose(np.sort(got["instance_scores"], 1), np.sort(ref["instance"]["scores"], 1),
                             atol=score_tol)


def test_exported_equals_in_framework_model(exported):
  c, model, variables, emb, out = exported
  images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  served = loader.ExportedModel(str(out))
  assert served.names == [f"class {k}" for k in range(C)]
  got = served(images)
  _compare(got, _reference(c, model, variables, emb, images, THINGS), C, _logit_scale(variables, c))
  assert (got["semantic"] < C).all()
  sizes = ((SIZE, 40), (24, SIZE))  # images padded bottom or right: no segment reaches the padding
  got = served(images, sizes)
  _compare(got, _reference(c, model, variables, emb, images, THINGS, sizes), C, _logit_scale(variables, c))
  assert not got["panoptic_seg"][0, :, 40:].any() and not got["instance_masks"][1, :, 24:].any()
  with pytest.raises(ValueError, match="image_sizes"):
    served(images, [(SIZE + 1, SIZE), (1, 1)])


def test_swapped_vocabulary_equals_in_framework_model(exported):
  c, model, variables, _, out = exported
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(C_MAX, D)).astype(np.float32)
  things = rng.random(C_MAX) < 0.5
  served = loader.ExportedModel(str(out))
  served.set_vocabulary([f"new {k}" for k in range(C_MAX)], emb, things)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  _compare(served(images), _reference(c, model, variables, emb, images, things), C_MAX, _logit_scale(variables, c))
  with pytest.raises(ValueError, match="at most 7"):
    served.set_vocabulary([f"n{k}" for k in range(C_MAX + 1)], np.zeros((C_MAX + 1, D), np.float32), [False] * 8)


def test_loader_imports_only_jax_numpy_the_names_reader_and_trees(exported):
  *_, out = exported
  pure = ("dataseg_jax", "dataseg_jax.trees", "dataseg_jax.vocab", "dataseg_jax.vocab.names",
          "dataseg_jax.vocab.vocabulary")
  code = (
      "import importlib.util, sys, numpy as np\n"
      f"spec = importlib.util.spec_from_file_location('loader', {str(REPO / 'dataseg_jax/export/loader.py')!r})\n"
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
      f"e = m.ExportedModel({str(out)!r})\n"
      "r = e(np.zeros((2, e.image_size, e.image_size, 3), np.uint8))\n"
      "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('flax', 'dataseg_jax', 'data_pipelines',"
      f" 'optax', 'orbax', 'tensorflow') and k not in {pure!r})\n"
      "print(r['semantic'].shape, bad)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert proc.stdout.strip() == f"(2, {SIZE}, {SIZE}) []"


def test_predict_writes_files_for_a_folder(exported, tmp_path):
  import predict
  *_, out = exported
  rng = np.random.default_rng(3)
  (tmp_path / "images").mkdir()
  for k, (h, w) in enumerate([(40, 50), (64, 30), (20, 20)]):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / f"im{k}.png")
  n = predict.run(str(out), [str(tmp_path / "images")], str(tmp_path / "pred"))
  assert n == 3
  assert np.array(Image.open(tmp_path / "pred" / "semantic" / "im1.png")).shape == (64, 30)
  assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 3
  pan = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
  assert [a["file_name"] for a in pan["annotations"]] == ["im0.png", "im1.png", "im2.png"]


def test_a_learned_class_table_refuses_other_vocabularies(exported, tmp_path):
  """A model.classifier='learned' model ignores class embeddings: a larger max_classes or a swapped vocabulary would
  silently keep classifying its own classes, so both are refused."""
  import shutil
  c, model, variables, emb, out = exported
  c = c.copy_and_resolve_references()
  c.model.classifier = "learned"
  with pytest.raises(ValueError, match="learned class table"):
    exporter.export_model(c, variables, [f"class {k}" for k in range(C)], emb, THINGS, str(tmp_path / "x"),
                          batch_size=2, max_classes=C_MAX, model=model)
  learned = tmp_path / "learned"
  shutil.copytree(out, learned)
  meta = json.loads((learned / "config.json").read_text())
  meta["model"]["classifier"] = "learned"
  (learned / "config.json").write_text(json.dumps(meta))
  served = loader.ExportedModel(str(learned))  # its own vocabulary: fine
  with pytest.raises(ValueError, match="cannot be swapped"):
    served.set_vocabulary([f"new {k}" for k in range(C)], np.zeros((C, D), np.float32), THINGS)


def test_predict_resizes_as_the_input_pipeline(rng):
  import predict
  import tensorflow as tf
  image = rng.integers(0, 256, (97, 61, 3), dtype=np.uint8)
  for size in (64, 160):  # down and up
    boxed, (h, w) = predict.letterbox(image, size)
    want = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, [h, w], method="bilinear", antialias=False)),
                                    0, 255), tf.uint8).numpy()
    assert np.abs(boxed[:h, :w].astype(int) - want).max() <= 1  # float rounding at .5
    assert (boxed[h:] == 0).all() and (boxed[:, w:] == 0).all()


def test_predict_vocab_embeds_normalised_names_and_keeps_their_thing_classes(exported, tmp_path, monkeypatch):
  import predict
  from dataseg_jax.vocab import embeddings
  *_, out = exported
  served = loader.ExportedModel(str(out))
  served.names[:2] = ["car", "sky"]  # as if exported with these names: car a thing, sky stuff
  embedded = []
  monkeypatch.setattr(embeddings, "embed_names", lambda names, **kw: embedded.append(list(names)) or
                      np.ones((len(names), D), np.float32))
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\ufeffCar, automobile\nsky-other-merged\nTree\n")
  assert predict.swap_vocabulary(served, str(vocab)) == ["Tree"]  # unknown to the export: stuff, and said so
  assert embedded == [["car", "sky", "tree"]]
  assert served.names[:3] == ["Car, automobile", "sky-other-merged", "Tree"]
  assert served.thing_mask[:3].tolist() == [True, False, False]
  things = tmp_path / "things.txt"
  things.write_text("tree\n")
  assert predict.swap_vocabulary(served, str(vocab), str(things)) == []
  assert served.thing_mask[:3].tolist() == [False, False, True]
  things.write_text("trees\n")
  with pytest.raises(ValueError, match=r"\['trees'\] are not classes of"):
    predict.swap_vocabulary(served, str(vocab), str(things))
  served.config["vocab"]["encoder"] = "clip"
  served.config["vocab"]["clip_weights"] = ""
  with pytest.raises(ValueError, match="--clip_weights"):
    predict.swap_vocabulary(served, str(vocab))


def test_predict_refuses_images_that_would_overwrite_each_other_and_things_without_vocab(exported, tmp_path):
  import predict
  *_, out = exported
  (tmp_path / "images").mkdir()
  for name in ("a.png", "a.jpg", "b.png"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / name)
  with pytest.raises(ValueError, match=r"a.jpg', '.*a.png'\] share a name"):
    predict.run(str(out), [str(tmp_path / "images")], str(tmp_path / "pred"))
  with pytest.raises(ValueError, match="pass --vocab too"):
    predict.run(str(out), [str(tmp_path / "images" / "b.png")], str(tmp_path / "pred"), things="t.txt")


def test_predict_skips_an_unreadable_image_and_still_writes_the_rest(exported, tmp_path, capsys):
  import predict
  *_, out = exported
  (tmp_path / "images").mkdir()
  for name in ("a.png", "c.png", "d.png"):
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "images" / name)
  (tmp_path / "images" / "b.jpg").write_bytes(b"not an image")
  assert predict.run(str(out), [str(tmp_path / "images")], str(tmp_path / "p")) == 3
  assert "b.jpg: cannot identify image file" in capsys.readouterr().err
  pan = json.loads((tmp_path / "p" / "panoptic.json").read_text())
  assert [a["file_name"] for a in pan["annotations"]] == ["a.png", "c.png", "d.png"]
  assert (tmp_path / "p" / "names.txt").is_file()
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("cat\ndog\nCat\n")
  with pytest.raises(ValueError, match=r"vocab.txt: line 3 'Cat' duplicates line 1 'cat'"):
    predict.run(str(out), [str(tmp_path / "images")], str(tmp_path / "p"), vocab=str(vocab))


def test_the_loader_refuses_pixels_that_are_not_uint8(exported):
  *_, out = exported
  served = loader.ExportedModel(str(out))
  with pytest.raises(ValueError, match="float32; this export takes uint8"):
    served(np.zeros((2, SIZE, SIZE, 3), np.float32))


# Runs in a process where jax, jaxlib, flax and this repository cannot be imported (TensorFlow's own optional
# `from jax import jit` then fails as it would on a machine without JAX): loads the SavedModel, runs both signatures
# on the inputs of argv[2] and saves the outputs to argv[3].
SERVE_WITH_TENSORFLOW_ALONE = """
import importlib.abc, sys
BLOCKED = ("jax", "jaxlib", "flax", "dataseg_jax", "data_pipelines")
class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"{name} is blocked: the SavedModel must be served by TensorFlow alone")
sys.meta_path.insert(0, Absent())
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
inputs = {k: tf.constant(v) for k, v in np.load(sys.argv[2]).items()}
swapped = model.signatures["serving_default"](**inputs)
trained = model.signatures["trained_vocabulary"](images=inputs["images"], image_sizes=inputs["image_sizes"])
np.savez(sys.argv[3], **{"swapped/" + k: v.numpy() for k, v in swapped.items()},
         **{"trained/" + k: v.numpy() for k, v in trained.items()})
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


def _equal_outputs(got, want, logit_tol):
  """Float outputs within tolerance (another XLA build compiles the SavedModel), the rest exactly."""
  assert sorted(got) == sorted(want)
  for k in want:
    if want[k].dtype.kind == "f":
      np.testing.assert_allclose(got[k], want[k], atol=logit_tol if k == "pred_logits" else 1e-5, rtol=1e-5,
                                 err_msg=k)
    else:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_savedmodel_served_by_tensorflow_alone_equals_the_jax_export(exported, tmp_path):
  c, model, variables, emb, out = exported
  absl_level = logging.getLogger("absl").level
  path = savedmodel.export_savedmodel(c, variables, [f"class {k}" for k in range(C)], emb, THINGS,
                                      str(tmp_path / "savedmodel"), batch_size=2, max_classes=C_MAX, model=model)
  assert logging.getLogger("absl").level == absl_level  # TF's saving resets it to WARNING: put back
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  sizes = np.array([[SIZE, 40], [24, SIZE]], np.int32)
  new_emb = rng.normal(size=(C_MAX, D)).astype(np.float32)
  new_things = rng.random(C_MAX) < 0.5
  np.savez(tmp_path / "inputs.npz", images=images, image_sizes=sizes, class_embeddings=new_emb,
           class_mask=np.ones(C_MAX, bool), thing_mask=new_things)
  proc = subprocess.run([sys.executable, "-c", SERVE_WITH_TENSORFLOW_ALONE, path, str(tmp_path / "inputs.npz"),
                         str(tmp_path / "served.npz")], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"  # nothing of JAX, flax or this repository was loaded
  with np.load(tmp_path / "served.npz") as z:
    served = {k: z[k] for k in z.files}
  jax_export = loader.ExportedModel(str(out))
  tol = 1e-5 * _logit_scale(variables, c)
  _equal_outputs({k[len("trained/"):]: v for k, v in served.items() if k.startswith("trained/")},
                 jax_export(images, sizes), tol)
  jax_export.set_vocabulary([f"new {k}" for k in range(C_MAX)], new_emb, new_things)
  _equal_outputs({k[len("swapped/"):]: v for k, v in served.items() if k.startswith("swapped/")},
                 jax_export(images, sizes), tol)
  assert (pathlib.Path(path) / "names.txt").read_text().splitlines() == [f"class {k}" for k in range(C)]


def test_predict_takes_image_files_and_folders_and_warns_of_names_that_become_stuff(exported, tmp_path, monkeypatch,
                                                                                     capsys):
  import predict
  from dataseg_jax.vocab import embeddings
  *_, out = exported
  (tmp_path / "folder").mkdir()
  for path in (tmp_path / "folder" / "a.png", tmp_path / "folder" / "b.jpg", tmp_path / "c.png"):
    Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(path)
  (tmp_path / "folder" / "notes.txt").write_text("not an image")
  monkeypatch.setattr(embeddings, "embed_names", lambda names, **kw: np.ones((len(names), D), np.float32))
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("class 0\nkitten\n")
  n = predict.run(str(out), [str(tmp_path / "folder"), str(tmp_path / "c.png")], str(tmp_path / "p"), vocab=str(vocab))
  assert n == 3
  assert sorted(p.name for p in (tmp_path / "p" / "semantic").iterdir()) == ["a.png", "b.png", "c.png"]
  assert "['kitten'] are no class of the export, so they are predicted as stuff" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="nope.png: no such file or folder"):
    predict.run(str(out), [str(tmp_path / "nope.png")], str(tmp_path / "p"))


class _SlowFirstCall:
  """An export whose first call takes `first_s` longer, as compiling does; `seconds`: each call's duration."""

  def __init__(self, model, first_s):
    self.model, self.first_s, self.calls, self.seconds = model, first_s, 0, []

  def __getattr__(self, name):
    return getattr(self.model, name)

  def __call__(self, *args):
    t0 = time.perf_counter()
    self.calls += 1
    if self.calls == 1:
      time.sleep(self.first_s)
    out = self.model(*args)
    self.seconds.append(time.perf_counter() - t0)
    return out


def test_predict_rate_and_eta_leave_out_the_first_batch(exported, tmp_path, capsys):
  """Six images in batches of two, the first batch 3 s slower (compiling): the ETA after the second batch counts
  only the time since the first (one more batch: about the second batch's time t), not the 3 s of compiling spread
  over the images (1.5 s + t)."""
  import predict
  *_, out = exported
  paths = []
  for k in range(6):
    paths.append(str(tmp_path / f"im{k}.png"))
    Image.fromarray(np.full((16, 16, 3), 30 * k, np.uint8)).save(paths[-1])
  model = _SlowFirstCall(loader.ExportedModel(str(out)), first_s=3.0)
  model(np.zeros((2, SIZE, SIZE, 3), np.uint8))  # compiled, so that the later batches are fast
  model.calls, model.seconds = 0, []
  assert predict.predict_images(model, paths, str(tmp_path / "p"), every_s=0.0) == 6
  lines = capsys.readouterr().err.splitlines()
  assert re.match(r"predict: 2/6 images \(33 %\) in \d+s \(start-up included", lines[0]), lines
  eta = re.match(r"predict: 4/6 images \(67 %\), [\d.]+ images/s, ETA (\d+)s$", lines[1])
  assert eta, lines
  second = model.seconds[1]  # the rate is measured on this batch alone (plus the host work around it)
  assert abs(int(eta.group(1)) - second) < 1.0, (lines, model.seconds)  # with the compile: 1.5 s + t


def test_tflite_runs_the_raw_savedmodel_and_stops_at_the_scatter_of_the_postprocessed_one(tmp_path):
  """What docs/contracts.md says of TFLite: the raw outputs (model only) convert with builtin ops and equal the JAX
  export; the post-processed export converts, but the TFLite runtime refuses its stablehlo.scatter (the pixel
  counts of `jnp.bincount` in postprocess.panoptic_inference)."""
  import tensorflow as tf
  c = _config()
  model = StandIn()
  rng = np.random.default_rng(5)
  emb = rng.normal(size=(C, D)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.asarray(emb),
                         jnp.ones((1, C), bool))
  names = [f"class {k}" for k in range(C)]
  images = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
  interpreters = {}
  for outputs in ("raw", "postprocessed"):
    path = savedmodel.export_savedmodel(c, variables, names, emb, THINGS, str(tmp_path / outputs), outputs=outputs,
                                        model=model)
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreters[outputs] = tf.lite.Interpreter(model_content=converter.convert())
  exporter.export_model(c, variables, names, emb, THINGS, str(tmp_path / "jax_raw"), outputs="raw", model=model)
  served = loader.ExportedModel(str(tmp_path / "jax_raw"))
  want = served(images)
  got = interpreters["raw"].get_signature_runner("serving_default")(
      images=images, image_sizes=np.full((1, 2), SIZE, np.int32), class_embeddings=served.embeddings,
      class_mask=served.class_mask, thing_mask=served.thing_mask)
  for k in ("pred_logits", "pred_masks"):
    np.testing.assert_allclose(got[k], want[k], atol=1e-4, rtol=1e-4, err_msg=k)
  with pytest.raises(RuntimeError, match="STABLEHLO_SCATTER"):
    interpreters["postprocessed"].allocate_tensors()
