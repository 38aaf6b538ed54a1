# modelport: every target creates or refreshes the virtualenv from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.modelport-installed
# tritonclient pins protobuf < 7 (docs/FACTS.md): it lives in its own venv, used by compat tests.
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# onnx2tf (ONNX -> TensorFlow/TFLite) needs Python >= 3.12 and pins its own stack (docs/FACTS.md):
# the converter runs it from this venv. Without a Python 3.12 those targets answer UNIMPLEMENTED and
# the suite's onnx2tf tests fail saying so. scripts/find_python.py looks for one (PYTHON312, python3.12
# on PATH, pyenv's versions, `uv python find`, system folders); set PYTHON312=/path/to/python3.12 to choose.
ONNX2TF_VENV  ?= .venv-onnx2tf
ONNX2TF_STAMP := $(ONNX2TF_VENV)/.installed
ifeq ($(origin PYTHON312),undefined)
PYTHON312 := $(shell $(PYTHON) scripts/find_python.py 3.12)
endif
# onnx2torch (ONNX -> PyTorch) with the CPU build of torch 2.13 (docs/FACTS.md): its own venv keeps torch
# out of the services' images and venv. `torch==2.13.0` takes the CPU wheel where pip is set up to find it
# (as on the project's machines); elsewhere pass PyTorch's CPU wheel index, e.g.
# TORCH_PIP_ARGS="--index-url <PyTorch CPU index> --extra-index-url <PyPI>", or pip downloads the CUDA build.
ONNX2TORCH_VENV  ?= .venv-onnx2torch
ONNX2TORCH_STAMP := $(ONNX2TORCH_VENV)/.installed
TORCH_PIP_ARGS   ?=

.PHONY: venv triton-venv onnx2tf-venv onnx2torch-venv peer-venvs bench-serving bench-reliability demo test test-fast protos lint bench up clean
# The Python serving peers bench_serving compares against (benchmarks/peers/): each in its own venv,
# they conflict with each other and with tritonclient's protobuf pin (docs/FACTS.md).
KSERVE_VENV   ?= .venv-kserve
MLSERVER_VENV ?= .venv-mlserver


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
	@echo "WARNING: no Python 3.12 found (scripts/find_python.py): ONNX -> TensorFlow/TFLite will answer UNIMPLEMENTED"
	@echo "and the onnx2tf tests of make test fail; install Python 3.12 (e.g. pyenv install 3.12) or set PYTHON312=..."
endif

onnx2tf-venv: $(ONNX2TF_STAMP)

$(ONNX2TORCH_STAMP):
	@test -x $(ONNX2TORCH_VENV)/bin/python || $(PYTHON) -m venv $(ONNX2TORCH_VENV)
	$(ONNX2TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ONNX2TORCH_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) "torch==2.13.0" "onnx==1.23.2" "numpy>=2.0,<2.5"
# onnx2torch's torchvision requirement is left out: PyPI's torchvision is built against the CUDA torch and
# fails to import beside the CPU build; only onnx2torch's NonMaxSuppression/RoiAlign converters use it, and
# modelport's bridge reports those two operators as unsupported.
	$(ONNX2TORCH_VENV)/bin/python -m pip install --quiet --no-deps "onnx2torch==1.5.15"
	@touch $(ONNX2TORCH_STAMP)

onnx2torch-venv: $(ONNX2TORCH_STAMP)

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
test: $(STAMP) $(TRITON_STAMP) $(ONNX2TF_STAMP) $(ONNX2TORCH_STAMP)
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

## make bench-reliability: soak, jobs soak, slow/vanishing clients, crash and resume, full disk (BENCHMARKS.md, Reliability).
bench-reliability: $(STAMP) $(TRITON_STAMP)
	$(PY) -m benchmarks.bench_reliability

up: $(STAMP)
	$(VENV)/bin/modelport up

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(ONNX2TF_VENV) $(ONNX2TORCH_VENV) $(KSERVE_VENV) $(MLSERVER_VENV) .modelport .pytest_cache
