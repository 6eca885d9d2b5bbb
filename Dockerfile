# foundry-proxy container image: one process, non-root, read-only-root friendly. The runtime
# stage has no shell, no package manager, no pip and no build tool: only Debian's python3, the
# libraries it and the wheels load, the CA bundle, and the venv. Why: docs/container.md.
#
#   docker build -t foundry-proxy .          (Docker 23+, or podman/buildah: plain Dockerfile)
#   podman build --format docker -t foundry-proxy .   (docker format keeps the HEALTHCHECK)
#
# Base: Debian's slim image and Debian's own python3 (trixie: Python 3.13), so the interpreter,
# OpenSSL and libc are Debian's packages and get Debian's security fixes on every rebuild. Pin
# it by digest where images are pulled: --build-arg BASE=docker.io/library/debian:trixie-slim@sha256:...
# Python dependencies come only from requirements/image.txt: exact versions, every file's
# SHA-256 checked (pip --require-hashes). Refresh it with scripts/lock-image.
ARG BASE=docker.io/library/debian:trixie-slim

# ---- build: a venv holding the locked dependencies and the project ---------------------------
FROM ${BASE} AS build
# Debian's packages follow the suite's security updates; pinning their versions would break
# the build at the next point release (the old .deb leaves the mirror).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A package index or TLS-inspecting proxy of your own, for this stage only (nothing of them
# reaches the final image): --build-arg PIP_INDEX_URL=... --build-arg PIP_CERT=/path/in/build.
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/image.txt requirements/image-build.txt ./requirements/
COPY scripts/image_rootfs.py ./scripts/
# /tools holds pip and setuptools (locked too); the app venv is made without pip and filled by
# /tools' pip (--python), so neither ever enters it. Only wheels: nothing is compiled here.
RUN python3 -m venv /tools \
 && /tools/bin/pip install --require-hashes --only-binary :all: --no-deps -r requirements/image-build.txt \
 && python3 -m venv --without-pip /opt/foundry-proxy \
 && /tools/bin/pip --python /opt/foundry-proxy/bin/python install --require-hashes --only-binary :all: --no-deps -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The project's own wheel, built with the locked setuptools; `pip check` fails the build if
# the lock misses a dependency (the installs above use --no-deps).
RUN /tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /tools/bin/pip --python /opt/foundry-proxy/bin/python install --no-deps --no-index --find-links /wheels foundry-proxy \
 && /tools/bin/pip --python /opt/foundry-proxy/bin/python check \
 && /opt/foundry-proxy/bin/python -m compileall -q /opt/foundry-proxy

# The runtime's root filesystem: Debian's python3 (and its standard library, with bytecode),
# OpenSSL and the CA bundle, netbase, base-files (os-release), and every package owning a
# library that they or the venv's wheels load. Whole packages, recorded in
# /var/lib/dpkg/status.d for image scanners; no shell, coreutils, apt or dpkg (the script
# fails if one would come along).
RUN python3 scripts/image_rootfs.py /rootfs \
      --package python3-minimal --package python3.13-minimal --package libpython3.13-minimal \
      --package libpython3.13-stdlib --package openssl --package ca-certificates \
      --package netbase --package base-files --scan /opt/foundry-proxy

# ---- runtime ---------------------------------------------------------------------------------
FROM scratch AS runtime
ARG BASE
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
      org.opencontainers.image.base.name="${BASE}"
COPY --from=build /rootfs /
COPY --from=build /opt/foundry-proxy /opt/foundry-proxy
# No .pyc written at runtime (the root filesystem may be read-only; bytecode is compiled in the
# build), logs unbuffered, and HOME points at nothing: the proxy writes no file of its own.
# MALLOC_ARENA_MAX=2: glibc keeps the arenas its threads used after a flood of request bodies
# instead of returning them; with two arenas the proxy's RSS after the body floods of
# tests/security (600 partial bodies then 600 slow ones, twice) was 127 MiB on average instead
# of 140 (5 and 6 runs; 109-141 against 129-147; peak 151 MiB either way). Fixing
# MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ at 1 MiB changed nothing (147 MiB), so unset.
ENV PATH=/opt/foundry-proxy/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/nonexistent \
    MALLOC_ARENA_MAX=2

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
