"""The emulated Entra token endpoint with test knobs: a call journal, scripted answers, outages."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from proxy.emulator.entra import Answer, EmulatedEntra, entra_error
from tests.fakes.tokens import RecordingIssuer

__all__ = ["Answer", "FakeEntra", "TokenCall", "echoing_refusal", "entra_error"]


@dataclass
class TokenCall:
    at: float  # time.monotonic()
    tenant: str
    client_id: str
    scope: str
    secret_ok: bool
    status: int = 0
    #: The JOSE header of a client assertion, when one was sent (what a certificate named).
    assertion_header: dict[str, Any] | None = None


class FakeEntra(EmulatedEntra):
    def __init__(
        self, issuer: RecordingIssuer, *, tenant: str, client_id: str, secret: str
    ) -> None:
        super().__init__(issuer, tenant=tenant, client_id=client_id, secret=secret)
        self.calls: list[TokenCall] = []
        self.delay = 0.0
        #: Answers used, one per call, before the normal behaviour.
        self.script: deque[Answer] = deque()
        #: While set, every call gets this answer (an outage or a lasting misconfiguration).
        self.outage: Answer | None = None
        #: While set, every call is refused by echoing_refusal with this text added.
        self.echo: str | None = None

    def calls_since(self, t: float) -> list[TokenCall]:
        return [c for c in self.calls if c.at >= t]

    async def answer(self, tenant: str, form: dict[str, str], *, token_url: str = "") -> Answer:
        call = TokenCall(
            time.monotonic(),
            tenant,
            form.get("client_id", ""),
            form.get("scope", ""),
            form.get("client_secret") == self.secret,
            assertion_header=_header(form.get("client_assertion")),
        )
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            answer = self.script.popleft()
        elif self.outage is not None:
            answer = self.outage
        elif self.echo is not None:
            answer = echoing_refusal(form, self.echo)
        else:
            answer = await super().answer(tenant, form, token_url=token_url)
        call.status = answer.status
        return answer


def echoing_refusal(form: dict[str, str], extra: str) -> Answer:
    """A 401 from something that is not Entra but answers in its shape, repeating what the client
    proved itself with (secret or assertion) and ``extra`` in every text field: on the first
    line of the description (the part a client keeps), in ``error`` (which is the only code when
    ``error_codes`` is missing, as here) and in the ids."""
    proof = form.get("client_secret") or form.get("client_assertion") or ""
    echoed = f"{proof} {extra}"
    return Answer(
        401,
        {
            "error": f"invalid_client {echoed}",
            "error_description": f"Invalid client secret provided: {echoed}\r\nTrace ID: {echoed}",
            "trace_id": echoed,
            "correlation_id": echoed,
        },
    )


def _header(assertion: str | None) -> dict[str, Any] | None:
    if not assertion or assertion.count(".") != 2:
        return None
    head = assertion.split(".")[0]
    try:
        value = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
