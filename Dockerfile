# foundry-proxy container image: one small process, non-root, no shell needed at runtime.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/foundry-proxy \
 && /opt/foundry-proxy/bin/pip install --no-cache-dir '.[certificate]'

FROM python:3.11-slim
COPY --from=build /opt/foundry-proxy /opt/foundry-proxy
ENV PATH=/opt/foundry-proxy/bin:$PATH \
    PYTHONUNBUFFERED=1
# As a sidecar, 127.0.0.1 is shared by every container of the pod, so the default bind works.
# To publish a port from a laptop: -e FOUNDRY_PROXY_HOST=0.0.0.0 -e FOUNDRY_PROXY_ALLOW_REMOTE=true
#   -p 127.0.0.1:8787:8787
USER 65532:65532
EXPOSE 8787
ENTRYPOINT ["foundry-proxy"]
