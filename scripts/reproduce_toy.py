"""The paper's claims at toy scale: runs the comparisons of docs/results.md over several seeds.

  python scripts/reproduce_toy.py --data_dir data/toy --workdir workdirs/reproduce --seeds 0,1,2 --steps 500

Variants (each trained with scripts/train.py and evaluated with scripts/eval.py, same steps and seed):
  joint          all three datasets together, text-embedding classifier (DaTaSeg)
  alone_<name>   one dataset alone (configs/toy.py:<name>), same number of steps
  learned        joint, but a learned classifier (model.classifier='learned') instead of text embeddings
  renamed        the joint model evaluated with toy_ade's classes renamed to synonyms (SYNONYMS; no training)
  cold           joint at the recipe's temperature 0.01 throughout (configs/toy.py trains at 0.07, infers at 0.01)
  cold_renamed   the cold model evaluated with the synonyms
Reported per variant: mean and standard deviation over seeds of each dataset's metrics, the weak-transfer
metrics (toy_o365 mask AP from boxes only, toy_ade PQ from semantic labels only) and the open-vocabulary
metric (toy_heldout mIoU over the classes in no training vocabulary). Finished runs are reused; results go to
WORKDIR/results.json and a markdown table on stdout (docs/results.md is that table plus commentary).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

from dataseg_jax import hardware

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASETS = ("toy_ade", "toy_coco", "toy_o365")
METRICS = (  # (key, label)
    ("toy_ade/semantic/mIoU", "ADE-like mIoU"),
    ("toy_coco/panoptic/PQ", "COCO-like PQ"),
    ("toy_o365/instance/AP", "O365-like mask AP (boxes only: weak transfer)"),
    ("toy_ade/panoptic/PQ", "ADE-like PQ (semantic labels only: weak transfer)"),
    ("toy_heldout/semantic/mIoU_unseen", "held-out classes mIoU (in no training vocabulary: open vocabulary)"),
    ("toy_heldout/semantic/mIoU_unseen_chance", "held-out classes mIoU at chance (uniform random labels)"),
    ("toy_heldout/semantic/mIoU", "held-out dataset mIoU (all its classes)"),
)


SYNONYMS = {"sky": "heavens", "grass": "lawn", "water": "sea", "road": "street", "wall": "partition",
            "car": "automobile", "person": "human", "dog": "hound", "chair": "seat", "bottle": "flask"}
TOY_ADE_THINGS = ("car", "person", "dog", "chair", "bottle")
RENAMED_OF = {"renamed": "joint", "cold_renamed": "cold"}  # evaluation-only variant -> the trained one it renames


def variant_args(variant: str, data_dir: str) -> tuple:
  """(config argument, overrides) of a variant."""
  base = [f"--config.data_dir={data_dir}"]
  if variant == "joint":
    return "configs/toy.py", base
  if variant == "learned":
    return "configs/toy.py", base + ["--config.model.classifier=learned"]
  if variant == "cold":
    return "configs/toy.py", base + ["--config.model.temperature=0.01", "--config.model.inference_temperature=0"]
  if variant.startswith("alone_"):
    return f"configs/toy.py:{variant[len('alone_'):]}", base
  raise ValueError(f"unknown variant {variant!r}")


def write_renamed_vocab(root: pathlib.Path) -> list:
  """Writes toy_ade's names and things as their SYNONYMS under `root`; the eval overrides that use them."""
  (root / "toy_ade_synonyms.txt").write_text("\n".join(SYNONYMS.values()) + "\n")
  (root / "toy_ade_synonym_things.txt").write_text("\n".join(SYNONYMS[n] for n in TOY_ADE_THINGS) + "\n")
  return [f"--config.data.datasets.toy_ade.names={root / 'toy_ade_synonyms.txt'}",
          f"--config.data.datasets.toy_ade.thing_classes={root / 'toy_ade_synonym_things.txt'}",
          "--config.data.datasets.toy_ade.eval_tasks=('semantic',)",
          "--config.data.datasets.toy_ade.val_panoptic_annotations="]


def run_one(variant: str, seed: int, steps: int, data_dir: str, root: pathlib.Path) -> dict:
  """Trains and evaluates one (variant, seed) unless its metrics exist; returns the metrics and the commands.

  A `RENAMED_OF` variant trains nothing: it evaluates the run of its trained variant at the same seed (whose
  checkpoints it links into its own workdir) with toy_ade's classes named by their synonyms.
  """
  workdir = root / f"{variant}_seed{seed}"
  trained = RENAMED_OF.get(variant)
  if trained:
    link = workdir / "checkpoints"
    if not link.exists():
      workdir.mkdir(parents=True, exist_ok=True)
      link.symlink_to((root / f"{trained}_seed{seed}" / "checkpoints").resolve(), target_is_directory=True)
    config, overrides = variant_args(trained, data_dir)
    overrides += write_renamed_vocab(root)
  else:
    config, overrides = variant_args(variant, data_dir)
  common = [f"--config={config}", f"--workdir={workdir}", *overrides, f"--config.seed={seed}",
            f"--config.total_steps={steps}", "--config.eval_every_steps=-1"]
  commands = [["scripts/eval.py", *common]] if trained else [
      ["scripts/train.py", *common], ["scripts/eval.py", *common]]
  metrics_file = workdir / "eval" / "metrics.json"
  if not metrics_file.exists():
    for cmd in commands:
      proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
      if proc.returncode:
        sys.exit(f"reproduce_toy: failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
  metrics = json.loads(metrics_file.read_text())["metrics"]
  return {"metrics": metrics, "commands": [" ".join(["python", *c]) for c in commands]}


def summarise(runs: dict) -> dict:
  """variant -> metric -> (mean, std, n) over seeds."""
  out = {}
  for variant, per_seed in runs.items():
    out[variant] = {}
    for key, _ in METRICS:
      values = [r["metrics"][key] for r in per_seed.values() if key in r["metrics"]]
      if values:
        out[variant][key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                             len(values))
  return out


def table(summary: dict) -> str:
  variants = list(summary)
  rows = ["| metric | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
  for key, label in METRICS:
    cells = []
    for v in variants:
      m = summary[v].get(key)
      cells.append("-" if m is None else f"{m[0]:.1f} ± {m[1]:.1f} (n={m[2]})")
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def per_seed_table(runs: dict) -> str:
  """Every run's own numbers: one row per (variant, seed), one column per metric."""
  rows = ["| variant | seed | " + " | ".join(label for _, label in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
  for variant, per_seed in runs.items():
    for seed, r in sorted(per_seed.items()):
      cells = [f"{r['metrics'][k]:.1f}" if k in r["metrics"] else "-" for k, _ in METRICS]
      rows.append(f"| {variant} | {seed} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default="data/toy")
  p.add_argument("--workdir", default="workdirs/reproduce")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=500)  # docs/results.md
  p.add_argument("--variants", default="joint," + ",".join(f"alone_{d}" for d in DATASETS) +
                 ",learned,renamed,cold,cold_renamed")
  a = p.parse_args()
  root = REPO / a.workdir
  root.mkdir(parents=True, exist_ok=True)
  if not (REPO / a.data_dir / "heldout_names.txt").exists():
    subprocess.run([sys.executable, "scripts/make_toy_data.py", "--out", a.data_dir], cwd=REPO, check=True)
  seeds = [int(s) for s in a.seeds.split(",")]
  variants = [v for v in a.variants.split(",") if v]
  t0, total, done = time.time(), len(seeds) * len(variants), 0
  runs = {v: {} for v in variants}
  for seed in seeds:  # seed-major: a run cut short still has every variant at the first seeds
    for variant in variants:
      runs[variant][seed] = run_one(variant, seed, a.steps, a.data_dir, root)
      done += 1
      eta = (time.time() - t0) / done * (total - done)
      print(f"[{done}/{total}] {variant} seed {seed} done; ETA {eta / 60:.0f} min", flush=True)
  summary = summarise(runs)
  (root / "results.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
  print(table(summary))
  print()
  print(per_seed_table(runs))


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
