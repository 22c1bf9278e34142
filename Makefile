# CXRTrek-JAX. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
DEMO_DIR ?= demo_out

.DEFAULT_GOAL := help
.PHONY: help install browser-deps test test-slow demo recipe-choice construct-demo clean
.PHONY: bench-train bench-input bench-memory bench-decode bench-construct bench-gpu tpu-compile-check

help:  ## list targets with one line each
	@grep -hE '^[a-zA-Z0-9_.%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 24

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing) and install the project with its dev and torch extras

browser-deps:  ## install Debian's chromium for the browser test if missing (needs root + apt-get; never fails)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser-deps: installing chromium with apt-get"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	  echo "browser-deps: could not install chromium (not root, or no package source); the browser test will skip" >&2; \
	fi

test: $(STAMP) browser-deps  ## run the test suite (no slow tests), 8 simulated CPU devices
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile tests

test-slow: $(STAMP)  ## run only the slow tests (multi-process, hard-kill resume, ...)
	$(PY) -m pytest -m slow tests

demo: $(STAMP)  ## the main job end to end on a generated phantom CXRTrek set
	$(PY) -m experiments.demo --out $(DEMO_DIR)

recipe-choice: $(STAMP)  ## the demo's chain-phase recipe chosen on the validation split (after make demo)
	$(PY) -m experiments.recipe_choice --demo-out $(DEMO_DIR) --out runs/recipe_choice

construct-demo: $(STAMP)  ## CXRTrek QA built from generated free-text reports, checked against their truth, trained
	$(PY) -m experiments.construct_demo --out construct_demo_out

# --- benchmarks (BENCHMARKS.md records their latest figures) -----------------------------------
TPU_VENV := .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed
BENCH_OUT ?= benchmarks/results
# The extra JAX side: XLA CPU without its YNNPACK dot fusions (see BENCHMARKS.md).
BENCH_TRAIN_ARGS ?= --jax-variant noynn:xla_cpu_experimental_ynn_fusion_type=
TPU_CHECK_ARGS ?=  # e.g. --resume: keep the cases already compiled in the results file

bench-train: $(STAMP)  ## train step: JAX CXRTrekNet-small vs PyTorch LLaVA (eager, compile), steps/s, MFU
	$(PY) -m benchmarks.bench_train --out $(BENCH_OUT)/train.json $(BENCH_TRAIN_ARGS)

bench-input: $(STAMP)  ## input pipeline: Grain vs torch DataLoader, 0/1/2 workers, CPU-s per example
	$(PY) -m benchmarks.bench_input --out $(BENCH_OUT)/input.json

bench-memory: $(STAMP)  ## params + optimizer bytes per device on 1/2/4/8 devices (small), abstract 7B
	$(PY) -m benchmarks.bench_memory --out $(BENCH_OUT)/memory.json

bench-decode: $(STAMP)  ## staged decoding on one CPU core: explicit-state chain vs re-prefill vs HF generate
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" OMP_NUM_THREADS=1 \
	  taskset -c 0 $(PY) -m benchmarks.bench_decode --out $(BENCH_OUT)/decode.json

bench-construct: $(STAMP)  ## data construct reports/s and build-tfds images/s with 1 and 2 processes; MIMIC-CXR projection
	$(PY) -m benchmarks.bench_construct --out $(BENCH_OUT)/construct.json

bench-gpu: $(STAMP)  ## bench-train/-input/-memory on one CUDA GPU (needs a jax[cuda] install; not run yet)
	JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m benchmarks.bench_train --device gpu --out $(BENCH_OUT)/train_gpu.json
	JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m benchmarks.bench_input --out $(BENCH_OUT)/input_gpu_host.json
	JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m benchmarks.bench_memory --device gpu --out $(BENCH_OUT)/memory_gpu.json

$(TPU_STAMP): setup.cfg pyproject.toml
	test -x $(TPU_VENV)/bin/python || $(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(TPU_VENV)/bin/python -m pip install -q -e '.[tpu]'
	touch $(TPU_STAMP)

tpu-compile-check: $(TPU_STAMP)  ## compile the 7B train/decode steps for TPU topologies (separate .venv-tpu with libtpu)
	JAX_PLATFORMS=cpu $(TPU_VENV)/bin/python -m benchmarks.tpu_compile_check --out $(BENCH_OUT)/tpu_compile.json $(TPU_CHECK_ARGS)

# --- ablations (experiments/RESULTS.md) ---------------------------------------------------------
# Phantom data (runs/phantom, generated once) at CPU scale by default; point the same targets at a
# real set and a pod: make ablations DATA=cxrtrek.json IMAGE_ROOT=images PRESET=cxrtreknet-7b MESH=1,-1,8
ABLATIONS := baseline aligned grounded no_context shuffled_stages own_vs_teacher lora_r8 frozen_vision no_prior report_only text_only
PRESET ?= small
DATA ?=
IMAGE_ROOT ?=
MESH ?=
FORCE ?=
ABLATION_ARGS ?=  # more runner arguments, e.g. --set train.num_steps=100 --meteor
comma := ,
# INIT=<Hugging Face dir> (LLaVA or Gemma 3 / MedGemma): imported once into INIT_DIR, then every
# ablation starts from its weights and uses its tokenizer (experiment-NAME targets: LoRA experiment-lora_r8; full: the others).
INIT ?=
INIT_DIR ?= runs/init-$(PRESET)
ABLATION_SETS = $(if $(DATA),--set data.kind=json --set data.path=$(DATA) $(if $(IMAGE_ROOT),--set data.image_root=$(IMAGE_ROOT))) \
  $(if $(INIT),--set train.init_from=$(INIT_DIR) --set tokenizer.path=$(INIT_DIR)/tokenizer) \
  $(if $(MESH),--set mesh.data=$(word 1,$(subst $(comma), ,$(MESH))) --set mesh.fsdp=$(word 2,$(subst $(comma), ,$(MESH))) \
  --set mesh.tensor=$(word 3,$(subst $(comma), ,$(MESH))))
.PHONY: ablations ablations-report

$(INIT_DIR)/tokenizer/tokenizer.json:
	$(PY) -m cxrtrek_jax.cli import-hf $(INIT) --out $(INIT_DIR)

experiment-%: $(STAMP) $(if $(INIT),$(INIT_DIR)/tokenizer/tokenizer.json)  ## train + evaluate one registry experiment into runs/NAME (the single-run runner; FORCE=1 redoes it; INIT=hf_dir starts from a pretrained model)
	$(PY) -m experiments.ablations run $* --preset $(PRESET) $(ABLATION_SETS) $(if $(FORCE),--force) $(ABLATION_ARGS)

# The ablation study (experiments/ablation_study.py): each ablation a difference from `grounded` at
# the demo's scale, shared phases once per seed (runs/ablations/shared), runs in runs/ablations/seedS.
SEEDS ?= 0
ablation-%: $(STAMP)  ## one ablation of the study for SEEDS (NAME: grounded no_context shuffled_stages blind frozen_vision lora_r8 no_prior report_only), then the report
	$(PY) -m experiments.ablation_study run --only $* --seeds $(SEEDS) $(if $(FORCE),--force) $(ABLATION_ARGS)

ablations: $(STAMP)  ## every ablation for SEEDS (e.g. SEEDS=0,1,2; finished runs skipped, FORCE=1 redoes them), then runs/ablations.md/.png/.json
	$(PY) -m experiments.ablation_study run --seeds $(SEEDS) $(if $(FORCE),--force) $(ABLATION_ARGS)

ablations-report: $(STAMP)  ## runs/ablations.md/.png/.json: the six answers (paired, 95 % intervals) and the per-stage table
	$(PY) -m experiments.ablation_study report

clean:  ## remove build and demo outputs (keeps .venv)
	rm -rf build dist *.egg-info $(DEMO_DIR) construct_demo_out .pytest_cache
