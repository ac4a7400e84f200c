"""`make demo`: toy data -> train on three datasets at once -> evaluate every task -> pictures -> results table.

  python scripts/demo.py --data_dir data/toy --workdir workdirs/toy_demo [--steps N]

A stage whose output is already there is skipped (the toy data, a finished training run, the evaluation of the
final checkpoint, which training itself writes at its last step), so a second `make demo` reuses what it built
and rewrites only the export and the predictions; an interrupted training run resumes from its last checkpoint. The last lines
say where everything is: metrics, overlays, prediction files, checkpoints, the export, TensorBoard.
"""
import json
import pathlib
import runpy
import subprocess
import sys
import time

from absl import flags

from dataseg_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def stage(i: int, n: int, title: str, t0: float) -> None:
  print(f"\n=== [{i}/{n}] {title}  (elapsed {time.time() - t0:.0f} s)", flush=True)


def run(*args: str) -> None:
  """Runs a script of ours with this interpreter; stops the demo with its exit code on failure."""
  cmd = [sys.executable, *args]
  print("$", " ".join(cmd), flush=True)
  proc = subprocess.run(cmd, cwd=REPO)
  if proc.returncode:
    sys.exit(f"demo: step failed ({proc.returncode}): {' '.join(cmd)}")


def trivial_baselines(metrics: dict, num_classes: dict) -> dict:
  """What a model that learned nothing scores: predicting nothing gives PQ 0 and AP 0; labelling every pixel
  with one class gives mIoU <= 100 / K for a dataset whose K classes all occur in its val split (that class's
  IoU is at most 1, every other class's is 0); held-out classes score their chance level (the evaluator's
  `mIoU_unseen_chance`: uniform random labels)."""
  base = {}
  for key in metrics:
    name, _, metric = key.split("/", 2)
    if metric in ("PQ", "AP", "box_AP"):
      base[key] = 0.0
    elif metric == "mIoU" and name in num_classes:
      base[key] = 100.0 / num_classes[name]
    elif metric == "mIoU_unseen" and key + "_chance" in metrics:
      base[key] = metrics[key + "_chance"]
  return base


def results_table(metrics: dict, num_classes: dict) -> str:
  keep = ("mIoU", "mIoU_unseen", "PQ", "PQ_th", "PQ_st", "AP", "AP50", "box_AP")
  base = trivial_baselines(metrics, num_classes)
  rows = ["| dataset | task | metric | value | trivial baseline (mIoU: at most; unseen: chance) |",
          "|---|---|---|---|---|"]
  for key in sorted(metrics):
    name, task, metric = key.split("/", 2)
    if metric in keep:
      b = base.get(key)
      rows.append(f"| {name} | {task} | {metric} | {metrics[key]:.1f} | {'-' if b is None else f'{b:.1f}'} |")
  return "\n".join(rows)


def dataset_sizes(config_path: str, data_dir: str) -> dict:
  """Number of classes of each dataset entry of the config (its own vocabulary)."""
  from data_pipelines import registry
  config = runpy.run_path(str(REPO / config_path))["get_config"]()
  config.data_dir = data_dir
  vocab = registry.build_vocab(config)
  return {name: len(ids) for name, ids in zip(vocab.datasets, vocab.local_to_union)}


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so importing the module defines none."""
  flags.DEFINE_string("data_dir", "data/toy", "Where the toy data is, or is written when missing.")
  flags.DEFINE_string("workdir", "workdirs/toy_demo", "The run's folder: checkpoints, eval, export, predictions.")
  flags.DEFINE_string("config", "configs/toy.py", "The config file to train.")
  flags.DEFINE_integer("steps", 0, "Override config.total_steps (0: the config's).")


def final_step(workdir: pathlib.Path) -> int:
  """The step of the latest checkpoint under `workdir` (0 when there is none)."""
  steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
  return max(steps, default=0)


def evaluated_step(metrics_file: pathlib.Path) -> int:
  """The step that WORKDIR/eval/metrics.json holds the metrics of (-1 when it is missing)."""
  return json.loads(metrics_file.read_text())["step"] if metrics_file.exists() else -1


def where(workdir: pathlib.Path, step: int) -> str:
  """The closing lines: where each output of the demo is."""
  eval_dir = workdir / "eval" / str(step)
  overlays = sorted(str(p) for p in eval_dir.glob("*/overlays/*") if p.is_dir())
  return "\n".join([
      f"metrics:          {workdir / 'eval' / 'metrics.json'}",
      "overlays (image | ground truth | prediction):", *[f"  {o}" for o in overlays],
      f"prediction files: {eval_dir}/<dataset>/ (semantic/*.png, panoptic.json + panoptic/, instance_results.json)",
      f"                  {workdir / 'predictions'} (scripts/predict.py on toy_coco's val images)",
      f"checkpoints:      {workdir / 'checkpoints'}",
      f"export:           {workdir / 'export'} (scripts/predict.py --model)",
      f"TensorBoard:      {sys.executable} -m tensorboard.main --logdir {workdir}",
  ])


def main(argv):
  del argv
  a = flags.FLAGS
  t0, n = time.time(), 5
  overrides = [f"--config.data_dir={a.data_dir}"] + ([f"--config.total_steps={a.steps}"] if a.steps else [])
  workdir = REPO / a.workdir

  stage(1, n, f"toy benchmark in {a.data_dir}", t0)
  if (REPO / a.data_dir / "heldout_names.txt").exists():
    print("already there; reusing it")
  else:
    run("scripts/make_toy_data.py", "--out", a.data_dir)

  stage(2, n, "train on toy_ade (semantic) + toy_coco (panoptic) + toy_o365 (boxes only), jointly", t0)
  run("scripts/train.py", f"--config={a.config}", f"--workdir={workdir}", *overrides)

  stage(3, n, "evaluate every dataset and task (incl. weak transfer and held-out classes)", t0)
  metrics_file, step = workdir / "eval" / "metrics.json", final_step(workdir)
  if evaluated_step(metrics_file) == step:
    print(f"training evaluated its last step ({step}) already: {metrics_file}")
  else:
    run("scripts/eval.py", f"--config={a.config}", f"--workdir={workdir}", *overrides)
  metrics = json.loads(metrics_file.read_text())["metrics"]

  stage(4, n, "export the model and predict a folder of images", t0)
  export_dir = workdir / "export"
  run("scripts/export.py", f"--config={a.config}", f"--workdir={workdir}", f"--out={export_dir}", *overrides)
  images = REPO / a.data_dir / "toy_coco" / "val"
  run("scripts/predict.py", "--model", str(export_dir), "--images", str(images), "--out",
      str(workdir / "predictions"))

  stage(5, n, "results", t0)
  print(results_table(metrics, dataset_sizes(a.config, a.data_dir)))
  print()
  print(where(workdir, evaluated_step(metrics_file)))
  print(f"demo finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__, huge_pages=True)
