"""create_app: wires settings, credential, token provider and forwarder into one Starlette app.

The app owns every runtime object; the lifespan starts them (without waiting for the first
token) and closes them after uvicorn has drained in-flight requests, so the token refresher
keeps running during a graceful shutdown.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.access import AccessLog
from proxy.admission import Gate
from proxy.backends import Pool
from proxy.budget import BUDGET_KEY, BodyBudget
from proxy.credentials import Credential, TokenProvider, credential_from_settings
from proxy.credentials.factory import TokenClients
from proxy.credentials.provider import TokenStatus
from proxy.forwarding import Forwarder
from proxy.garbage import IdleCollector
from proxy.logs import configure_logging
from proxy.policy import Policy
from proxy.realtime import RealtimeRelay
from proxy.runtime import Runtime
from proxy.settings import Settings
from proxy.upstream_session import UpstreamSession

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from proxy.metrics import Metrics

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class AppFactory:
    """create_app for a worker process (``--workers N``): picklable, so it can be sent to a
    freshly spawned process, and it sets up that process's logging before building the app.
    Each worker holds and refreshes its own token."""

    settings: Settings

    def __call__(self) -> ASGIApp:
        configure_logging(self.settings.log_level, secrets=self.settings.known_secrets())
        return create_app(self.settings)


def create_app(
    settings: Settings,
    *,
    credential: Credential | None = None,
) -> ASGIApp:
    """The ASGI app; ``credential`` may be supplied by tests. Raises ConfigError when the
    credential's files (certificate, CA bundle) cannot be used."""
    # One TLS context for Entra and the upstream alike. OpenSSL's defaults (the system's CA
    # store) honour SSL_CERT_FILE / SSL_CERT_DIR, which is how users behind a TLS-inspecting
    # proxy add their CA; httpx2 would ignore them with trust_env off.
    tls = ssl.create_default_context()
    clients = TokenClients.create(settings, tls)
    credential = credential or credential_from_settings(settings, clients)
    # The token series are read at scrape time, from the provider created just below.
    metrics = _metrics(settings, lambda: tokens.statuses(), credential.kind)
    tokens = TokenProvider(
        credential,
        primary_scope=settings.scope,
        wait_timeout=settings.token_wait,
        observer=metrics.refreshed if metrics is not None else None,
    )
    access = AccessLog(settings.access_log, credential.kind)
    # One gate and one upstream pool for HTTP requests and Realtime sessions alike.
    gate = Gate(settings, Policy(*settings.rules()))
    upstream = UpstreamSession(settings, tls)
    # The backends requests go to, with their cooldowns and circuits (docs/backends.md).
    pool = Pool(settings.pool)
    runtime = Runtime(settings, gate, upstream, tokens, metrics, access, pool)
    forwarder = Forwarder(runtime)
    realtime = RealtimeRelay(runtime)
    # Counted by the listener, which finds it in the lifespan state (budget.py).
    body_budget = BodyBudget(settings.max_buffered_body_bytes)
    # Cyclic garbage (closed connections, ended Realtime sessions) is collected when traffic
    # stops (garbage.py).
    collector = IdleCollector(lambda: forwarder.in_flight > 0 or gate.slots_held > 0)
    if metrics is not None:
        metrics.watch(
            lambda: forwarder.in_flight,
            body_budget,
            lambda: [(b.name, b.requests, b.failovers, b.health.label()) for b in pool.backends],
        )

    async def healthz(request: Request) -> JSONResponse:
        # Liveness never depends on Entra: restarting would throw away a still-valid token.
        return JSONResponse({"status": "ok"})

    async def metrics_text(request: Request) -> Response:
        if metrics is None:
            return JSONResponse({"error": "metrics are off (FOUNDRY_PROXY_METRICS)"}, 404)
        return Response(metrics.render(), media_type=metrics.content_type)

    async def readyz(request: Request) -> JSONResponse:
        status = tokens.status()
        # Ready while one backend can take a request; the others' states are shown.
        resting = {b.name: b.health.label() for b in pool.backends if not b.health.available()}
        if status.valid and status.expires_in is not None:
            if not pool.can_serve():
                wait = max(1, math.ceil(pool.soonest()))
                reason = f"every backend is cooling down or failing; the first is back in {wait} s"
                return JSONResponse(
                    {"status": "not_ready", "reason": reason, "backends": resting}, 503
                )
            ready: dict[str, object] = {
                "status": "ready",
                "token_expires_in": int(status.expires_in),
            }
            if resting:
                ready["backends"] = resting
            return JSONResponse(ready)
        body: dict[str, object] = {"status": "not_ready", "reason": "no valid Entra ID token yet"}
        if status.error is not None:
            body["reason"] = f"{status.error.code}: {status.error.message}"
            if status.error.hint:
                body["fix"] = status.error.hint
        return JSONResponse(body, status_code=503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        await upstream.start()
        tokens.start()
        access.start()
        collector.start()
        try:
            yield {BUDGET_KEY: body_budget}
        finally:
            await collector.aclose()
            await upstream.aclose()
            await tokens.aclose()
            await clients.aclose()
            access.stop()

    framework = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            Route("/{path:path}", forwarder),
        ],
        lifespan=lifespan,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Proxied requests skip Starlette's middleware stack and router: its two send
        # wrappers and route matching cost ~30-40 us a request here (py-spy, benchmark issue),
        # and the forwarder answers its own errors. Probes, lifespan and anything else go
        # through Starlette as usual.
        if scope["type"] == "http" and scope["path"] not in _PROBES:
            await forwarder(scope, receive, send)
        elif scope["type"] == "websocket":
            await realtime(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return app


def _metrics(
    settings: Settings, statuses: Callable[[], Iterable[TokenStatus]], kind: str
) -> Metrics | None:
    """The app's metrics when they are on. prometheus_client is imported only then: an idle
    proxy imports what its features need (issue 17; tests/unit/test_lazy_imports.py)."""
    if not settings.metrics:
        return None
    from proxy.metrics import Metrics

    return Metrics(statuses, kind, settings.metrics_max_models)
