"""Exports a trained DataSeg as serialized StableHLO with its weights and vocabulary.

  python scripts/export.py --config configs/toy.py --workdir workdirs/toy --out exported/toy \
      [--step N|best] [--batch_size 1] [--max_classes 0] [--outputs postprocessed|raw]

The directory runs without the training code: `dataseg_jax/export/loader.py` (jax, numpy and the pure-Python names
reader only) or `scripts/predict.py --model exported/toy --images DIR --out DIR [--vocab names.txt]`.
"""
import logging
import sys

import flax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dataseg_jax import config as config_lib
from dataseg_jax import cli, hardware

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_OUT = flags.DEFINE_string("out", None, "Export directory to write.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step, or 'best': the best evaluated on "
                            "config.best_checkpoint_metric (default: the latest).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size of the exported function.")
_MAX_CLASSES = flags.DEFINE_integer("max_classes", 0, "Largest vocabulary a swap may bring (0: the trained one).")
_OUTPUTS = flags.DEFINE_enum("outputs", "postprocessed", ["postprocessed", "raw"], "What the function returns.")
flags.mark_flags_as_required(["config", "workdir", "out"])


def run(config, workdir, out, step=None, batch_size=1, max_classes=0, outputs="postprocessed") -> str:
  from data_pipelines import registry
  from dataseg_jax.export import exporter
  from dataseg_jax.train import checkpointing
  from dataseg_jax.vocab import embeddings

  config_lib.validate(config)
  variables = checkpointing.restore_variables(workdir, checkpointing.resolve_step(workdir, step, config))
  vocab = registry.build_vocab(config)
  emb = embeddings.embed_for_config(vocab.names, config, workdir)
  things = np.asarray(vocab.thing_mask).any(0)
  return exporter.export_model(config, variables, vocab.names, emb, things, out, batch_size=batch_size,
                               max_classes=max_classes, outputs=outputs)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  try:
    path = run(_CONFIG.value, _WORKDIR.value, _OUT.value, _STEP.value, _BATCH.value, _MAX_CLASSES.value,
               _OUTPUTS.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  except flax.errors.FlaxError as e:  # the model of --config is not the one that wrote the checkpoint
    sys.exit(cli.checkpoint_mismatch(_WORKDIR.value, e))
  print(f"exported to {path}")


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  app.run(main, flags_parser=cli.flags_parser(__doc__))
