"""The paper's multi-dataset claims on the toy world: trains and evaluates the comparisons of docs/results.md.

  python scripts/make_toy_data.py --out data/toy --control
  python benchmarks/reproduce_toy.py --data_dir data/toy --workdir workdirs/reproduce --seeds 0,1,2,3,4 --steps 500

`--steps` S is the exposure unit: a run that trains on k datasets with equal ratios trains k * S steps, so that
each of its datasets is drawn for about S batches, as many as the same dataset trained alone for S steps ("equal
exposure"); `joint_equal_steps` is the joint model at S steps ("equal total steps"). Variants (`VARIANTS`):

  alone_<d>          one dataset alone (configs/toy.py:<d>), S steps
  alone_toy_ade600   toy_ade alone with 600 training images instead of 60 (the calibration: the world must be
                     hard enough that data helps), from DATA_DIR_ade600 (written when missing)
  joint              DaTaSeg: toy_ade + toy_coco + toy_o365, frozen text classifier, 3 S steps
  joint_equal_steps  the same at S steps
  ade_coco           toy_ade + toy_coco, 2 S steps (toy_ade trained with 1, 2 and 3 datasets: alone_toy_ade,
                     ade_coco, joint)
  control            toy_ade + toy_coco_disjoint + toy_o365_disjoint (no class in common with toy_ade), 3 S steps
  pretrained_disjoint_features, pretrained_disjoint
                     the control in sequence: toy_coco_disjoint + toy_o365_disjoint for 2 S steps (one run per
                     seed, in WORKDIR/disjoint_pretrain[_dense]_seed<seed>), then toy_ade alone for S steps from its
                     backbone and pixel decoder (_features) or from all its parameters (`PRETRAINED`;
                     scripts/convert_weights.py --from dataseg, then --config.model.init_from): what the disjoint
                     sets teach through the parts they share with toy_ade
  learned            joint with a learned classifier instead of the text embeddings
  synonym            toy_ade + toy_coco_nosyn + toy_o365, 3 S steps: toy_coco without person and car, so that
                     toy_ade's person and car have one other source, toy_o365, which names them human and
                     automobile (the synonym test); synonym_learned: the same with a learned classifier
  merge_<formula>    joint with config.loss.merge_mask=<formula> (the MERGE A/B; joint is the default's arm)
  merge_first_guess  joint with the simplest MERGE (FIRST_GUESS): clipped sum, background proposals in their class's
                     group, left-over segments without a loss
  <variant>_dense    the variant with the dense criterion (config.loss.sampling='dense'): the points/dense A/B
  renamed            the joint model evaluated with toy_ade's classes renamed to synonyms (no training);
                     renamed_dense evaluates joint_dense

Each run is scripts/train.py then scripts/eval.py with `--config.seed=<seed>`; every command, and each run's
provenance (commit, CPU model, CPUs, jax version: `provenance()`, one entry per invocation that ran it), is in
WORKDIR/results.json. Finished runs are reused. Results: WORKDIR/results.json and markdown tables on stdout
(docs/results.md is those tables plus commentary): mean and standard deviation over seeds of each metric,
toy_ade's mIoU on the classes it shares with toy_coco, on its own and on person and car apart, and every run's
numbers.
"""
import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import flags

from dataseg_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # scripts/ is a folder of the repository, not an installed package
from scripts import make_toy_data  # noqa: E402
from provenance import provenance  # noqa: E402  (a sibling module, as bench.py imports its parts)

TOY_ADE = tuple(make_toy_data.VOCABS["toy_ade"])  # toy_ade's names are its world classes
TOY_ADE_OWN = tuple(n for n in TOY_ADE if n not in make_toy_data.VOCABS["toy_coco"].values())  # curtain, lamp
TOY_ADE_THINGS = tuple(n for n in TOY_ADE if make_toy_data.is_thing(n))
TOY_ADE_SYNONYMS = tuple(n for n in TOY_ADE if n in make_toy_data.SYNONYM_CLASSES)  # toy_o365: automobile, human
SYNONYMS = {"sky": "heavens", "grass": "lawn", "water": "sea", "road": "street", "wall": "partition",
            "curtain": "drape", "car": "automobile", "person": "human", "dog": "hound", "chair": "seat",
            "bottle": "flask", "lamp": "light"}
METRICS = (  # (key, label); '*' keys are derived by `derived_metrics`
    ("toy_ade/semantic/mIoU", "ADE-like mIoU"),
    ("*toy_ade/semantic/mIoU_shared", "ADE-like mIoU, the 10 classes shared with COCO-like"),
    ("*toy_ade/semantic/mIoU_own", "ADE-like mIoU, its 2 own classes"),
    ("*toy_ade/semantic/mIoU_synonyms", "ADE-like mIoU, person and car (O365-like: human, automobile)"),
    ("toy_coco/panoptic/PQ", "COCO-like PQ"),
    ("toy_o365/instance/AP", "O365-like mask AP (boxes only: weak transfer)"),
    ("toy_ade/panoptic/PQ", "ADE-like PQ (semantic labels only: weak transfer)"),
    ("toy_heldout/semantic/mIoU_unseen", "held-out classes mIoU (open vocabulary)"),
    ("toy_heldout/semantic/mIoU_unseen_chance", "held-out classes mIoU at chance"),
)
FIRST_GUESS = ["--config.loss.merge_mask=clip", "--config.loss.merge_background=True",
               "--config.loss.match_leftover=False"]
# variant -> (config argument, extra overrides, steps in units of S)
VARIANTS = {
    "alone_toy_ade": ("configs/toy.py:toy_ade", [], 1),
    "pretrained_disjoint_features": ("configs/toy.py:toy_ade", [], 1),
    "pretrained_disjoint": ("configs/toy.py:toy_ade", [], 1),
    "alone_toy_coco": ("configs/toy.py:toy_coco", [], 1),
    "alone_toy_o365": ("configs/toy.py:toy_o365", [], 1),
    "alone_toy_ade600": ("configs/toy.py:toy_ade", [], 1),
    "joint": ("configs/toy.py", [], 3),
    "joint_equal_steps": ("configs/toy.py", [], 1),
    "ade_coco": ("configs/toy.py:toy_ade+toy_coco", [], 2),
    "control": ("configs/toy.py:toy_ade+toy_coco_disjoint+toy_o365_disjoint", [], 3),
    "learned": ("configs/toy.py", ["--config.model.classifier=learned"], 3),
    "synonym": ("configs/toy.py:toy_ade+toy_coco_nosyn+toy_o365", [], 3),
    "synonym_learned": ("configs/toy.py:toy_ade+toy_coco_nosyn+toy_o365", ["--config.model.classifier=learned"], 3),
    "merge_clip": ("configs/toy.py", ["--config.loss.merge_mask=clip"], 3),
    "merge_max": ("configs/toy.py", ["--config.loss.merge_mask=max"], 3),
    "merge_first_guess": ("configs/toy.py", FIRST_GUESS, 3),
}
VARIANTS.update({f"{name}_dense": (config, overrides + ["--config.loss.sampling=dense"], units)
                 for name, (config, overrides, units) in list(VARIANTS.items())})
DISJOINT = "configs/toy.py:toy_coco_disjoint+toy_o365_disjoint"
# variant -> (the run it starts from: config argument, steps in units of S; the parts of its parameters it takes)
PRETRAINED = {"pretrained_disjoint_features": (DISJOINT, 2, ("backbone", "pixel_decoder")),
              "pretrained_disjoint": (DISJOINT, 2, ("backbone", "pixel_decoder", "transformer_decoder", "classifier"))}
RENAMED_OF = {"renamed": "joint", "renamed_dense": "joint_dense"}  # evaluation-only variant -> the trained one it renames
ADE_TRAIN = {"alone_toy_ade600": 600, "alone_toy_ade600_dense": 600}  # variant -> toy_ade training images, read from <data_dir>_ade<N>
DEFAULT_VARIANTS = ("alone_toy_ade", "alone_toy_ade600", "alone_toy_coco", "alone_toy_o365", "joint", "joint_equal_steps", "ade_coco",
                    "control", "learned", "renamed", "merge_clip", "merge_max", "merge_first_guess")


def write_renamed_vocab(root: pathlib.Path) -> list:
  """Writes toy_ade's names and things as their SYNONYMS under `root`; the eval overrides that use them."""
  (root / "toy_ade_synonyms.txt").write_text("\n".join(SYNONYMS[n] for n in TOY_ADE) + "\n")
  (root / "toy_ade_synonym_things.txt").write_text("\n".join(SYNONYMS[n] for n in TOY_ADE_THINGS) + "\n")
  return [f"--config.data.datasets.toy_ade.names={root / 'toy_ade_synonyms.txt'}",
          f"--config.data.datasets.toy_ade.thing_classes={root / 'toy_ade_synonym_things.txt'}",
          "--config.data.datasets.toy_ade.eval_tasks=('semantic',)",
          "--config.data.datasets.toy_ade.val_panoptic_annotations="]


def run_dir(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
  """The workdir of one (variant, seed) run."""
  return root / f"{variant}_seed{seed}"


def metrics_file(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
  """Where a (variant, seed) run's evaluation writes its metrics; a run whose file exists is reused."""
  return run_dir(root, variant, seed) / "eval" / "metrics.json"


def commands(variant: str, seed: int, steps: int, data_dir: str, root: pathlib.Path) -> list:
  """The scripts and arguments of one (variant, seed): train then eval, or eval alone for a renamed variant; for a
  `PRETRAINED` variant first the run it starts from (shared by the variants that start from the same config) and
  the conversion of its parts."""
  workdir = run_dir(root, variant, seed)
  trained = RENAMED_OF.get(variant)
  config, overrides, units = VARIANTS[trained or variant]
  if trained:
    overrides = overrides + write_renamed_vocab(root)
  common = [f"--config={config}", f"--workdir={workdir}", f"--config.data_dir={variant_data_dir(variant, data_dir)}",
            *overrides,
            f"--config.seed={seed}", f"--config.total_steps={units * steps}", "--config.eval_every_steps=-1"]
  if trained:
    return [["scripts/eval.py", *common]]
  base = variant.removesuffix("_dense")
  if base in PRETRAINED:
    config, units, parts = PRETRAINED[base]
    source = run_dir(root, "disjoint_pretrain" + variant.removeprefix(base), seed)
    npz = workdir / "pretrained.npz"
    pretrain = [f"--config={config}", f"--workdir={source}", f"--config.data_dir={data_dir}", *overrides,
                f"--config.seed={seed}", f"--config.total_steps={units * steps}", "--config.eval_every_steps=-1"]
    return [["scripts/train.py", *pretrain],
            ["scripts/convert_weights.py", "--from=dataseg", f"--input={source}", f"--output={npz}",
             f"--parts={','.join(parts)}"],
            ["scripts/train.py", *common, f"--config.model.init_from={npz}"], ["scripts/eval.py", *common]]
  return [["scripts/train.py", *common], ["scripts/eval.py", *common]]


def variant_data_dir(variant: str, data_dir: str) -> str:
  """The toy world a variant reads: `data_dir`, or for a calibration variant its copy with a larger toy_ade."""
  return f"{data_dir}_ade{ADE_TRAIN[variant]}" if variant in ADE_TRAIN else data_dir


def ensure_data(data_dir: str, variants) -> None:
  """Writes the datasets of the toy world (with the diagnostic ones) that `data_dir` lacks, and the calibration
  copies the variants need, when missing."""
  make = [sys.executable, "scripts/make_toy_data.py"]
  missing = [n for n in make_toy_data.DATASETS if not (REPO / data_dir / n).exists()]
  if missing:
    subprocess.run(make + ["--out", data_dir, "--only", ",".join(missing)], cwd=REPO, check=True)
  for variant in set(variants) & set(ADE_TRAIN):
    out = variant_data_dir(variant, data_dir)
    if not (REPO / out / "toy_ade" / "names.txt").exists():
      subprocess.run(make + ["--out", out, "--only", "toy_ade", "--ade_train", str(ADE_TRAIN[variant])], cwd=REPO,
                     check=True)


def run_one(variant: str, seed: int, steps: int, data_dir: str, root: pathlib.Path) -> dict:
  """Trains and evaluates one (variant, seed) unless its metrics exist; returns the metrics and the commands.

  A `RENAMED_OF` variant trains nothing: it evaluates the run of its trained variant at the same seed (whose
  checkpoints it links into its own workdir) with toy_ade's classes named by their synonyms. Each invocation that
  runs the commands (the first, and each that resumes a run cut short) appends its `provenance()` to the run's
  provenance.json, which the record carries.
  """
  workdir = run_dir(root, variant, seed)
  trained = RENAMED_OF.get(variant)
  if trained:
    link = workdir / "checkpoints"
    if not link.exists():
      workdir.mkdir(parents=True, exist_ok=True)
      link.symlink_to((run_dir(root, trained, seed) / "checkpoints").resolve(), target_is_directory=True)
  cmds = commands(variant, seed, steps, data_dir, root)
  metrics_path = metrics_file(root, variant, seed)
  provenance_path = workdir / "provenance.json"
  if not metrics_path.exists():
    workdir.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(provenance_path.read_text()) if provenance_path.exists() else []
    provenance_path.write_text(json.dumps(earlier + [provenance()], indent=1))
    for cmd in cmds:
      proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
      if proc.returncode:
        sys.exit(f"reproduce_toy: failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
  metrics = json.loads(metrics_path.read_text())["metrics"]
  record = {"metrics": dict(metrics, **derived_metrics(metrics)), "commands": [" ".join(["python", *c]) for c in cmds]}
  if provenance_path.exists():  # runs made before provenance was recorded have none
    record["provenance"] = json.loads(provenance_path.read_text())
  return record


def derived_metrics(metrics: dict) -> dict:
  """toy_ade's mIoU over the classes it shares with toy_coco, over its own and over those toy_o365 names by synonyms,
  from the per-class IoUs."""
  out = {}
  for key, classes in (("mIoU_shared", [n for n in TOY_ADE if n not in TOY_ADE_OWN]), ("mIoU_own", TOY_ADE_OWN),
                       ("mIoU_synonyms", TOY_ADE_SYNONYMS)):
    ious = [metrics.get(f"toy_ade/semantic/IoU/{n}") for n in classes]
    if all(v is not None for v in ious):
      out[f"toy_ade/semantic/{key}"] = statistics.mean(ious)
  return out


def _key(key: str) -> str:
  return key.lstrip("*")


def summarise(runs: dict) -> dict:
  """variant -> metric -> (mean, std, n) over seeds."""
  out = {}
  for variant, per_seed in runs.items():
    out[variant] = {}
    for key, _ in METRICS:
      values = [r["metrics"][_key(key)] for r in per_seed.values() if _key(key) in r["metrics"]]
      if values:
        out[variant][_key(key)] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                                   len(values))
  return out


def table(summary: dict) -> str:
  """One row per metric, one column per variant: mean ± std (n)."""
  variants = list(summary)
  rows = ["| metric | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
  for key, label in METRICS:
    cells = []
    for v in variants:
      m = summary[v].get(_key(key))
      cells.append("-" if m is None else f"{m[0]:.1f} ± {m[1]:.1f} (n={m[2]})")
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def per_seed_table(runs: dict) -> str:
  """Every run's own numbers: one row per (variant, seed), one column per metric."""
  rows = ["| variant | seed | " + " | ".join(label for _, label in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
  for variant, per_seed in runs.items():
    for seed, r in sorted(per_seed.items()):
      cells = [f"{r['metrics'][_key(k)]:.1f}" if _key(k) in r["metrics"] else "-" for k, _ in METRICS]
      rows.append(f"| {variant} | {seed} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so importing the module defines none."""
  flags.DEFINE_string("data_dir", "data/toy", "The toy world, written with --control (and written when missing).")
  flags.DEFINE_string("workdir", "workdirs/reproduce", "One folder per run, and results.json.")
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Training seeds, comma-separated.")
  flags.DEFINE_integer("steps", 500, "S: steps of a single-dataset run (module docstring).")
  flags.DEFINE_list("variants", list(DEFAULT_VARIANTS), "Variants to run, comma-separated (module docstring).")


def main(argv):
  del argv
  a = flags.FLAGS
  unknown = [v for v in a.variants if v not in VARIANTS and v not in RENAMED_OF]
  if unknown:
    sys.exit(f"error: --variants: unknown {unknown}; expected some of {list(VARIANTS) + list(RENAMED_OF)}")
  root = REPO / a.workdir
  root.mkdir(parents=True, exist_ok=True)
  ensure_data(a.data_dir, a.variants)
  seeds = [int(s) for s in a.seeds]
  t0, total, done, trained = time.time(), len(seeds) * len(a.variants), 0, 0
  runs = {v: {} for v in a.variants}
  for seed in seeds:  # seed-major: a run cut short still has every variant at the first seeds
    for variant in a.variants:
      reused = metrics_file(root, variant, seed).exists()
      runs[variant][seed] = run_one(variant, seed, a.steps, a.data_dir, root)
      done, trained = done + 1, trained + (not reused)
      # The ETA averages the runs this invocation trained: a reused run takes no time and would shrink it.
      eta = f"ETA {(time.time() - t0) / trained * (total - done) / 60:.0f} min" if trained else "reused"
      print(f"[{done}/{total}] {variant} seed {seed} done; {eta}", flush=True)
  summary = summarise(runs)
  (root / "results.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
  print(table(summary))
  print()
  print(per_seed_table(runs))


if __name__ == "__main__":
  define_flags()
  cli.run(main, __doc__, huge_pages=True)
