# syntax=docker/dockerfile:1
# modelport converter service: Keras/SavedModel/TFLite/ONNX conversion (TensorFlow inside).
# Build from the repository root (the build context must be the repo, see .dockerignore):
#   docker build -f deploy/converter.Dockerfile -t modelport-converter:latest .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- deps: third-party packages only. Copied before any source so that editing code reuses
# --- this (large) layer; it is rebuilt only when pyproject.toml changes.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/pyproject_requirements.py deploy/
RUN python deploy/pyproject_requirements.py converter > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# --- build: our own code, installed without dependencies (they are all in the deps layer),
# --- then imported from / so the installed copy (not /src) is what gets checked.
FROM deps AS build
COPY modelport ./modelport
COPY converter_svc ./converter_svc
RUN pip install --no-deps --no-compile . \
 && cd / && python -c "import converter_svc, modelport.healthcheck"

# --- runtime: the venv only, no compilers, no source tree, non-root.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/modelport \
    MODELPORT_CONVERTER_HOST=[::] \
    MODELPORT_CONVERTER_PORT=50051 \
    MODELPORT_CONVERTER_METRICS_PORT=9101 \
    MODELPORT_CONVERTER_STORE=/var/lib/modelport/store \
    MODELPORT_CONVERTER_LOG_JSON=true \
    MODELPORT_HEALTHCHECK_ADDRESS=localhost:50051
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/modelport modelport \
 && mkdir -p /var/lib/modelport/store \
 && chown -R 1000:1000 /var/lib/modelport
COPY --from=build /opt/venv /opt/venv
USER 1000
WORKDIR /home/modelport
VOLUME ["/var/lib/modelport/store"]
EXPOSE 50051 9101
# grpc.health.v1 Check on the server ('' = whole server); SERVING only once startup finished.
# TLS: set MODELPORT_HEALTHCHECK_TLS_CA (and _TLS_CERT/_TLS_KEY under mTLS) at run time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "modelport.healthcheck"]
ENTRYPOINT ["python", "-m", "converter_svc"]
