"""Exports a trained DataSeg with its weights and vocabulary: serialized StableHLO, or a TensorFlow SavedModel.

  python scripts/export.py --config configs/toy.py --workdir workdirs/toy --out exported/toy \
      [--format stablehlo|savedmodel] [--step N|best] [--batch_size 1] [--max_classes 0] [--outputs postprocessed|raw]

`stablehlo` runs without the training code: `dataseg_jax/export/loader.py` (jax, numpy and the pure-Python names
reader only) or `scripts/predict.py --model exported/toy --images DIR --out DIR [--vocab names.txt]`. `savedmodel` is
served by TensorFlow alone (TF Serving, `tf.saved_model.load`): signatures `serving_default` (images, image_sizes,
class_embeddings, class_mask, thing_mask) and `trained_vocabulary` (images, image_sizes); see
dataseg_jax/export/savedmodel.py.
"""
import logging
import sys

from absl import flags
from ml_collections import config_flags

from dataseg_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_OUT = flags.DEFINE_string("out", None, "Export directory to write.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step, or 'best': the best evaluated on "
                            "config.best_checkpoint_metric (default: the latest).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size of the exported function.")
_MAX_CLASSES = flags.DEFINE_integer("max_classes", 0, "The export's class cap C_max: the most names a vocabulary "
                                    "swapped in at serving time (predict.py --vocab) may have; 0: the size of the "
                                    "trained vocabulary (config.json max_classes says which), so a larger one needs "
                                    "a re-export with --max_classes N.")
_OUTPUTS = flags.DEFINE_enum("outputs", "postprocessed", ["postprocessed", "raw"], "What the function returns.")
_FORMAT = flags.DEFINE_enum("format", "stablehlo", ["stablehlo", "savedmodel"],
                            "stablehlo: jax.export StableHLO + params.npz, run by export/loader.py and predict.py; "
                            "savedmodel: a TensorFlow SavedModel (jax2tf) that TensorFlow serves alone.")
flags.mark_flags_as_required(["config", "workdir", "out"])


def run(config, workdir, out, step=None, batch_size=1, max_classes=0, outputs="postprocessed",
        export_format="stablehlo") -> str:
  import numpy as np

  from data_pipelines import registry
  from dataseg_jax import config as config_lib
  from dataseg_jax.export import exporter, savedmodel
  from dataseg_jax.train import checkpointing
  from dataseg_jax.vocab import embeddings

  config_lib.validate(config)
  variables = checkpointing.restore_variables(workdir, checkpointing.resolve_step(workdir, step, config))
  vocab = registry.build_vocab(config)
  emb = embeddings.embed_for_config(vocab.names, config, workdir)
  things = np.asarray(vocab.thing_mask).any(0)
  export = savedmodel.export_savedmodel if export_format == "savedmodel" else exporter.export_model
  return export(config, variables, vocab.names, emb, things, out, batch_size=batch_size, max_classes=max_classes,
                outputs=outputs)


def main(argv):
  del argv
  import flax  # pylint: disable=g-import-not-at-top  # after the flags: --help stays fast

  logging.getLogger().setLevel(logging.INFO)
  try:
    path = run(_CONFIG.value, _WORKDIR.value, _OUT.value, _STEP.value, _BATCH.value, _MAX_CLASSES.value,
               _OUTPUTS.value, _FORMAT.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  except flax.errors.FlaxError as e:  # the model of --config is not the one that wrote the checkpoint
    sys.exit(cli.checkpoint_mismatch(_WORKDIR.value, e))
  print(f"exported to {path}")


if __name__ == "__main__":
  cli.run(main, __doc__, huge_pages=True)
