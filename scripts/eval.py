"""Evaluates a trained DataSeg on every dataset entry and each of its `eval_tasks`.

  python scripts/eval.py --config configs/toy.py --workdir workdirs/toy [--step 1500|best]

Restores the latest (or --step; 'best': the one that scored best on config.best_checkpoint_metric in the
evaluations during training) checkpoint of WORKDIR/checkpoints, writes the metrics to the CLU writers
(TensorBoard in WORKDIR/eval, and the console) and to WORKDIR/eval/metrics.json, and the standard prediction
files (COCO panoptic PNG + JSON, semantic PNGs, COCO results JSON) plus overlay pictures under
WORKDIR/eval/<step>/<dataset>/. `--config.<key>=<value>` overrides any config key.
"""
import json
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from dataseg_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_STEP = flags.DEFINE_string("step", None, "Checkpoint step to evaluate, or 'best': the best evaluated on "
                            "config.best_checkpoint_metric (default: the latest).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, step=None) -> dict:
  """Restores variables, embeds the vocabulary, evaluates; returns the flat metrics dict."""
  import jax
  from clu import metric_writers

  from data_pipelines import registry
  from dataseg_jax import config as config_lib
  from dataseg_jax import hardware
  from dataseg_jax.evaluation import evaluator
  from dataseg_jax.train import checkpointing
  from dataseg_jax import sharding as sharding_lib
  from dataseg_jax.vocab import embeddings

  config_lib.validate(config)
  sharding_lib.maybe_initialize_distributed(config)  # several processes (a pod slice) evaluate together
  hardware.use_compilation_cache(config.get("compilation_cache_dir", ""))
  step = checkpointing.resolve_step(workdir, step, config)
  variables = checkpointing.restore_variables(workdir, step)
  vocab = registry.build_vocab(config)
  class_embeddings = embeddings.embed_for_config(vocab.names, config, workdir)
  metrics = evaluator.evaluate(config, variables, vocab, class_embeddings, workdir, step)
  writer = metric_writers.create_default_writer(os.path.join(workdir, "eval"), just_logging=jax.process_index() > 0)
  writer.write_scalars(step, metrics)
  writer.flush()
  return metrics


def main(argv):
  del argv
  import flax  # pylint: disable=g-import-not-at-top  # after the flags: --help stays fast

  logging.getLogger().setLevel(logging.INFO)
  try:
    metrics = run(_CONFIG.value, _WORKDIR.value, _STEP.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except flax.errors.FlaxError as e:  # the model of --config is not the one that wrote the checkpoint
    sys.exit(cli.checkpoint_mismatch(_WORKDIR.value, e))
  print(json.dumps(metrics, indent=1, sort_keys=True))


if __name__ == "__main__":
  cli.run(main, __doc__, huge_pages=True)
