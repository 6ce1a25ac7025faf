# lungvol container image. The entry point is the `lungvol` CLI; it runs as the non-root user
# `lungvol` in /data, so mount the inputs and the output folder there (see docs/deploy.md).
#
# CPU (default):
#   docker build -t lungvol:cpu .
# CUDA (torch from the PyTorch index; the classical pipeline itself stays on the CPU):
#   docker build -t lungvol:cuda \
#     --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH=torch==2.5.1 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
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

RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 \
       || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv "$VIRTUAL_ENV"

COPY scripts/image-constraints.txt /opt/lungvol/constraints.txt
COPY pyproject.toml README.md /opt/lungvol/source/
COPY src/ /opt/lungvol/source/src/

RUN set -eux; \
    extras="dask,parquet"; \
    if [ -n "$TORCH" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$TORCH"; \
        extras="$extras,dl"; \
    fi; \
    pip install -c /opt/lungvol/constraints.txt "/opt/lungvol/source[$extras]"; \
    lungvol --version

# Trial configurations and the bundled sample scan (for a smoke test: see docs/deploy.md).
COPY configs/ /opt/lungvol/configs/
COPY sample_data/ /opt/lungvol/sample_data/

RUN set -eux; \
    useradd --uid "$LUNGVOL_UID" --user-group --create-home --home-dir /home/lungvol \
        --shell /usr/sbin/nologin lungvol; \
    mkdir -p /data; \
    chown lungvol:lungvol /data

USER lungvol
WORKDIR /data
ENTRYPOINT ["lungvol"]
CMD ["--help"]
