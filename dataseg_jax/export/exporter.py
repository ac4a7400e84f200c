"""Exports DataSeg as a serialized StableHLO function (`jax.export`) with its weights and vocabulary.

The exported function is
  f(params, images uint8 [B, S, S, 3], image_sizes int32 [B, 2], class_embeddings float32 [C_max, D],
    class_mask bool [C_max], thing_mask bool [C_max]) -> outputs
where image_sizes holds each image's (h, w) inside its input, padded bottom and right to S x S (the padding
belongs to no segment), and with the class embeddings an input, so a vocabulary of up to C_max names can be
swapped in at serving time (open-vocabulary transfer [paper]). `outputs='raw'` returns the final decoder layer
('pred_logits' [B, Q, C_max + 1], 'pred_masks' [B, Q, S/4, S/4]); `outputs='postprocessed'` adds the per-task
inference at S x S ('semantic' [B, S, S], 'panoptic_seg' [B, S, S] with 'segment_id' / 'segment_class' /
'segment_score' / 'segment_is_thing' [B, Q], and 'instance_masks' [B, K, S, S], 'instance_scores',
'instance_classes', 'instance_boxes', 'instance_valid', of thing classes only). `loader.ExportedModel` runs it.
"""
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from dataseg_jax import trees
from dataseg_jax.evaluation import postprocess

OUTPUTS = ("raw", "postprocessed")
PLATFORMS = ("cpu", "cuda", "tpu")  # the exported program holds a lowering for each


def inference_fn(model, eval_config, outputs: str = "postprocessed"):
  """The function that is exported (see the module docstring); also the in-framework reference."""
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")

  def fn(params, images, image_sizes, class_embeddings, class_mask, thing_mask):
    b = images.shape[0]
    cm = jnp.broadcast_to(class_mask, (b, class_mask.shape[0]))
    tm = jnp.broadcast_to(thing_mask, (b, thing_mask.shape[0]))
    raw = model.apply({"params": params}, images, class_embeddings, cm, train=False)
    logits, masks = raw["pred_logits"][-1], raw["pred_masks"][-1]
    out = {"pred_logits": logits, "pred_masks": masks}
    if outputs == "raw":
      return out
    in_image = postprocess.valid_from_sizes(image_sizes, images.shape[1:3])
    up = postprocess.upsample_masks(masks, images.shape[1:3])
    out["semantic"] = postprocess.semantic_inference(logits, up, cm)["labels"]
    out.update(postprocess.panoptic_inference(
        logits, up, tm, in_image, object_mask_threshold=float(eval_config.object_mask_threshold),
        overlap_threshold=float(eval_config.overlap_threshold)))
    inst = postprocess.crop_instances(
        postprocess.instance_inference(logits, up, cm & tm, in_image, topk=int(eval_config.instance_topk)), in_image)
    out.update({f"instance_{k}": v for k, v in inst.items()})
    return out

  return fn


def check_vocabulary(config, names, embeddings, things, batch_size: int, max_classes: int) -> int:
  """C_max of an export of `names` [C] with `embeddings` [C, D] and `things` [C]; ValueError saying what to change
  when they disagree, the batch is empty, `max_classes` is below C, or a learned class table is asked for more."""
  c = np.shape(embeddings)[0]
  if len(names) != c or len(things) != c:
    raise ValueError(f"{len(names)} names, {len(things)} thing flags and {c} embeddings; they must agree")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size}: the exported function needs a batch of at least 1 image")
  c_max = int(max_classes) or c
  if c_max < c:
    raise ValueError(f"max_classes={c_max} is smaller than the vocabulary ({c} names)")
  if config.model.classifier == "learned" and c_max != c:
    raise ValueError(f"max_classes={c_max}: a model with a learned class table (model.classifier='learned') "
                     f"classifies its own {c} classes only; export it without max_classes")
  return c_max


def input_specs(batch_size: int, image_size: int, c_max: int, dim: int) -> tuple:
  """Shapes and dtypes of the exported function's inputs after `params`, in order."""
  return (jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
          jax.ShapeDtypeStruct((c_max, dim), jnp.float32),
          jax.ShapeDtypeStruct((c_max,), jnp.bool_),
          jax.ShapeDtypeStruct((c_max,), jnp.bool_))


def write_vocabulary_and_config(out_dir: str, config, names, embeddings, things, *, c_max: int, batch_size: int,
                                outputs: str, export_format: str) -> None:
  """`embeddings.npy` (zero rows past the vocabulary up to C_max), `names.txt`, `things.txt` and `config.json`."""
  c, dim = embeddings.shape
  os.makedirs(out_dir, exist_ok=True)
  padded = np.zeros((c_max, dim), np.float32)
  padded[:c] = embeddings
  np.save(os.path.join(out_dir, "embeddings.npy"), padded)
  with open(os.path.join(out_dir, "names.txt"), "w") as f:
    f.write("".join(n + "\n" for n in names))
  with open(os.path.join(out_dir, "things.txt"), "w") as f:
    f.write("".join(n + "\n" for n, t in zip(names, things) if t))
  meta = {"format": export_format, "image_size": int(config.data.eval_size), "batch_size": int(batch_size),
          "max_classes": c_max, "embed_dim": int(dim), "outputs": outputs,
          "num_queries": int(config.model.num_queries),
          "eval": {k: config.eval[k] for k in ("object_mask_threshold", "overlap_threshold", "instance_topk")},
          "vocab": {"encoder": config.vocab.encoder, "prompts": list(config.vocab.prompts),
                    "clip_weights": config.vocab.clip_weights},
          "model": config.model.to_dict()}
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(meta, f, indent=1)


def default_model(config):
  """`DataSeg(config.model)`, the model every export holds unless a test passes another."""
  from dataseg_jax.models import dataseg  # pylint: disable=g-import-not-at-top
  return dataseg.DataSeg(config.model)


def export_model(config, variables, names, embeddings, things, out_dir: str, *, batch_size: int = 1,
                 max_classes: int = 0, outputs: str = "postprocessed", model=None) -> str:
  """Writes the export directory described in `dataseg_jax.export.loader`; returns `out_dir`.

  Args:
    config: the full config (model, data.eval_size, eval thresholds, vocab encoder and prompts).
    variables: {'params': ...}.
    names: the vocabulary [C]; embeddings float32 [C, D]; things: bool [C].
    batch_size: B of the exported function; max_classes: C_max (0: C).
    model: a module with DataSeg's apply contract; default `DataSeg(config.model)`.
  """
  model = default_model(config) if model is None else model
  names = list(names)
  embeddings = np.asarray(embeddings, np.float32)
  c_max = check_vocabulary(config, names, embeddings, things, batch_size, max_classes)
  fn = jax.jit(inference_fn(model, config.eval, outputs))
  params = flax.core.meta.unbox(variables["params"])  # plain arrays: logical-axis boxes do not serialize
  args = (jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), params),
          *input_specs(batch_size, int(config.data.eval_size), c_max, embeddings.shape[1]))
  exported = jax_export.export(fn, platforms=PLATFORMS)(*args)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "model.stablehlo"), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(out_dir, "params.npz"), **trees.flatten(jax.device_get(params)))
  write_vocabulary_and_config(out_dir, config, names, embeddings, things, c_max=c_max, batch_size=batch_size,
                              outputs=outputs, export_format="stablehlo")
  return out_dir
