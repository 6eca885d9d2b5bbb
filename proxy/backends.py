"""The backend pool: which Foundry resource a request goes to, and the next one when it cannot.

The highest priority first (the lowest number); among equal priorities, a weighted random
order, so load is shared by weight. A backend cooling down or with an open circuit is passed
over (backend_health.py). The pool also maps deployment names per backend: the client's name in
``/openai/deployments/{name}/...`` and in the ``model`` field of a buffered JSON body on the
``/v1`` routes, to the name that resource gives its deployment (docs/backends.md).

Owned by the app (one per process, no module state); the clock and the random source are
given, so tests drive both.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from proxy.backend_config import BackendSpec, PoolSpec
from proxy.backend_health import Clock, Health
from proxy.replies import ErrorReply
from proxy.rewrite import map_target

_DEPLOYMENTS = "/openai/deployments/"
_V1 = "/openai/v1/"


@dataclass(slots=True)
class Backend:
    """A backend with its health and its counters (read by /metrics at scrape time)."""

    spec: BackendSpec
    health: Health
    deployments: dict[str, str] = field(default_factory=dict)
    requests: int = 0  # requests sent to it (each attempt of a failover counts)
    failovers: int = 0  # requests that left it for another backend (or had none left)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def origin(self) -> str:
        return self.spec.origin

    def path_for(self, path_qs: str) -> str:
        """``path_qs`` (an upstream path and query) with the deployment name this backend
        gives the client's; the result is validated again like any path (rewrite.py), so a
        mapping can never make a path the proxy would refuse. Raises BadTarget."""
        if not self.deployments or not path_qs.startswith(_DEPLOYMENTS):
            return path_qs
        name, slash, rest = path_qs[len(_DEPLOYMENTS) :].partition("/")
        mapped = self.deployments.get(name)
        if mapped is None or not slash:
            return path_qs
        path, _, query = f"{_DEPLOYMENTS}{mapped}/{rest}".partition("?")
        return map_target(path.encode("ascii"), query.encode("ascii")).path_qs

    def body_for(self, path: str, body: bytes) -> bytes:
        """A buffered JSON body of the /v1 routes with its ``model`` mapped; any other body,
        or one naming no mapped model, unchanged (the same bytes)."""
        if not self.deployments or not body or not path.startswith(_V1):
            return body
        if b'"model"' not in body:
            return body
        try:
            document = json.loads(body)
        except ValueError:
            return body
        if not isinstance(document, dict):
            return body
        model = document.get("model")
        mapped = self.deployments.get(model) if isinstance(model, str) else None
        if mapped is None:
            return body
        document["model"] = mapped
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class Pool:
    """The backends in priority order, and the order one request tries them in."""

    def __init__(
        self, spec: PoolSpec, clock: Clock = time.monotonic, rng: random.Random | None = None
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random(secrets.randbits(64))  # noqa: S311 - load sharing
        self.backends = tuple(
            Backend(
                s,
                Health(clock, spec.breaker_failures, spec.breaker_seconds),
                dict(s.deployments),
            )
            for s in spec.backends
        )
        groups: dict[int, list[Backend]] = {}
        for backend in self.backends:
            groups.setdefault(backend.spec.priority, []).append(backend)
        self._groups = tuple(tuple(groups[p]) for p in sorted(groups))
        self.single = len(self.backends) == 1

    def attempts(self) -> Iterator[Backend]:
        """The backends one request may try, best first, each claimed as it is reached (a
        half-open circuit's probe goes to one request only). The caller reports each one's
        outcome on its ``health`` (succeeded, throttled, failed or abandoned)."""
        if self.single:
            # One backend is today's single upstream: there is nowhere else to go, so nothing
            # is held back (its state is still tracked, for /metrics).
            yield self.backends[0]
            return
        for group in self._groups:
            for backend in self._shuffled(group) if len(group) > 1 else group:
                if backend.health.take():
                    yield backend

    def _shuffled(self, group: tuple[Backend, ...]) -> list[Backend]:
        """A weighted random order (Efraimidis and Spirakis, 2006): the first is each backend
        with probability weight / total, and so on for the rest."""
        rng = self._rng
        keyed = [
            (math.log(rng.random() or 1e-300) / b.spec.weight, index)
            for index, b in enumerate(group)
        ]
        keyed.sort(reverse=True)
        return [group[index] for _, index in keyed]

    def can_serve(self) -> bool:
        """Whether some backend would take a request now (one backend always does)."""
        return self.single or any(b.health.available() for b in self.backends)

    def soonest(self) -> float:
        """Seconds until the first backend can take a request again."""
        return min(b.health.ready_in() for b in self.backends)


def all_cooling_down(seconds: float) -> ErrorReply:
    """The 429 answered when no backend can take a request, in the OpenAI error shape, with
    the smallest wait as Retry-After (whole seconds, at least 1). Names no origin."""
    wait = max(1, math.ceil(seconds))
    message = (
        f"every Foundry resource behind foundry-proxy is rate limited or failing; retry in {wait} s"
    )
    return ErrorReply(
        429, "all_backends_cooling_down", message, ((b"retry-after", str(wait).encode()),)
    )
