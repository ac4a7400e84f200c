"""The benchmarks' timer (benchmarks/timing.py) and the entry point's command line (benchmarks/bench.py)."""
import pathlib
import subprocess
import sys

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


def test_bench_records_the_cpu_model_from_proc_cpuinfo(tmp_path):
  """machine.cpu_model / cpu_vector come from cpuinfo's first processor; {} where it cannot be read."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench", BENCHMARKS / "bench.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Test CPU\n"
                  "flags\t\t: fpu avx2 avx512f amx_bf16\n\nprocessor\t: 1\nmodel name\t: Other CPU\nflags\t\t: fpu\n")
  assert bench.cpu_model(str(info)) == {"cpu_model": "Test CPU (family 6 model 207)",
                                        "cpu_vector": "avx2 avx512f amx_bf16"}
  assert bench.cpu_model(str(tmp_path / "missing")) == {}


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


def test_reproduce_toy_variants_train_datasets_that_configs_toy_and_the_world_have():
  """Every variant's config argument loads, and names datasets that make_toy_data writes."""
  import runpy
  import reproduce_toy
  get_config = runpy.run_path(str(BENCHMARKS.parent / "configs/toy.py"))["get_config"]
  for variant, (config, _, _) in reproduce_toy.VARIANTS.items():
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
