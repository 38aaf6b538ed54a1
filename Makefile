# modelport: every target creates or refreshes the virtualenv from the project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.modelport-installed
# tritonclient pins protobuf < 7 (FACTS.md): it lives in its own venv, used by compat tests.
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: venv demo test test-fast protos check-protos lint bench up clean

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

## make demo: train a digits CNN, deploy it through converter -> optimizer -> inference, classify over gRPC.
demo: $(STAMP)
	$(PY) -m modelport.demo

## make test: the whole suite (real servers, real TensorFlow and onnxruntime).
test: $(STAMP) $(TRITON_STAMP)
	MODELPORT_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python $(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not integration"

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

up: $(STAMP)
	$(VENV)/bin/modelport up

clean:
	rm -rf $(VENV) $(TRITON_VENV) .modelport .pytest_cache
