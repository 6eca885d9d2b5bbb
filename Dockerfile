# syntax=docker/dockerfile:1
# foundry-proxy container image: one small process, non-root, no pip and no build tools at
# runtime, read-only root filesystem friendly.
#
#   docker build -t foundry-proxy .            (BuildKit: Docker 23+ or `docker buildx build`)
#
# Base image: the official Debian slim Python, pinned to a patch release. Pin its digest too
# (`FROM python:3.12.12-slim-bookworm@sha256:...`, the same digest in both stages) where images
# can be pulled; this repository's tooling cannot reach a registry, so no digest is recorded
# here. Distroless Python was not chosen: its interpreter is Debian's, at another path and
# version than the build stage's, so the venv built here would not run on it unchecked.
# tests/deploy/test_image.py lints this file and replays its RUN, HEALTHCHECK and ENTRYPOINT
# commands in a fresh venv: keep them plain (one command per `&&`, no shell expansion).

# ---- build: the project and every dependency as wheels --------------------------------------
FROM python:3.12.12-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels '.[certificate]'

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.12.12-slim-bookworm AS runtime
ARG VERSION=0.0.0+unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="foundry-proxy" \
      org.opencontainers.image.description="Local authenticating reverse proxy for Azure AI Foundry and Azure OpenAI" \
      org.opencontainers.image.source="https://github.com/OWNER/foundry-proxy" \
      org.opencontainers.image.url="https://github.com/OWNER/foundry-proxy" \
      org.opencontainers.image.documentation="https://github.com/OWNER/foundry-proxy#readme" \
      org.opencontainers.image.vendor="OWNER" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.12-slim-bookworm"
# No .pyc written at runtime (the root filesystem may be read-only; bytecode is compiled below),
# logs unbuffered, and HOME points at nothing: the proxy writes no file of its own.
ENV PATH=/opt/foundry-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/nonexistent
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
# Only those wheels are installed (--no-index): the exact versions the build stage resolved.
# Then pip (and setuptools/wheel, where present) leave the venv, and the bytecode is compiled.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/foundry-proxy \
 && /opt/foundry-proxy/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels 'foundry-proxy[certificate]' \
 && /opt/foundry-proxy/bin/python -m pip uninstall --yes pip setuptools wheel \
 && /opt/foundry-proxy/bin/python -m compileall -q /opt/foundry-proxy
# The base image's own pip goes too, and its standard library (shipped without .pyc) is compiled
# so that a read-only root filesystem costs no start-up time.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && python -m compileall -q /usr/local/lib/python3.12 \
 && rm -rf /root/.cache

# Non-root, numeric so that Kubernetes' runAsNonRoot can verify it (65532: distroless "nonroot").
USER 65532:65532
WORKDIR /
# Bind: the default 127.0.0.1 is right for a sidecar (every container of the pod shares it and
# nothing outside the pod reaches it). To publish the port, listen on all interfaces AND require
# inbound keys (see README, Security):
#   docker run --read-only -p 127.0.0.1:8787:8787 -e FOUNDRY_PROXY_HOST=0.0.0.0 \
#     -e FOUNDRY_PROXY_API_KEYS_FILE=/run/secrets/proxy-keys ... foundry-proxy
# FOUNDRY_PROXY_ALLOW_REMOTE=true instead of keys only where the published port is already
# reachable by nobody else (e.g. `-p 127.0.0.1:8787:8787` on a single-user laptop).
EXPOSE 8787
# Liveness without curl/wget: /healthz answers 200 while the process runs (it never depends on
# Entra). Reads the same FOUNDRY_PROXY_HOST/PORT as the proxy and ignores HTTP(S)_PROXY.
# Kubernetes ignores HEALTHCHECK: use httpGet probes on /healthz (liveness), /readyz (readiness).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as r; h = os.environ.get('FOUNDRY_PROXY_HOST', '127.0.0.1'); h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = f'[{h}]' if ':' in h else h; p = os.environ.get('FOUNDRY_PROXY_PORT', '8787'); sys.exit(r.build_opener(r.ProxyHandler({})).open(f'http://{h}:{p}/healthz', timeout=3).status != 200)"]
# SIGTERM starts a graceful drain (FOUNDRY_PROXY_SHUTDOWN_GRACE, 30 s by default) and exits 0;
# give the runtime at least that long (`docker stop -t 35`, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["foundry-proxy"]
