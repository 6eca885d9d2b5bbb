"""Prometheus metrics: traffic, upstream errors, token health and model usage.

One registry per app (never prometheus_client's global one: no module-level state, and two
apps in one process, as in tests, do not mix their numbers). The forwarder hands each finished
exchange to ``observe``; token series are read from the provider when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.budget import BodyBudget
from proxy.credentials.provider import TokenStatus
from proxy.exchange import Exchange

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Label values that clients choose are bounded (docs/security.md, "Resource bounds"): a series
# is made per distinct value and never expires, so 20,000 invented deployment names made
# 40,000 series. A model or deployment gets a label of its own once the upstream has answered
# it successfully (a 404 DeploymentNotFound mints none), up to FOUNDRY_PROXY_METRICS_MAX_MODELS
# of them; every other one is counted as OTHER.
OTHER = "other"
DEFAULT_MAX_MODELS = 100
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Error kinds: the proxy's own codes for upstream failures (replies.upstream_failure), few;
# bounded all the same.
_MAX_ERROR_KINDS = 32
# Model calls take from milliseconds (embeddings) to minutes (long generations).
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TokenCollector(Collector):
    """Token health per scope, computed at scrape time from the provider's state."""

    def __init__(self, statuses: Callable[[], Iterable[TokenStatus]], kind: str) -> None:
        self._statuses = statuses
        self._kind = kind
        #: scope -> time.time() of the last successful refresh (set by Metrics.refreshed).
        self.last_success: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        expires = GaugeMetricFamily(
            "foundry_proxy_token_expires_in_seconds",
            "Seconds until the held token for a scope stops being used (0 when none is held)",
            labels=["scope"],
        )
        since = GaugeMetricFamily(
            "foundry_proxy_token_seconds_since_last_refresh",
            "Seconds since the last successful token refresh for a scope",
            labels=["scope"],
        )
        failing = GaugeMetricFamily(
            "foundry_proxy_token_refresh_failing",
            "1 while the last token refresh failed (any scope), else 0",
        )
        error = InfoMetricFamily(
            "foundry_proxy_token_last_error",
            "The error code of the last failed refresh (AADSTS code or proxy code)",
        )
        now = time.time()
        last_error = ""
        for status in self._statuses():
            expires.add_metric([status.scope], max(0.0, status.expires_in or 0.0))
            if status.scope in self.last_success:
                since.add_metric([status.scope], now - self.last_success[status.scope])
            if status.error is not None:
                last_error = status.error.code or type(status.error).__name__
        failing.add_metric([], 1.0 if last_error else 0.0)
        error.add_metric([], {"code": last_error, "credential": self._kind})
        yield from (expires, since, failing, error)


#: A backend's state as /metrics shows it (backend_health.Health.label).
BACKEND_STATES = ("closed", "cooling_down", "open", "half_open")


class BackendCollector(Collector):
    """Requests, failovers and state per backend (docs/backends.md), read at scrape time from
    the pool's counters. ``backends`` yields (name, requests, failovers, state); the names are
    the configured ones, so the labels are bounded by the settings."""

    def __init__(self, backends: Callable[[], Iterable[tuple[str, int, int, str]]]) -> None:
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "foundry_proxy_backend_requests",
            "Requests sent to each backend (each attempt of a failover counted)",
            labels=["backend"],
        )
        failovers = CounterMetricFamily(
            "foundry_proxy_backend_failovers",
            "Requests that left a backend for another after its 429, 5xx or failure",
            labels=["backend"],
        )
        state = GaugeMetricFamily(
            "foundry_proxy_backend_state",
            "1 for each backend's state: closed, cooling_down, open or half_open",
            labels=["backend", "state"],
        )
        for name, sent, moved, now in self._backends():
            requests.add_metric([name], sent)
            failovers.add_metric([name], moved)
            for label in BACKEND_STATES:
                state.add_metric([name, label], 1.0 if label == now else 0.0)
        yield from (requests, failovers, state)


class Metrics:
    content_type = CONTENT_TYPE

    def __init__(
        self,
        statuses: Callable[[], Iterable[TokenStatus]],
        kind: str,
        max_models: int = DEFAULT_MAX_MODELS,
    ) -> None:
        # auto_describe off: the token collector reads the provider, which may not exist yet.
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "foundry_proxy_requests",
            "Requests answered, by route family, method, status class and streaming",
            ["route", "method", "status", "streamed"],
            registry=r,
        )
        self.duration = Histogram(
            "foundry_proxy_request_duration_seconds",
            "Time from request to the end of the answer",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "foundry_proxy_time_to_first_byte_seconds",
            "Time from request to the first byte of the answer's headers",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "foundry_proxy_requests_in_flight", "Requests being handled", registry=r
        )
        self.streams = Gauge(
            "foundry_proxy_open_streams", "Server-sent-event answers being relayed", registry=r
        )
        self.upstream_errors = Counter(
            "foundry_proxy_upstream_errors",
            "Upstream failures, by the proxy's error code (upstream_timeout, ...)",
            ["kind"],
            registry=r,
        )
        self.bytes_in = Counter(
            "foundry_proxy_request_bytes", "Request body bytes received", registry=r
        )
        self.bytes_out = Counter(
            "foundry_proxy_response_bytes", "Response body bytes sent", registry=r
        )
        self.refreshes = Counter(
            "foundry_proxy_token_refreshes",
            "Token refreshes, by outcome and credential kind",
            ["outcome", "credential"],
            registry=r,
        )
        self.model_tokens = Counter(
            "foundry_proxy_model_tokens",
            "Model tokens used, from the answers' usage, by model and kind",
            ["model", "kind"],
            registry=r,
        )
        self.ratelimit = Gauge(
            "foundry_proxy_upstream_ratelimit_remaining",
            "The upstream's x-ratelimit-remaining-* headers, by deployment or model",
            ["deployment", "kind"],
            registry=r,
        )
        self.folded = Counter(
            "foundry_proxy_metric_labels_folded",
            f'Answers counted under model="{OTHER}": their model or deployment was not answered '
            "successfully yet, or FOUNDRY_PROXY_METRICS_MAX_MODELS others were first",
            registry=r,
        )
        self._kind = kind
        self._max_models = max_models
        self._labelled: set[str] = set()  # models and deployments with labels of their own
        self._error_kinds: set[str] = set()
        # Children of labelled metrics, looked up once (labels() hashes and locks each call).
        self._children: dict[tuple[str, str, int, bool], tuple[Any, Any, Any]] = {}
        self._models: dict[str, tuple[Any, ...]] = {}
        self._caches: dict[str, tuple[Any, ...]] = {}
        self._limits: dict[tuple[str, str], Any] = {}
        self.tokens = TokenCollector(statuses, kind)
        r.register(self.tokens)

    def refreshed(self, scope: str, ok: bool) -> None:
        self.refreshes.labels("success" if ok else "failure", self._kind).inc()
        if ok:
            self.tokens.last_success[scope] = time.time()

    def observe(self, x: Exchange) -> None:
        ended = x.ended if x.ended is not None else time.perf_counter()
        method = x.method if x.method in _METHODS else OTHER
        key = (x.route, method, x.status // 100, x.streamed)
        children = self._children.get(key)
        if children is None:
            # labels() hashes and locks on every call; the combinations are few, so the
            # children are looked up once and kept.
            status = f"{x.status // 100}xx" if x.status else "none"
            children = self._children[key] = (
                self.requests.labels(x.route, method, status, str(x.streamed).lower()),
                self.duration.labels(x.route),
                self.ttfb.labels(x.route),
            )
        requests, duration, ttfb = children
        requests.inc()
        duration.observe(ended - x.started)
        if x.first_byte is not None:
            ttfb.observe(x.first_byte - x.started)
        if x.bytes_in:
            self.bytes_in.inc(x.bytes_in)
        if x.bytes_out:
            self.bytes_out.inc(x.bytes_out)
        if x.upstream_error:
            self.upstream_errors.labels(self._error_kind(x.upstream_error)).inc()
        model = self._model_label(x)
        if x.usage is not None:
            counters = self._models.get(model)
            if counters is None:
                counters = self._models[model] = tuple(
                    self.model_tokens.labels(model, kind)
                    for kind in ("prompt", "completion", "total")
                )
            counters[0].inc(x.usage.prompt)
            counters[1].inc(x.usage.completion)
            counters[2].inc(x.usage.total)
            if x.usage.cache_read or x.usage.cache_creation:
                self._cache_tokens(model, x.usage.cache_read, x.usage.cache_creation)
        for kind, value in (x.ratelimit or {}).items():
            try:
                number = float(value)
            except ValueError:
                continue
            gauge = self._limits.get((model, kind))
            if gauge is None:
                gauge = self._limits[(model, kind)] = self.ratelimit.labels(model, kind)
            gauge.set(number)

    def _model_label(self, x: Exchange) -> str:
        model = x.model
        if not model:
            return "unknown"
        if model in self._labelled:
            return model
        if 200 <= x.status < 300 and len(self._labelled) < self._max_models:
            self._labelled.add(model)
            return model
        self.folded.inc()
        return OTHER

    def _error_kind(self, kind: str) -> str:
        if kind in self._error_kinds:
            return kind
        if len(self._error_kinds) < _MAX_ERROR_KINDS:
            self._error_kinds.add(kind)
            return kind
        return OTHER

    def _cache_tokens(self, model: str, read: int, creation: int) -> None:
        """Claude's prompt-cache reads and writes (kinds cache_read, cache_creation), part of
        its prompt count; series made only for models that report them."""
        counters = self._caches.get(model)
        if counters is None:
            counters = self._caches[model] = tuple(
                self.model_tokens.labels(model, kind) for kind in ("cache_read", "cache_creation")
            )
        counters[0].inc(read)
        counters[1].inc(creation)

    def watch(
        self,
        in_flight: Callable[[], int],
        budget: BodyBudget,
        backends: Callable[[], Iterable[tuple[str, int, int, str]]],
    ) -> None:
        """Series read from the app's state when scraped: requests in flight (the forwarder's
        plain counter), the request-body budget, and each backend (BackendCollector)."""
        self.in_flight.set_function(in_flight)
        self.registry.register(BudgetCollector(budget))
        self.registry.register(BackendCollector(backends))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BudgetCollector(Collector):
    """The budget's use and its refusals, read when /metrics is scraped."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        budget = self._budget
        yield GaugeMetricFamily(
            "foundry_proxy_request_body_buffered_bytes",
            "Request-body bytes held in memory beyond each request's free part "
            "(FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES)",
            value=budget.used,
        )
        yield CounterMetricFamily(
            "foundry_proxy_request_body_budget_refusals",
            "Requests answered 503 because the request-body budget was spent",
            value=budget.refused,
        )
