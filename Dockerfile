# The one image every V2I step runs in: the KFP components, the training operator's PyTorchJob, `docker run ... v2i`.
#
# Base: python:3.11 slim, pinned by version, rather than an nvidia/cuda image. The pinned torch 2.14.1 wheels
# bring their own CUDA 13 runtime, cuDNN and NCCL (the nvidia-* pins in constraints.txt), so on a GPU node the
# NVIDIA container runtime only has to inject the driver (>= 580 for CUDA 13); a CUDA base image would add a
# second, unused copy of those libraries. Python 3.11 is the version CI tests with.
FROM python:3.11.7-slim-bookworm

# No git in the image: the commit comes from V2I_GIT_COMMIT (below), and MLflow need not look for git.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet

# Dependencies first, exactly as CI installs them (Makefile `setup`, its runtime half): this layer changes
# only when the pins do, so a rebuild after a code change reuses it.
WORKDIR /opt/v2i
COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt

# Then the project, as CI installs it (every dependency is already pinned above): the library, the research bench
# beside it (`v2i bench`, e.g. at the GPU size on the cluster), and the ready params files (configs/).
COPY pyproject.toml params.yaml ./
COPY configs ./configs
COPY v2i_core ./v2i_core
COPY v2i_bench ./v2i_bench
RUN pip install --no-deps -e .

# A non-root user; its home is the working directory (MLflow's default SQLite store, matplotlib's cache).
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin v2i
USER v2i
WORKDIR /home/v2i
# The base params every step reads; pipelines change single knobs with `--set` (KFP parameter `overrides`).
ENV V2I_PARAMS=/opt/v2i/params.yaml

# Last, so that a new commit rebuilds no layer above:
#   docker build --build-arg V2I_GIT_COMMIT=$(git rev-parse HEAD) -t <registry>/v2i:<tag> .
ARG V2I_GIT_COMMIT=unknown
ENV V2I_GIT_COMMIT=${V2I_GIT_COMMIT}

CMD ["v2i", "--help"]
