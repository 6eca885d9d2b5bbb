"""A fake Entra ID v2 token endpoint with a call journal and fault knobs.

It validates tenant, client id, secret and scope the way Entra does, answering with the real
AADSTS codes and error body shape (azure-protocols.md section 1).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.tokens import TokenLedger


@dataclass
class TokenCall:
    at: float  # time.monotonic()
    tenant: str
    client_id: str
    scope: str
    secret_ok: bool
    status: int = 0


@dataclass
class Step:
    """One scripted answer, used instead of the normal behaviour for one call."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


def entra_error(status: int, error: str, code: int, text: str) -> Step:
    trace, corr = uuid.uuid4(), uuid.uuid4()
    description = (
        f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\n"
        "Timestamp: 2026-11-26 00:00:00Z"
    )
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": "2026-11-26 00:00:00Z",
        "trace_id": str(trace),
        "correlation_id": str(corr),
    }
    return Step(status, body)


class FakeEntra:
    def __init__(self, ledger: TokenLedger, *, tenant: str, client_id: str, secret: str) -> None:
        self.ledger = ledger
        self.tenant = tenant
        self.client_id = client_id
        self.secret = secret
        self.calls: list[TokenCall] = []
        self.expires_in: float = 3600
        self.refresh_in: float | None = None
        self.delay: float = 0.0
        self.script: deque[Step] = deque()
        #: While set, every call gets this answer (an outage or a lasting misconfiguration).
        self.outage: Step | None = None
        self.app = Starlette(
            routes=[Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"])]
        )

    def calls_since(self, t: float) -> list[TokenCall]:
        return [c for c in self.calls if c.at >= t]

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        call = TokenCall(
            time.monotonic(),
            request.path_params["tenant"],
            form.get("client_id", ""),
            form.get("scope", ""),
            form.get("client_secret") == self.secret,
        )
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        step = self.script.popleft() if self.script else self.outage or self._judge(call, form)
        call.status = step.status
        if step.raw is not None:
            return Response(step.raw, step.status, step.headers, media_type="text/html")
        return JSONResponse(step.body, step.status, step.headers)

    def _judge(self, call: TokenCall, form: dict[str, str]) -> Step:
        if call.tenant != self.tenant:
            return entra_error(400, "invalid_request", 90002, f"Tenant '{call.tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return entra_error(400, "unsupported_grant_type", 70003, "Unsupported grant type.")
        if call.client_id != self.client_id:
            return entra_error(
                400, "unauthorized_client", 700016, "Application was not found in the directory."
            )
        if "client_secret" not in form:
            return entra_error(
                401, "invalid_client", 7000218, "The request body must contain client_secret."
            )
        if not call.secret_ok:
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID.",
            )
        if not call.scope.endswith("/.default"):
            return entra_error(400, "invalid_scope", 70011, "The provided scope is not valid.")
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": int(self.expires_in) if self.expires_in >= 1 else self.expires_in,
            "ext_expires_in": int(self.expires_in),
            "access_token": self.ledger.issue(call.scope, self.expires_in),
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return Step(200, body)
