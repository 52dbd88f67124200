PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install first. 2.13.0 resolves to the CPU wheel on the project's CI machines
# and to the default (CUDA) wheel from PyPI elsewhere; override with `make install TORCH=torch==X`.
TORCH ?= torch==2.13.0

.PHONY: install test test-all bench bench-data bench-speed demo clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,cluster]"

test:
	$(PY) -m pytest -q -m "not slow"

test-all:
	$(PY) -m pytest -q

# The dev benchmark (issue 4): regenerate bench-data/small, then index, query, evaluate and print the tables.
# BENCH_ARGS picks what runs (see `python benchmarks/run_dev.py -h`); BENCH_MODEL a model file (default:
# the default model, else a seeded random one, labelled as such in every table).
BENCH_SET ?= small
BENCH_DIR ?= bench-data/$(BENCH_SET)
BENCH_ARGS ?= --mode both --baseline chromaprint --random --ablation --steps 1000
BENCH_MODEL ?=
bench: bench-data
	$(PY) benchmarks/run_dev.py $(BENCH_DIR) $(BENCH_ARGS) $(if $(BENCH_MODEL),--model $(BENCH_MODEL)) \
		--out $(BENCH_DIR)/results.json --markdown $(BENCH_DIR)/results.md

# Installs the Debian audio packages when missing (needs root and apt), splits them dev/train by file
# and builds bench-data/$(BENCH_SET) with `ausil-search bench make` (deterministic, seed 0).
bench-data:
	$(PY) benchmarks/dev_data.py --install --out bench-data --only $(BENCH_SET)

# Throughput of the backbone and of decoding (no benchmark data needed).
bench-speed:
	$(PY) benchmarks/backbone_throughput.py
	$(PY) benchmarks/decode_speed.py

# A first run: sample videos with near-duplicates, indexed and searched (about a minute on 2 cores).
DEMO_DIR ?= demo
CLI := $(VENV)/bin/ausil-search
demo:
	rm -rf $(DEMO_DIR)
	$(PY) examples/demo_media.py $(DEMO_DIR)
	@if [ -f ausil_search/models/default.safetensors ]; then echo "model: the bundled default"; : > $(DEMO_DIR)/.model-flag; \
	else $(CLI) weights init -o $(DEMO_DIR)/model.safetensors && echo "--model $(DEMO_DIR)/model.safetensors" > $(DEMO_DIR)/.model-flag; fi
	$(CLI) index $(DEMO_DIR)/media --index $(DEMO_DIR)/index $$(cat $(DEMO_DIR)/.model-flag)
	$(CLI) info --index $(DEMO_DIR)/index
	$(CLI) query $(DEMO_DIR)/queries/clip-of-tune-03.mp4 $(DEMO_DIR)/queries/clip-of-tune-01.mp3 --index $(DEMO_DIR)/index --top-k 5

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
