# syntax=docker/dockerfile:1
# modelport inference service: KServe v2 / Triton gRPC on onnxruntime. No TensorFlow.
# Build from the repository root (the build context must be the repo, see .dockerignore):
#   docker build -f deploy/inference.Dockerfile -t modelport-inference:latest .
# GPU variant (onnxruntime-gpu with the CUDA 12 / cuDNN 9 runtime libraries from PyPI wheels,
# so the base image needs no CUDA toolkit; the node needs the NVIDIA driver + device plugin):
#   docker build -f deploy/inference.Dockerfile --build-arg EXTRA=gpu -t modelport-inference:gpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- deps: third-party packages only. Copied before any source so that editing code reuses
# --- this (large) layer; it is rebuilt only when pyproject.toml changes.
FROM ${PYTHON_IMAGE} AS deps
# 'inference' (onnxruntime, CPU) or 'gpu' (onnxruntime-gpu). Neither pulls TensorFlow.
ARG EXTRA=inference
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/pyproject_requirements.py deploy/
RUN python deploy/pyproject_requirements.py ${EXTRA} > /tmp/requirements.txt \
 && if [ "${EXTRA}" = "gpu" ]; then \
      sed -i 's/^onnxruntime-gpu==/onnxruntime-gpu[cuda,cudnn]==/' /tmp/requirements.txt; \
    fi \
 && pip install -r /tmp/requirements.txt \
 && ! pip show tensorflow >/dev/null 2>&1

# --- build: our own code, installed without dependencies (they are all in the deps layer),
# --- then imported from / so the installed copy (not /src) is what gets checked.
FROM deps AS build
COPY modelport ./modelport
COPY inference_svc ./inference_svc
RUN pip install --no-deps --no-compile . \
 && cd / && python -c "import inference_svc, modelport.healthcheck"

# --- runtime: the venv only, no compilers, no source tree, non-root.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/modelport \
    MODELPORT_INFERENCE_HOST=[::] \
    MODELPORT_INFERENCE_PORT=8001 \
    MODELPORT_INFERENCE_METRICS_PORT=9103 \
    MODELPORT_INFERENCE_STORE=/var/lib/modelport/store \
    MODELPORT_INFERENCE_LOG_JSON=true \
    MODELPORT_HEALTHCHECK_ADDRESS=localhost:8001
# GPU build only (the folders are absent in the CPU image, where this is a no-op): onnxruntime-gpu
# finds the CUDA/cuDNN libraries that the nvidia-*-cu12 wheels unpack under site-packages.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cufft/lib:/opt/venv/lib/python3.11/site-packages/nvidia/curand/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/modelport modelport \
 && mkdir -p /var/lib/modelport/store \
 && chown -R 1000:1000 /var/lib/modelport
COPY --from=build /opt/venv /opt/venv
USER 1000
WORKDIR /home/modelport
VOLUME ["/var/lib/modelport/store"]
EXPOSE 8001 9103
# grpc.health.v1 Check on the server ('' = whole server); SERVING only once startup finished.
# TLS: set MODELPORT_HEALTHCHECK_TLS_CA (and _TLS_CERT/_TLS_KEY under mTLS) at run time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "modelport.healthcheck"]
ENTRYPOINT ["python", "-m", "inference_svc"]
