# modelport: every target creates or refreshes the virtualenv from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.modelport-installed
# tritonclient pins protobuf < 7 (FACTS.md): it lives in its own venv, used by compat tests.
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# onnx2tf (ONNX -> TensorFlow/TFLite) needs Python >= 3.12 and pins its own stack (FACTS.md):
# the converter runs it from this venv. Without a Python 3.12 those targets answer UNIMPLEMENTED.
ONNX2TF_VENV  ?= .venv-onnx2tf
ONNX2TF_STAMP := $(ONNX2TF_VENV)/.installed
# The Python serving peers bench_serving compares against (benchmarks/peers/): each in its own venv,
# they conflict with each other and with tritonclient's protobuf pin (FACTS.md).
KSERVE_VENV   ?= .venv-kserve
MLSERVER_VENV ?= .venv-mlserver
PYTHON312     ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python /root/.pyenv/versions/3.12*/bin/python) $(shell command -v python3.12 2>/dev/null))

.PHONY: venv triton-venv onnx2tf-venv peer-venvs bench-serving demo test test-fast protos lint bench up clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	@touch $(STAMP)

$(TRITON_STAMP):
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet "tritonclient[grpc]==2.*" numpy
	@touch $(TRITON_STAMP)

triton-venv: $(TRITON_STAMP)

$(ONNX2TF_STAMP):
ifneq ($(PYTHON312),)
	@test -x $(ONNX2TF_VENV)/bin/python || $(PYTHON312) -m venv $(ONNX2TF_VENV)
	$(ONNX2TF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ONNX2TF_VENV)/bin/python -m pip install --quiet "onnx2tf[tensorflow]==2.6.9" "onnx-graphsurgeon==0.6.1"
	@touch $(ONNX2TF_STAMP)
else
	@echo "no Python 3.12 found: ONNX -> TensorFlow/TFLite conversion will answer UNIMPLEMENTED"
endif

onnx2tf-venv: $(ONNX2TF_STAMP)

$(KSERVE_VENV)/.installed:
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements-kserve.txt
	@touch $@

$(MLSERVER_VENV)/.installed:
	@test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements-mlserver.txt
	@touch $@

## make peer-venvs: KServe's and MLServer's venvs for the serving comparison (benchmarks/peers/).
peer-venvs: $(KSERVE_VENV)/.installed $(MLSERVER_VENV)/.installed

## make demo: train a digits CNN, deploy it through converter -> optimizer -> inference, classify over gRPC.
demo: $(STAMP)
	$(PY) -m gateway.demo

## make test: the whole suite (real servers, real TensorFlow and onnxruntime).
test: $(STAMP) $(TRITON_STAMP) $(ONNX2TF_STAMP)
	MODELPORT_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python $(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not integration"

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(STAMP) $(TRITON_STAMP) peer-venvs
	$(PY) -m benchmarks.run_all

## make bench-serving: modelport vs KServe vs MLServer vs the bare grpc.aio floor (BENCHMARKS.md, Serving).
bench-serving: $(STAMP) $(TRITON_STAMP) peer-venvs
	$(PY) -m benchmarks.bench_serving

up: $(STAMP)
	$(VENV)/bin/modelport up

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(ONNX2TF_VENV) $(KSERVE_VENV) $(MLSERVER_VENV) .modelport .pytest_cache
