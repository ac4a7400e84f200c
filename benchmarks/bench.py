"""All benchmarks in one JSON file and one markdown table, with the ratio to the peer.

  python benchmarks/bench.py --out bench.json            # everything (15-25 min on 2 CPU cores, and 15 more for costs)
  python benchmarks/bench.py --out bench.json --quick    # smaller repeat counts, skips R50 where slow
  python benchmarks/bench.py --out bench.json --only losses,data
  python benchmarks/bench.py --out bench.json --only data --update   # rerun one part, keep the others

Each part runs in its own subprocess (so peak RSS is that part's own) by calling `run(quick)` of
`benchmarks/bench_<part>.py`; the peer is `benchmarks/bench_peer.py` (Hugging Face Mask2Former, needs the
parity extra). Every part, the peer included, runs with malloc on transparent huge pages
(`hardware.use_huge_pages_for_host_buffers`, recorded as machine.glibc_tunables). The markdown table is
written next to the JSON (`bench.md`).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from dataseg_jax import hardware
from dataseg_jax import trees

import provenance  # a sibling module (benchmarks/ is not a package)

BENCHMARKS = pathlib.Path(__file__).resolve().parent
PARTS = ("model", "losses", "data", "train", "eval", "costs", "peer")


def run_part(part: str, quick: bool, threads: int) -> dict:
  """Runs `benchmarks/bench_<part>.py:run(quick)` in a fresh process pinned to `threads` CPU threads."""
  # the part's folder first on sys.path, as when it runs as a script: it imports its siblings (timing.py)
  load = ("import json, os, runpy, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); "
          "m = runpy.run_path(sys.argv[1]); ")
  code = load + "print('BENCH_JSON=' + json.dumps(m['run'](quick=sys.argv[2] == '1')))"
  if part == "peer":
    code = load + "print('BENCH_JSON=' + json.dumps(m['run'](steps=1 if sys.argv[2] == '1' else 3)))"
  env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true")
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS / f"bench_{part}.py"), "1" if quick else "0"],
                        capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON=")]
  if proc.returncode or not lines:
    return {"error": (proc.stderr or proc.stdout)[-2000:], "wall_s": time.time() - t0}
  result = json.loads(lines[-1][len("BENCH_JSON="):])
  result["wall_s"] = round(time.time() - t0, 1)
  return result


def peer_ratios(results: dict) -> dict:
  """Ours / peer for the R50 train step time, peak memory and eval time per image (lower is better)."""
  ours, peer = results.get("train", {}).get("r50", {}), results.get("peer", {})
  ratios = {}
  for ours_key, peer_key in (("step_s", "train_step_s"), ("peak_rss_gib", "peak_rss_gib")):
    if ours_key in ours and peer_key in peer:
      ratios[f"train_{ours_key}_ours_over_peer"] = ours[ours_key] / peer[peer_key]
  fwd = results.get("model", {}).get("r50", {})  # the peer's eval time is its forward pass at its train size
  if "forward_s" in fwd and "eval_s_per_image" in peer and fwd["image_size"] == peer["image_size"]:
    ratios["eval_forward_s_per_image_ours_over_peer"] = fwd["forward_s"] / fwd["batch"] / peer["eval_s_per_image"]
  return ratios


def markdown(results: dict) -> str:
  rows = ["| benchmark | value |", "|---|---|"]
  for k, v in trees.flatten(results, sep=".").items():
    if k.endswith("error"):
      v = str(v).splitlines()[-1] if str(v).strip() else "error"
    rows.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
  return "\n".join(rows) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="bench.json")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--update", action="store_true", help="keep the other parts already in --out (rerun some)")
  a = p.parse_args()
  parts = [s for s in a.only.split(",") if s]
  unknown = set(parts) - set(PARTS)
  if unknown:
    p.error(f"--only: unknown parts {sorted(unknown)}; expected a subset of {PARTS}")
  out = pathlib.Path(a.out)
  results = json.loads(out.read_text()) if a.update and out.exists() else {}
  results["machine"] = {"cpu_count": os.cpu_count(), "threads": a.threads, "quick": a.quick,
                        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), **hardware.cpu_model()}
  for i, part in enumerate(parts):
    print(f"[{i + 1}/{len(parts)}] bench {part} ...", flush=True)
    results[part] = run_part(part, a.quick, a.threads)
    results[part]["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())  # parts kept by --update differ
    results[part]["provenance"] = provenance.provenance()  # the commit and machine of this part's numbers
    print(f"    done in {results[part].get('wall_s')} s" + (" (ERROR)" if "error" in results[part] else ""),
          flush=True)
  results["ratios_to_peer"] = peer_ratios(results)
  out.write_text(json.dumps(results, indent=1))
  out.with_suffix(".md").write_text(markdown(results))
  print(markdown(results))
  print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  hardware.use_huge_pages_for_host_buffers()
  main()
