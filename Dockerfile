# lungvol container image. The entry point is the `lungvol` CLI; it runs as the non-root user
# `lungvol` in /data, so mount the inputs and the output folder there (see docs/deploy.md).
#
# CPU (default):
#   docker build -t lungvol:cpu .
# CUDA (torch from the PyTorch index; the classical pipeline itself stays on the CPU). The base
# needs Python >= 3.11 for the pinned versions in scripts/image-constraints.txt (Ubuntu 24.04):
#   docker build -t lungvol:cuda \
#     --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH=torch==2.13.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# Without a Docker engine or registry: scripts/build_image.sh (debootstrap base + podman).
#
# BASE may be any Debian/Ubuntu image; one without python3 (nvidia/cuda, a bare debootstrap
# root filesystem) gets the distribution's python3 and venv via apt.

ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# Empty TORCH = CPU image without torch (`--device cuda` is then refused with a clear message).
ARG TORCH=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG LUNGVOL_UID=10001

LABEL org.opencontainers.image.title="lungvol" \
      org.opencontainers.image.description="CT lung and lesion volumetry for clinical trials" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lungvol/venv \
    PATH=/opt/lungvol/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    LANG=C.UTF-8

# Runtime settings first: every instruction after the big install below costs a layer copy.
WORKDIR /data
ENTRYPOINT ["lungvol"]
CMD ["--help"]

RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 \
       || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    useradd --uid "$LUNGVOL_UID" --user-group --create-home --home-dir /home/lungvol \
        --shell /usr/sbin/nologin lungvol; \
    chown lungvol:lungvol /data

# Third-party dependencies, pinned, in their own layer: a change to lungvol's sources does not
# reinstall them.
COPY scripts/image-constraints.txt /opt/lungvol/constraints.txt
RUN set -eux; \
    if [ -n "$TORCH" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH"; fi; \
    pip install -r /opt/lungvol/constraints.txt

# The project in one layer (.dockerignore lets in only pyproject.toml, README.md, src/, configs/
# and sample_data/): configs/ sits beside src/ because the packaged default.yaml links to it;
# sample_data/ holds the phantom for a smoke test (see docs/deploy.md).
COPY . /opt/lungvol/
RUN set -eux; \
    extras="dask,parquet"; \
    if [ -n "$TORCH" ]; then extras="$extras,dl"; fi; \
    pip install -c /opt/lungvol/constraints.txt "/opt/lungvol[$extras]"; \
    pip check; \
    lungvol --version; \
    test -f "$VIRTUAL_ENV/lib/python3"*"/site-packages/lungvol/default.yaml"

USER lungvol
