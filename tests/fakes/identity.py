"""Fake managed identity endpoints: IMDS and the App Service family's local identity endpoint.

Both check what the real ones check (the guard header, api-version, resource, the user-assigned
selector) and answer with the real body shapes, numbers as JSON strings included
(docs/azure.md, section 2). Each has a call journal and a script of answers used first.
Serve ``.app`` with tests.fakes.serve.ServerThread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.emulator.entra import KNOWN_RESOURCES, Answer
from tests.fakes.tokens import RecordingIssuer
from tests.support.identities import TENANT

__all__ = ["Answer", "FakeAppServiceIdentity", "FakeImds", "IdentityCall"]

#: The client id of the system-assigned identity (its tokens' appid).
SYSTEM_CLIENT_ID = "5d1c7f2e-0a3b-4c8d-9e6f-112233445566"


@dataclass
class IdentityCall:
    at: float  # time.monotonic()
    params: dict[str, str]
    headers: dict[str, str]  # lower-case names
    status: int = 0


def _seconds(value: float) -> str:
    # The real services send whole seconds; fractions keep sub-second test tokens exact.
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


@dataclass
class _Knobs:
    issuer: RecordingIssuer
    tenant: str = TENANT
    system_assigned: bool = True
    #: User-assigned identities attached here; any of their ids (client, object or resource id)
    #: selects one, and a token for it carries that value as its appid.
    assigned: set[str] = field(default_factory=set)
    token_lifetime: float = 3600.0
    delay: float = 0.0
    calls: list[IdentityCall] = field(default_factory=list)
    #: Answers used, one per call, before the normal behaviour.
    script: deque[Answer] = field(default_factory=deque)

    def calls_since(self, t: float) -> list[IdentityCall]:
        return [c for c in self.calls if c.at >= t]

    def _record(self, request: Request) -> IdentityCall:
        call = IdentityCall(
            time.monotonic(),
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
        )
        self.calls.append(call)
        return call

    async def _serve(self, request: Request) -> Response:
        call = self._record(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.script.popleft() if self.script else self.answer(call)
        call.status = answer.status
        if answer.raw is not None:
            return Response(
                answer.raw, answer.status, dict(answer.headers), media_type="text/plain"
            )
        return JSONResponse(answer.body, answer.status, dict(answer.headers))

    def answer(self, call: IdentityCall) -> Answer:
        raise NotImplementedError

    def _identity(self, call: IdentityCall, selectors: Iterable[str]) -> str | bool | None:
        """The client id to mint for; None when none matches; False when the request names
        more than one identity."""
        named = [call.params[s] for s in selectors if call.params.get(s)]
        if len(named) > 1:
            return False
        if not named:
            return SYSTEM_CLIENT_ID if self.system_assigned else None
        return named[0] if named[0] in self.assigned else None

    def _mint(self, client_id: str, resource: str) -> tuple[str, float]:
        token = self.issuer.issue(
            tenant=self.tenant,
            client_id=client_id,
            audience=resource,
            lifetime=self.token_lifetime,
        )
        return token, time.time() + self.token_lifetime


class FakeImds(_Knobs):
    """``GET /metadata/identity/oauth2/token`` as on an Azure VM or AKS node (entra-docs
    how-to-use-vm-token)."""

    path = "/metadata/identity/oauth2/token"

    def __init__(self, issuer: RecordingIssuer, **knobs: Any) -> None:
        super().__init__(issuer, **knobs)
        self.app = Starlette(routes=[Route(self.path, self._serve, methods=["GET"])])

    def answer(self, call: IdentityCall) -> Answer:
        def bad(text: str, error: str = "invalid_request") -> Answer:
            return Answer(400, {"error": error, "error_description": text})

        if call.headers.get("metadata") != "true":
            return bad("Required metadata header not specified")
        if "api-version" not in call.params:
            return bad("Required query variable 'api-version' is missing")
        if call.params["api-version"] != "2018-02-01":
            return bad(f"Api version {call.params['api-version']} is not supported")
        resource = call.params.get("resource", "")
        if not resource:
            return bad("Required query variable 'resource' is missing")
        client_id = self._identity(call, ("client_id", "object_id", "msi_res_id"))
        if client_id is False:
            return bad("Multiple identity selectors specified")
        if client_id is None:
            return bad("Identity not found")
        assert isinstance(client_id, str)
        if resource not in KNOWN_RESOURCES:
            return bad(
                f"AADSTS500011: The resource principal named {resource} was not found in the "
                "tenant.",
                "invalid_resource",
            )
        token, expires_on = self._mint(client_id, resource)
        now = time.time()
        return Answer(
            200,
            {
                "access_token": token,
                "refresh_token": "",
                "expires_in": _seconds(self.token_lifetime),
                "expires_on": _seconds(expires_on),
                "ext_expires_in": _seconds(self.token_lifetime),
                "not_before": str(int(now)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )


class FakeAppServiceIdentity(_Knobs):
    """``GET /msi/token`` as App Service, Functions and Container Apps serve it: guarded by
    ``X-IDENTITY-HEADER``, answering ``expires_on`` only (no ``expires_in``)."""

    path = "/msi/token"

    def __init__(self, issuer: RecordingIssuer, *, header: str, **knobs: Any) -> None:
        super().__init__(issuer, **knobs)
        #: The value the platform would put in IDENTITY_HEADER.
        self.header = header
        self.app = Starlette(routes=[Route(self.path, self._serve, methods=["GET"])])

    def answer(self, call: IdentityCall) -> Answer:
        def refuse(status: int, text: str) -> Answer:
            return Answer(
                status, {"statusCode": status, "message": text, "correlationId": str(uuid.uuid4())}
            )

        if call.headers.get("x-identity-header") != self.header:
            return refuse(401, "The identity header is missing or does not match.")
        if call.params.get("api-version") != "2019-08-01":
            return refuse(400, "The api-version is missing or not supported.")
        resource = call.params.get("resource", "")
        if not resource:
            return refuse(400, "The resource parameter is required.")
        client_id = self._identity(call, ("client_id", "object_id", "mi_res_id"))
        if not isinstance(client_id, str):
            return refuse(400, "Unable to load the proper Managed Identity.")
        if resource not in KNOWN_RESOURCES:
            return refuse(400, f"The resource principal named {resource} was not found.")
        token, expires_on = self._mint(client_id, resource)
        return Answer(
            200,
            {
                "access_token": token,
                "expires_on": _seconds(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )
