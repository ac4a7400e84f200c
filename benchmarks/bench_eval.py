"""Benchmarks evaluation: post-processing and metric time per image against the model forward time.

  python benchmarks/bench_eval.py            # toy and R50 sizes
  python benchmarks/bench_eval.py --quick    # fewer repeats

Per size (toy: configs/toy.py, R50: configs/dataseg_r50.py; Q queries, K dataset classes, S x S eval size):
- postprocess: the evaluator's jitted device work after the model (bilinear upsampling of the final-layer
  mask logits to S x S, semantic + panoptic + instance inference on K classes), per image; also each task
  alone (a dataset is evaluated only on its own eval_tasks);
- metrics: the evaluator's host work per image for the three tasks (crop to the image's valid extent and
  nearest resize to its original size, confusion matrix, PQ accumulation, COCO RLE encoding of the top-k
  instance masks: `evaluator.encode_instances`); R50: a 640 x 480 image (COCO's most common size) padded
  into the 1024 x 1024 input, toy: 128 x 128 images;
- forward: `DataSeg.apply` (final outputs of every layer) per image, when dataseg_jax.models.dataseg exists.
Inputs: random class logits and spatially coherent random mask logits (`_mask_logits`). Target: postprocess +
metrics < 20% of forward. Times are medians after compilation, on the default device.
"""
import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import dataseg_r50  # noqa: E402
from configs import toy  # noqa: E402
from dataseg_jax import hardware  # noqa: E402
from dataseg_jax.evaluation import evaluator  # noqa: E402
from dataseg_jax.evaluation import panoptic  # noqa: E402
from dataseg_jax.evaluation import postprocess  # noqa: E402
from dataseg_jax.evaluation import semantic  # noqa: E402

import timing  # noqa: E402  benchmarks/timing.py (a script's own folder comes first on sys.path)


def _postprocess_fn(eval_config, tasks=("semantic", "panoptic", "instance")):
  """The evaluator's device work after the model for a dataset evaluated on `tasks`."""
  @jax.jit
  def fn(logits, masks, valid, things):
    return postprocess.infer_tasks(logits, masks, valid, tasks, things, eval_config)
  return fn


def _host_metrics(outputs, k, b, extent, size):
  """The evaluator's per-image host work on example `b` (`evaluator._DatasetEval.add`'s steps: crop to the valid
  `extent`, nearest resize to the original `size`, accumulate), against a synthetic ground truth."""
  outputs = jax.tree.map(np.asarray, outputs)
  sem, inst = outputs["semantic"], outputs["instance"]
  labels = evaluator.crop_resize_labels(sem[b], extent, size)
  semantic.SemanticConfusion.from_model_output(labels, (labels + 1) % k, k)
  stat = panoptic.PQStat({c: {"isthing": int(c % 2)} for c in range(k)})
  pan = {key: v[b] for key, v in outputs["panoptic"].items()}
  ids, segs, _ = evaluator.panoptic_segments(pan, extent, size, list(range(k)), np.arange(k) % 2 == 1)
  stat.add_image(ids, segs, ids, segs)
  evaluator.encode_instances(0, inst["masks"][b], inst["scores"][b], inst["classes"][b], extent, size)


def _mask_logits(rng, batch, q, s):
  """Mask logits [batch, q, s / 4, s / 4] with a trained model's spatial coherence: normal(0, 3) at 1/16 of the
  image size, bilinearly upsampled (independent mask pixels would make the RLEs about 3x longer than a model's)."""
  low = jnp.asarray(rng.normal(0, 3, (batch, q, s // 16, s // 16)), jnp.float32)
  return jax.image.resize(low, (batch, q, s // 4, s // 4), "bilinear")


def _forward_fn(config):
  try:
    from dataseg_jax.models import dataseg
  except ImportError:
    return None
  model = dataseg.DataSeg(config.model)
  s = int(config.data.eval_size)
  c = 16
  emb = jnp.ones((c, config.model.embed_dim), jnp.float32) / np.sqrt(config.model.embed_dim)
  images = jnp.zeros((1, s, s, 3), jnp.uint8)
  mask = jnp.ones((1, c), bool)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images, emb, mask))()
  apply = jax.jit(lambda v, x: model.apply(v, x, emb, mask, train=False))
  return lambda: apply(variables, images)


def bench_size(name, config, num_classes, batch, repeats, extent=None, orig_size=None) -> dict:
  """`extent`: the image's valid (h, w) in the padded S x S input, `orig_size` its original (H, W)."""
  q, s = int(config.model.num_queries), int(config.data.eval_size)
  extent = extent or (s, s)
  orig_size = orig_size or extent
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(0, 3, (batch, q, num_classes + 1)), jnp.float32)
  masks = _mask_logits(rng, batch, q, s)
  things = jnp.asarray(np.arange(num_classes) % 2 == 1)
  valid = postprocess.valid_from_sizes(jnp.tile(jnp.asarray([extent], jnp.int32), (batch, 1)), (s, s))
  fn = _postprocess_fn(config.eval)
  jax.block_until_ready(fn(logits, masks, valid, things))
  post = timing.median_seconds(lambda: jax.block_until_ready(fn(logits, masks, valid, things)), repeats) / batch
  outputs = jax.device_get(fn(logits, masks, valid, things))
  metrics = timing.median_seconds(lambda: _host_metrics(outputs, num_classes, 0, extent, orig_size), repeats)
  out = {"images": f"{s}x{s}", "valid_extent": list(extent), "original_size": list(orig_size), "queries": q,
         "classes": num_classes, "batch": batch,
         "postprocess_s_per_image": round(post, 5), "metrics_s_per_image": round(metrics, 5)}
  for task in ("semantic", "panoptic", "instance"):
    one = _postprocess_fn(config.eval, (task,))
    jax.block_until_ready(one(logits, masks, valid, things))
    seconds = timing.median_seconds(lambda: jax.block_until_ready(one(logits, masks, valid, things)), repeats)
    out[f"postprocess_{task}_only_s_per_image"] = round(seconds / batch, 5)
  forward = _forward_fn(config)
  if forward is None:
    out["forward_s_per_image"] = None
    out["note"] = "dataseg_jax.models.dataseg not importable: forward not measured"
    return out
  jax.block_until_ready(forward())
  fwd = timing.median_seconds(lambda: jax.block_until_ready(forward()), repeats)
  out.update({"forward_s_per_image": round(fwd, 5),
              "eval_images_per_s": round(1.0 / (fwd + post + metrics), 3),
              "post_and_metrics_over_forward": round((post + metrics) / fwd, 4)})
  return out


def run(quick: bool = False) -> dict:
  """{'toy': {...}, 'r50': {...}}, see the module docstring."""
  reps = 2 if quick else 5
  return {"device": jax.devices()[0].device_kind,
          "toy": bench_size("toy", toy.get_config(), num_classes=12, batch=8, repeats=reps),
          # a 640 x 480 image (COCO's most common size) padded into the 1024 x 1024 evaluation input
          "r50": bench_size("r50", dataseg_r50.get_config(), num_classes=150, batch=1, repeats=max(reps // 2, 1),
                            extent=(768, 1024), orig_size=(480, 640))}


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  print(json.dumps(run(parser.parse_args().quick), indent=1))
