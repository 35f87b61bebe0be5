# One image for every nerloop process: the API (`nerloop serve`), the workers (`nerloop worker`)
# and the scheduler (`nerloop beat`); docker-compose.yml picks the command. PyTorch comes from the
# index in TORCH_INDEX_URL: the CPU build by default, a CUDA build for the gpu worker, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t nerloop:gpu .
# The CUDA wheels carry their own CUDA libraries; the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NERLOOP_HOME=/var/lib/nerloop

# WordNet for synonym augmentation (augment/wordnet.py reads Debian's files).
RUN apt-get update \
    && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
    && rm -rf /var/lib/apt/lists/*

# Its own layer, before the sources: a code change does not download PyTorch again. The pin is
# pyproject's, so `pip install .` below keeps this build instead of replacing it with PyPI's.
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/nerloop
COPY pyproject.toml README.md ./
COPY active_learning ./active_learning
COPY augment ./augment
COPY service ./service
COPY workers ./workers
RUN pip install . && rm -rf build ./*.egg-info

# Not root. NERLOOP_HOME holds the model store (workers write it, the API reads it) and the beat's
# schedule file; compose mounts one volume there for all of them. A new named volume takes this
# folder's owner, so the user can write it.
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin nerloop \
    && mkdir -p "${NERLOOP_HOME}" \
    && chown nerloop:nerloop "${NERLOOP_HOME}"
USER nerloop
WORKDIR /var/lib/nerloop
VOLUME ["/var/lib/nerloop"]

EXPOSE 8000
# The API's health route answers 200 once the database answers. Compose turns this check off for
# the workers and the beat, which run the same image but serve no HTTP.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)"]

ENTRYPOINT ["nerloop"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
