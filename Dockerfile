# syntax=docker/dockerfile:1.7
# User-code image of fib_assets, in two builds of the same commit:
#   docker build --target cpu  -t $REGISTRY/fib-assets:$VERSION-cpu  .   # code server, CPU steps
#   docker build --target cuda -t $REGISTRY/fib-assets:$VERSION-cuda .   # GPU steps only
# Both run `dagster api grpc -m fib_assets.definitions` (the Helm chart passes the args) with
# FIB_ASSETS_DEPLOYMENT=k8s. The CUDA build uses PyPI's default Linux torch wheel, which
# bundles the CUDA runtime; the node only needs the NVIDIA driver (device plugin / GPU
# operator). No credential is ever baked in: S3 access comes from the pod's service account,
# secrets from Kubernetes Secrets at run time.

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    FIB_ASSETS_DEPLOYMENT=k8s \
    FIB_ASSETS_SCRATCH=/scratch
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin fib \
    && mkdir -p "$DAGSTER_HOME" /scratch /landing \
    && chown fib "$DAGSTER_HOME" /scratch
WORKDIR /opt/fib_assets

# torch first, in its own layer: the largest download, and the only difference between builds
FROM base AS torch-cpu
ARG TORCH_VERSION
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

FROM base AS torch-cuda
ARG TORCH_VERSION
RUN pip install "torch==${TORCH_VERSION}"

# the project's dependencies (cached until pyproject.toml changes), then the code itself
FROM torch-cpu AS deps-cpu
COPY pyproject.toml README.md ./
RUN mkdir fib_assets && touch fib_assets/__init__.py \
    && pip install . && pip uninstall -y fib_assets && rm -rf fib_assets build

FROM torch-cuda AS deps-cuda
COPY pyproject.toml README.md ./
RUN mkdir fib_assets && touch fib_assets/__init__.py \
    && pip install . && pip uninstall -y fib_assets && rm -rf fib_assets build

FROM deps-cpu AS cpu
COPY fib_assets ./fib_assets
# experiment files are the static partitions of organelle_model (read at import)
COPY experiments ./experiments
ENV FIB_ASSETS_EXPERIMENTS=/opt/fib_assets/experiments
RUN pip install --no-deps . && python -c "import fib_assets.definitions"
USER fib
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "fib_assets.definitions"]

FROM deps-cuda AS cuda
COPY fib_assets ./fib_assets
# experiment files are the static partitions of organelle_model (read at import)
COPY experiments ./experiments
ENV FIB_ASSETS_EXPERIMENTS=/opt/fib_assets/experiments
RUN pip install --no-deps . && python -c "import fib_assets.definitions"
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER fib
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "fib_assets.definitions"]
