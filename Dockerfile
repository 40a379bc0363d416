# Reproducible image for the offline transfer-freezing pipeline (`dvc repro`).
#
# Build and run (CPU):
#   docker build -t transfer-freezing .
#   docker run --name tf-run transfer-freezing && docker cp tf-run:/app/reports ./reports-docker
#
# GPU: torch==2.14.1 from PyPI is itself a CUDA build (the CUDA runtime comes in its
# nvidia-* wheels) that also runs on CPU, so this same image uses a GPU when started on a
# host with the NVIDIA Container Toolkit:  docker run --rm --gpus all transfer-freezing
# (params.yaml's runtime.device: auto picks cuda when one is visible).
#
# BASE_IMAGE may name another Debian bookworm image with Python 3.11 as `python`
# (e.g. python:3.11-bookworm). A CUDA base such as nvidia/cuda:12.x-runtime-ubuntu22.04 has
# no Python 3.11 and is Ubuntu, so it would also need Python installed and GIT_VERSION set to
# that distribution's git version; it is not needed for GPU use (see above).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# git: DVC needs a Git repository. The version is Debian bookworm's; bump it when the archive
# moves on (`apt-cache policy git`).
ARG GIT_VERSION=1:2.39.5-0+deb12u3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DVC_NO_ANALYTICS=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends "git=${GIT_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /app \
    && useradd --create-home --user-group --uid 1000 --shell /bin/bash app \
    && install -d -o app -g app /app

WORKDIR /app

# Dependencies are pinned in pyproject.toml; install the project the way the README does.
# Copying only what the install needs first keeps this (large) layer cached when just
# params.yaml, dvc.yaml or profiles/ change.
COPY --chown=1000:1000 pyproject.toml ./
COPY --chown=1000:1000 src/ src/
RUN python -m pip install --no-cache-dir -e .

COPY --chown=1000:1000 . .

# Numeric so the host and Kubernetes' runAsNonRoot can tell it is not root (uid 1000 = app).
USER 1000:1000

# A fresh container has no .git (it is not copied) and possibly no .dvc: create them, then
# run the offline pipeline. Outputs land in /app/data, /app/models, /app/mlruns, /app/reports.
CMD ["sh", "-c", "[ -d .git ] || git init -q; [ -d .dvc ] || dvc init -q; exec dvc repro"]
