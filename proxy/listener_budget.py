"""The request-body budget (budget.py) as a part of listener.py's GuardedHttpProtocol: each
request's body bytes are counted as the parser hands them over, and a request that finds the
budget spent is answered 503 and its connection closed (docs/security.md, "Resource bounds").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from proxy.budget import HELD_KEY, BodyBudget, HeldBody
from proxy.listener_limits import ListenerLimits


class RequestCycle(Protocol):
    """What the budget needs of uvicorn's request cycle (only the process runners import
    uvicorn: docs/architecture.md)."""

    response_complete: bool
    scope: Any


class HeldBodies:
    """The bodies of one connection's requests held against the budget: the one being parsed,
    and those of requests not answered yet (pipelined); GuardedHttpProtocol sets the state."""

    # The protocol's (uvicorn's HttpToolsProtocol and GuardedHttpProtocol's).
    limits: ListenerLimits
    cycle: Any  # the request being parsed (uvicorn's RequestResponseCycle)
    _refuse: Callable[..., None]  # listener_deadlines.py's
    # This part's own.
    _budget: BodyBudget | None
    _held_body: HeldBody | None
    _held_bodies: list[tuple[RequestCycle, HeldBody]]

    def _hold_body(self, cycle: RequestCycle, has_body: bool) -> None:
        """A new request's head is parsed: its body, if any, is counted from here."""
        self._held_body = None
        if self._budget is not None and has_body:
            held = self._held_body = HeldBody(self._budget)
            cycle.scope[HELD_KEY] = held
            self._held_bodies.append((cycle, held))

    def _count_body(self, size: int) -> None:
        """Body bytes the parser hands over (a request already answered keeps none)."""
        held = self._held_body
        if held is not None and not self.cycle.response_complete and not held.add(size):
            self._over_budget()

    def _over_budget(self) -> None:
        budget = self._budget
        assert budget is not None
        self.limits.notices.warn(
            "body-budget",
            "request bodies held in memory reached %d bytes beyond their free parts: requests "
            "needing more are answered 503 (FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES=%d)",
            budget.used,
            budget.limit,
        )
        self._refuse(
            503,
            "Service Unavailable",
            "body_buffers_full",
            f"foundry-proxy holds its limit of {budget.limit} bytes of request bodies "
            "(FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES); retry shortly",
            "retry-after: 1\r\n",
        )

    def _release_answered(self) -> None:
        """Give back the budget of the bodies whose requests are answered (the forwarder gives
        its own back as it ends; the app may not read a body at all)."""
        waiting = []
        for cycle, held in self._held_bodies:
            if cycle.response_complete:
                held.close()
            else:
                waiting.append((cycle, held))
        self._held_bodies = waiting

    def _release_all(self) -> None:
        """The connection is lost: every body it held is given back."""
        for _, held in self._held_bodies:
            held.close()
        self._held_bodies = []
