PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install first. 2.13.0 resolves to the CPU wheel on the project's CI machines
# and to the default (CUDA) wheel from PyPI elsewhere; override with `make install TORCH=torch==X`.
TORCH ?= torch==2.13.0

.PHONY: install test test-all bench demo clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"

test:
	$(PY) -m pytest -q -m "not slow"

test-all:
	$(PY) -m pytest -q

bench:
	$(PY) benchmarks/backbone_throughput.py
	$(PY) benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
