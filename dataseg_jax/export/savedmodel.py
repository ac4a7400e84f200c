"""Exports DataSeg as a TensorFlow SavedModel (jax2tf, native serialization) that TensorFlow alone can serve.

The SavedModel holds the function of `exporter.inference_fn` as StableHLO inside one `XlaCallModule` op, lowered for
CPU, CUDA and TPU (`exporter.PLATFORMS`), with the weights as TF variables. TF Serving, Vertex AI or
`tf.saved_model.load` run it without JAX, flax or this repository. Two signatures:

  serving_default(images uint8 [B, S, S, 3], image_sizes int32 [B, 2], class_embeddings float32 [C_max, D],
                  class_mask bool [C_max], thing_mask bool [C_max]) -> the per-task outputs
  trained_vocabulary(images, image_sizes) -> the same, with the vocabulary the model was exported with

as in `exporter` (image_sizes: each image's (h, w) at the top left of its zero-padded input; the class embeddings
an input so that a vocabulary of up to C_max names, embedded with the export's text encoder and prompts, can be
swapped in at serving time). The directory also holds `embeddings.npy`, `names.txt`, `things.txt` and `config.json`
as the StableHLO export does; the loaded object carries the exported vocabulary as `class_embeddings`,
`class_mask` and `thing_mask`.

TFLite (`tf.lite.TFLiteConverter.from_saved_model`, TensorFlow 2.21, builtin ops): an `--outputs raw` export
converts and runs, equal to the JAX export (the toy model: logits within 1e-5, mask logits within 5e-5); the
post-processed one converts, but the TFLite runtime refuses its `stablehlo.scatter` ("Only update, Add, Multiply,
Maximum and Minimum operations are currently supported for stablehlo.scatter. Node ... (STABLEHLO_SCATTER) failed
to prepare"), the scatter-add of `jnp.bincount` that counts each segment's pixels in
`postprocess.panoptic_inference`; an unbatched float32 scatter-add in its place fails the same way. On TFLite, run
the raw export and post-process on the host.
"""
import contextlib
import logging
import os

import flax
import jax
import numpy as np

from dataseg_jax.export import exporter

SIGNATURE_INPUTS = ("images", "image_sizes", "class_embeddings", "class_mask", "thing_mask")


@contextlib.contextmanager
def stablehlo_tensorflow_reads():
  """Serialises the StableHLO that jax2tf embeds at a version the installed TensorFlow can read.

  jax writes its portable artifacts at the StableHLO version of about four weeks before its release; the
  `XlaCallModule` op of TensorFlow reads up to the version it was built with, which can be older (jax 0.10.2 writes
  1.15.0, TensorFlow 2.21 reads up to 1.13.7 and stops at `vhlo.composite_v2`, the form of `lax.top_k`). Within this
  context jax serialises at the older of the two.
  """
  from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-import-not-at-top
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo  # pylint: disable=g-import-not-at-top

  choose = hlo.get_version_from_compatibility_requirement
  readable = tf_stablehlo.get_current_version()
  hlo.get_version_from_compatibility_requirement = lambda req: tf_stablehlo.get_smaller_version(choose(req), readable)
  try:
    yield
  finally:
    hlo.get_version_from_compatibility_requirement = choose


def _tf_specs(batch_size: int, image_size: int, c_max: int, dim: int) -> list:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=name)
          for name, s in zip(SIGNATURE_INPUTS, exporter.input_specs(batch_size, image_size, c_max, dim))]


def export_savedmodel(config, variables, names, embeddings, things, out_dir: str, *, batch_size: int = 1,
                      max_classes: int = 0, outputs: str = "postprocessed", model=None) -> str:
  """Writes a SavedModel of the exported function (module docstring) and the vocabulary files; returns `out_dir`.

  Arguments as `exporter.export_model`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  model = exporter.default_model(config) if model is None else model
  names = list(names)
  embeddings = np.asarray(embeddings, np.float32)
  c_max = exporter.check_vocabulary(config, names, embeddings, things, batch_size, max_classes)
  dim = embeddings.shape[1]
  params = jax.device_get(flax.core.meta.unbox(variables["params"]))
  converted = jax2tf.convert(exporter.inference_fn(model, config.eval, outputs), with_gradient=False,
                             native_serialization_platforms=exporter.PLATFORMS)

  padded = np.zeros((c_max, dim), np.float32)
  padded[:len(names)] = embeddings
  module = tf.Module()
  module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), params)
  module.class_embeddings = tf.Variable(padded, trainable=False, name="class_embeddings")
  module.class_mask = tf.Variable(np.arange(c_max) < len(names), trainable=False, name="class_mask")
  module.thing_mask = tf.Variable(np.pad(np.asarray(things, bool), (0, c_max - len(names))), trainable=False,
                                  name="thing_mask")
  specs = _tf_specs(batch_size, int(config.data.eval_size), c_max, dim)

  @tf.function(autograph=False, input_signature=specs)
  def serve(images, image_sizes, class_embeddings, class_mask, thing_mask):
    return converted(module.params, images, image_sizes, class_embeddings, class_mask, thing_mask)

  @tf.function(autograph=False, input_signature=specs[:2])
  def trained_vocabulary(images, image_sizes):
    return serve(images, image_sizes, module.class_embeddings, module.class_mask, module.thing_mask)

  module.serve = serve
  module.trained_vocabulary = trained_vocabulary
  os.makedirs(out_dir, exist_ok=True)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  try:
    with stablehlo_tensorflow_reads():  # jax2tf exports when the signatures are traced, inside save
      tf.saved_model.save(module, out_dir,
                          signatures={"serving_default": serve, "trained_vocabulary": trained_vocabulary})
  finally:  # TF's autotrackable sets absl's verbosity while saving and leaves its logger at WARNING
    absl_logger.setLevel(level)
  exporter.write_vocabulary_and_config(out_dir, config, names, embeddings, things, c_max=c_max,
                                       batch_size=batch_size, outputs=outputs, export_format="savedmodel")
  return out_dir
