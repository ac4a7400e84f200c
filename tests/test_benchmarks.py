"""The benchmarks' timer (benchmarks/timing.py), the entry point's command line (benchmarks/bench.py) and the toy
reproduction (benchmarks/reproduce_toy.py): its variants, its world and what it records of each run."""
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import each other as sibling modules, as scripts do

import timing  # noqa: E402


def test_median_seconds_is_the_median_of_the_calls(monkeypatch):
  """Each call is timed alone between two clock reads, and the median (not the mean or the first) is returned."""
  durations = iter([5.0, 1.0, 2.0])
  clock = [0.0]

  def work():
    clock[0] += next(durations)

  monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
  assert timing.median_seconds(work, 3) == 2.0


def test_bench_refuses_an_unknown_part_before_running_any():
  proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench.py"), "--only", "model,nope"], capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "unknown parts ['nope']" in proc.stderr, proc.stderr


def test_bench_records_each_parts_provenance(tmp_path, monkeypatch):
  """Each part measured carries the commit, CPU model, CPUs and jax it was measured with; a part kept by --update
  keeps its own."""
  import json
  import bench
  monkeypatch.setattr(bench, "run_part", lambda part, quick, threads: {"value": 1.0, "wall_s": 0.0})
  out = tmp_path / "bench.json"
  out.write_text(json.dumps({"losses": {"value": 2.0, "provenance": {"commit": "0000000"}}}))
  monkeypatch.setattr(sys, "argv", ["bench.py", "--only", "data", "--update", "--out", str(out)])
  bench.main()
  results = json.loads(out.read_text())
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS, capture_output=True,
                        text=True).stdout.strip()
  assert results["data"]["provenance"]["commit"] in (head, head + "+dirty")
  assert results["data"]["provenance"]["cpus"] >= 1 and results["data"]["provenance"]["jax"]
  assert results["losses"]["provenance"] == {"commit": "0000000"}
  assert "| data.provenance.commit |" in out.with_suffix(".md").read_text()


def test_reproduce_toy_renamed_variants_only_evaluate_their_trained_run(tmp_path):
  """renamed / renamed_dense: one scripts/eval.py with the trained variant's overrides and toy_ade's synonyms."""
  import reproduce_toy
  for renamed, trained in (("renamed", "joint"), ("renamed_dense", "joint_dense")):
    (cmd,) = reproduce_toy.commands(renamed, 3, 100, "data/toy", tmp_path)
    _, overrides, units = reproduce_toy.VARIANTS[trained]
    assert cmd[0] == "scripts/eval.py" and set(overrides) <= set(cmd), cmd
    assert f"--config.total_steps={units * 100}" in cmd and f"--workdir={tmp_path / f'{renamed}_seed3'}" in cmd
    assert f"--config.data.datasets.toy_ade.names={tmp_path / 'toy_ade_synonyms.txt'}" in cmd
  assert (tmp_path / "toy_ade_synonyms.txt").read_text().split() == [reproduce_toy.SYNONYMS[n]
                                                                    for n in reproduce_toy.TOY_ADE]


def test_reproduce_toy_pretrained_variants_start_toy_ade_from_one_shared_run_on_the_disjoint_sets(tmp_path):
  """pretrained_disjoint*: the disjoint run (2 S steps, the variant's overrides), the conversion of its parts, then
  toy_ade alone (S steps) from them, and its evaluation; the arms at one seed share the disjoint run."""
  import reproduce_toy
  sources = set()
  for variant in ("pretrained_disjoint", "pretrained_disjoint_features", "pretrained_disjoint_dense"):
    pretrain, convert, train, evaluate = reproduce_toy.commands(variant, 3, 100, "data/toy", tmp_path)
    _, overrides, _ = reproduce_toy.VARIANTS[variant]
    source = next(a for a in pretrain if a.startswith("--workdir="))
    sources.add(source)
    assert pretrain[0] == train[0] == "scripts/train.py" and evaluate[0] == "scripts/eval.py"
    assert f"--config={reproduce_toy.DISJOINT}" in pretrain and "--config.total_steps=200" in pretrain
    assert set(overrides) <= set(pretrain) and set(overrides) <= set(train)
    npz = tmp_path / f"{variant}_seed3" / "pretrained.npz"
    parts = reproduce_toy.PRETRAINED[variant.removesuffix("_dense")][2]
    assert convert == ["scripts/convert_weights.py", "--from=dataseg", f"--input={source.partition('=')[2]}",
                       f"--output={npz}", f"--parts={','.join(parts)}"]
    assert "--config=configs/toy.py:toy_ade" in train and "--config.total_steps=100" in train
    assert train[-1] == f"--config.model.init_from={npz}" and evaluate[1:] == train[1:-1]
  assert sources == {f"--workdir={tmp_path / 'disjoint_pretrain_seed3'}",
                     f"--workdir={tmp_path / 'disjoint_pretrain_dense_seed3'}"}


def test_reproduce_toy_variants_train_datasets_that_configs_toy_and_the_world_have():
  """Every variant's config argument (and the one its pretrained run trains) loads, and names datasets that
  make_toy_data writes."""
  import runpy
  import reproduce_toy
  get_config = runpy.run_path(str(BENCHMARKS.parent / "configs/toy.py"))["get_config"]
  configs = [(v, c) for v, (c, _, _) in reproduce_toy.VARIANTS.items()]
  configs += [(v, c) for v, (c, _, _) in reproduce_toy.PRETRAINED.items()]
  for variant, config in configs:
    arg = config.partition(":")[2] or None
    names = list(get_config(arg).data.datasets)
    assert set(names) <= set(reproduce_toy.make_toy_data.DATASETS), (variant, names)
    if arg:
      assert names == arg.split("+"), variant


def test_toy_world_diagnostics_leave_out_what_they_test(tmp_path):
  """The control shares no class with toy_ade; toy_coco_nosyn is toy_coco without exactly the classes toy_o365 names
  by synonyms (reproduce_toy.TOY_ADE_SYNONYMS), in its vocabulary and in the files it writes."""
  import json
  import reproduce_toy
  world = reproduce_toy.make_toy_data
  ade = set(world.VOCABS["toy_ade"].values())
  assert reproduce_toy.TOY_ADE_OWN == ("curtain", "lamp")
  assert reproduce_toy.TOY_ADE_THINGS == ("car", "person", "dog", "chair", "bottle", "lamp")
  for name in world.CONTROL:
    assert not ade & set(world.VOCABS[name].values()), name
  assert world.SYNONYM_CLASSES == set(reproduce_toy.TOY_ADE_SYNONYMS) == {"person", "car"}  # human, automobile
  coco, nosyn = world.VOCABS["toy_coco"], world.VOCABS["toy_coco_nosyn"]
  assert list(nosyn) == [n for n in coco if n not in ("person", "car")] and all(nosyn[n] == coco[n] for n in nosyn)
  world.write(str(tmp_path), train=3, val=2, size=48, only=["toy_coco_nosyn"], processes=1)
  for split in ("train", "val"):
    data = json.loads((tmp_path / f"toy_coco_nosyn/annotations/panoptic_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert list(names.values()) == list(nosyn)
    used = {s["category_id"] for a in data["annotations"] for s in a["segments_info"]}
    assert used and used <= set(names)


def test_reproduce_toy_writes_only_the_datasets_the_data_dir_lacks(tmp_path, monkeypatch):
  """An existing world is kept: ensure_data asks make_toy_data for the missing datasets alone."""
  import reproduce_toy
  calls = []
  monkeypatch.setattr(reproduce_toy.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  have = [n for n in reproduce_toy.make_toy_data.DATASETS if n != "toy_coco_nosyn"]
  for name in have:
    (tmp_path / name).mkdir()
  reproduce_toy.ensure_data(str(tmp_path), ["joint"])
  assert calls == [[sys.executable, "scripts/make_toy_data.py", "--out", str(tmp_path), "--only", "toy_coco_nosyn"]]
  (tmp_path / "toy_coco_nosyn").mkdir()
  calls.clear()
  reproduce_toy.ensure_data(str(tmp_path), ["joint"])
  assert calls == []


def test_reproduce_toy_records_each_invocation_that_runs_a_run(tmp_path, monkeypatch):
  """run_one appends provenance (commit, CPU model, CPUs, jax) before it trains; a reused run adds none; a resumed
  one adds its own; the record carries the list."""
  import importlib.metadata
  import json
  import os
  import reproduce_toy
  real_run, ran = subprocess.run, []

  def fake_run(cmd, **kw):
    if cmd[0] == "git":
      return real_run(cmd, **kw)
    ran.append(cmd[1])
    if cmd[1] == "scripts/eval.py" and len(ran) > 2:  # the first invocation is cut short after training
      metrics = reproduce_toy.metrics_file(tmp_path, "alone_toy_ade", 0)
      metrics.parent.mkdir(parents=True, exist_ok=True)
      metrics.write_text(json.dumps({"metrics": {"toy_ade/semantic/mIoU": 1.0}}))
    return subprocess.CompletedProcess(cmd, 0 if len(ran) != 2 else 1, "", "killed")

  monkeypatch.setattr(reproduce_toy.subprocess, "run", fake_run)
  with pytest.raises(SystemExit, match=r"failed \(1\)"):
    reproduce_toy.run_one("alone_toy_ade", 0, 10, "data/toy", tmp_path)
  record = reproduce_toy.run_one("alone_toy_ade", 0, 10, "data/toy", tmp_path)
  assert reproduce_toy.run_one("alone_toy_ade", 0, 10, "data/toy", tmp_path) == record and len(ran) == 4
  head = real_run(["git", "rev-parse", "--short", "HEAD"], cwd=reproduce_toy.REPO, capture_output=True,
                  text=True).stdout.strip()
  assert len(record["provenance"]) == 2
  for p in record["provenance"]:
    assert p["commit"] in (head, head + "+dirty") and p["cpus"] == len(os.sched_getaffinity(0))
    assert p["jax"] == importlib.metadata.version("jax") and p["cpu_model"]
