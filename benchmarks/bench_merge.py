"""How MERGE trains: the criterion's per-layer instrument at initialisation and after a few hundred steps.

  python benchmarks/bench_merge.py --data_dir data/toy --out merge.json
  python benchmarks/bench_merge.py --data_dir data/toy --configs r50 --variants first_guess,noisy_or --steps 0,200 \
      --r50_size 256

For each config (toy: configs/toy.py; r50: the R50 recipe's model, 100 queries, on the toy datasets at
--r50_size px, batch 2), each MERGE variant (`VARIANTS`) and each step count (0: random initialisation; N > 0:
after N training steps of scripts/train.py's loop, same seed), the criterion's statistics
(criterion.MERGE_STATS) on the same fixed batches of every training dataset: per decoder layer, the fraction of
merged-mask pixels where the merge passes no gradient, the mean and largest merging-group size, and the valid
segments left without a loss (per batch). Printed as a table per config; all numbers in --out (JSON).
"""
import argparse
import json
import pathlib
import runpy
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from dataseg_jax import hardware

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> config.loss overrides
    "noisy_or": {},
    "max": {"merge_mask": "max"},
    "clip": {"merge_mask": "clip"},
    "first_guess": {"merge_mask": "clip", "merge_background": True, "match_leftover": False},
}
BATCHES_PER_DATASET = 2


def load_config(name: str, data_dir: str, r50_size: int):
  """configs/toy.py, or the R50 recipe's model on the toy datasets at `r50_size` px, batch 2."""
  toy = runpy.run_path(str(REPO / "configs" / "toy.py"))
  c = toy["get_config"]()
  if name == "r50":
    r50 = runpy.run_path(str(REPO / "configs" / "dataseg_r50.py"))["get_config"]()
    r50.data.datasets = c.data.datasets
    r50.data.image_size = r50.data.eval_size = r50_size
    r50.data.batch_size, r50.data.max_segments = 2, c.data.max_segments
    r50.model.dtype = "float32"  # bf16 matmuls are emulated on the CPU
    r50.log_every_steps = 50
    c = r50
  c.data_dir = data_dir
  c.eval_every_steps = -1
  return c


def fixed_batches(config, vocab) -> list:
  """The first BATCHES_PER_DATASET batches of each training dataset that the training mixture draws."""
  from data_pipelines import mixture
  iterator = mixture.TrainIterator(config, vocab)
  wanted = {vocab.dataset_index(n): BATCHES_PER_DATASET for n in iterator.names}
  out = []
  try:
    while any(wanted.values()):
      batch = next(iterator)
      d = int(batch["dataset_id"][0])
      if wanted.get(d):
        wanted[d] -= 1
        out.append(batch)
  finally:
    iterator.close()
  return out


def statistics(config, components, params, batches) -> dict:
  """task name -> {stat: [L] mean over that task's batches} of the criterion on `batches`."""
  from dataseg_jax import contract
  from dataseg_jax.losses import criterion

  emb = jnp.asarray(components.class_embeddings)
  mask = jnp.asarray(components.vocab.class_mask)

  @jax.jit
  def stats(p, batch):
    outputs = components.model.apply({"params": p}, batch["image"], emb, mask[batch["dataset_id"]], train=False)
    return criterion.criterion(outputs, batch, config, jax.random.key(0))[2]

  per_task = {}
  for batch in batches:
    task = contract.Task(int(batch["task"][0])).name.lower()
    per_task.setdefault(task, []).append(jax.device_get(stats(params, batch)))
  with warnings.catch_warnings():  # a layer without any group in all of a task's batches stays NaN: undefined
    warnings.simplefilter("ignore", RuntimeWarning)
    return {task: {k: np.nanmean(np.stack([r[k] for r in rows]), axis=0).tolist() for k in rows[0]}
            for task, rows in per_task.items()}


def params_after(config, steps: int) -> dict:
  """The parameters after `steps` steps of the training loop (a fresh run in a temporary workdir)."""
  from dataseg_jax.train import checkpointing, loop
  with tempfile.TemporaryDirectory() as workdir:
    c = config.copy_and_resolve_references()
    c.total_steps, c.checkpoint_every_steps = steps, steps
    loop.train(c, workdir)
    return checkpointing.restore_variables(workdir)["params"]


def run(name: str, data_dir: str, variants, steps, r50_size: int) -> dict:
  """{variant: {steps: statistics}} for one config."""
  from dataseg_jax import sharding as sharding_lib
  from dataseg_jax.train import loop, optimizer as optimizer_lib
  out = {}
  for variant in variants:
    config = load_config(name, data_dir, r50_size)
    config.loss.update(VARIANTS[variant], merge_stats_stride=1)  # every pixel, not the training logs' estimate
    with tempfile.TemporaryDirectory() as cache:
      components = loop.build_components(config, cache)
    batches = fixed_batches(config, components.vocab)
    out[variant] = {}
    for n in steps:
      if n == 0:
        size = config.data.image_size
        _, _, create = loop.init_state(config, components, sharding_lib.make_mesh(config),
                                       optimizer_lib.make_optimizer(config), (size, size, 3))
        params = create().params
      else:
        params = params_after(config, n)
      out[variant][n] = statistics(config, components, params, batches)
      print(f"{name} {variant} step {n}: done", flush=True)
  return out


def format_table(name: str, result: dict) -> str:
  """One row per (variant, steps, task, layer)."""
  rows = [f"## {name}", "", "| variant | step | task | layer | zero-gradient fraction | group size mean | max "
          "| segments without a loss (per batch) |", "|---|---|---|---|---|---|---|---|"]
  for variant, by_steps in result.items():
    for n, by_task in by_steps.items():
      for task, s in by_task.items():
        for layer in range(len(s["segments_without_loss"])):
          cells = [s[k][layer] for k in ("merge_zero_grad_frac", "merge_group_size_mean", "merge_group_size_max",
                                         "segments_without_loss")]
          rows.append(f"| {variant} | {n} | {task} | {layer} | " + " | ".join(
              "-" if np.isnan(v) else f"{v:.3f}" for v in cells) + " |")
  return "\n".join(rows)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default="data/toy", help="the toy world (scripts/make_toy_data.py)")
  p.add_argument("--configs", default="toy,r50", help="comma-separated: toy, r50")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
  p.add_argument("--steps", default="0,200", help="comma-separated step counts (0: at initialisation)")
  p.add_argument("--r50_size", type=int, default=512, help="image size of the r50 config")
  p.add_argument("--out", default="", help="JSON file for every number")
  a = p.parse_args()
  steps = [int(s) for s in a.steps.split(",")]
  results = {}
  for name in a.configs.split(","):
    results[name] = run(name, a.data_dir, a.variants.split(","), steps, a.r50_size)
    print(format_table(name, results[name]), flush=True)
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
