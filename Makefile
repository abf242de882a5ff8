# tvm-mpq: `make test` and `make demo` work on a fresh machine (Python 3.11 + g++).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test test-all demo bench clean runner

venv: $(STAMP)

# torch is pinned to the local CPU wheel (2.13.0) first so that nothing pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto tests

# the slow tests too: more compile targets and networks (about 2 minutes more on 2 cores)
test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m "slow or not slow" tests

demo: $(STAMP)
	$(PY) -m tvm_mpq.demo

bench: $(STAMP)
	$(PY) benchmarks/kernels.py
	$(PY) benchmarks/resnet18.py

# C++ deploy runner build/mpq_run (TVM runtime from the venv's wheel).
runner: $(STAMP)
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build -j2

clean:
	rm -rf $(VENV) build *.egg-info
