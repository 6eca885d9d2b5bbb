"""Emulated Entra ID v2 token endpoint (client credentials with a secret).

It checks tenant, client id, secret and scope in Entra's order and answers failures with the
real AADSTS codes and error body shape, so the proxy's error handling meets what it will meet
in production (azure-protocols.md section 1).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.emulator.tokens import TokenIssuer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Resources that exist in every tenant of the public cloud; others get AADSTS500011.
KNOWN_RESOURCES = frozenset(
    {
        "https://cognitiveservices.azure.com",
        "https://ai.azure.com",
        "https://ml.azure.com",
        "https://management.azure.com",
        "https://graph.microsoft.com",
    }
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    #: Sent as is instead of ``body`` (what a captive portal or broken gateway might send).
    raw: bytes | None = None


def entra_error(status: int, error: str, code: int, text: str) -> Answer:
    """An error answer shaped like Entra's (error, error_description, error_codes, ids)."""
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    # Entra puts the ids on their own lines after the message, CRLF-separated.
    description = (
        f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n"
        f"Timestamp: {stamp}"
    )
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": str(trace),
        "correlation_id": str(correlation),
    }
    return Answer(status, body)


class EmulatedEntra:
    """``POST /{tenant}/oauth2/v2.0/token``; ``app`` is the ASGI app to serve."""

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        tenant: str,
        client_id: str,
        secret: str,
        token_lifetime: float = 3600.0,
    ) -> None:
        self.issuer = issuer
        self.tenant = tenant
        self.client_id = client_id
        self.secret = secret
        self.token_lifetime = token_lifetime
        self.refresh_in: float | None = None
        #: The service-account token a federated credential accepts (workload identity).
        self.federated_assertion: str | None = None
        self.app = Starlette(
            routes=[Route("/{tenant}/oauth2/v2.0/token", self._endpoint, methods=["POST"])]
        )

    async def _endpoint(self, request: Request) -> Response:
        form = {
            k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
        }
        answer = await self.answer(request.path_params["tenant"], form)
        headers = dict(answer.headers) | {"x-ms-ests-server": "foundry-proxy-emulator"}
        if answer.raw is not None:
            return Response(answer.raw, answer.status, headers, media_type="text/html")
        return JSONResponse(answer.body, answer.status, headers)

    async def answer(self, tenant: str, form: dict[str, str]) -> Answer:
        """Judge one token request; subclasses may script other answers."""
        if tenant not in (self.tenant, "emulator.onmicrosoft.com"):
            return entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return entra_error(
                400, "unsupported_grant_type", 70003, "The grant type is not supported."
            )
        if form.get("client_id") != self.client_id:
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id', '')}' was not found in "
                f"the directory '{tenant}'.",
            )
        if "client_assertion" in form:
            if form.get("client_assertion_type") != JWT_BEARER:
                return entra_error(400, "invalid_request", 50027, "Invalid client_assertion_type.")
            if (
                self.federated_assertion is None
                or form["client_assertion"] != self.federated_assertion
            ):
                return entra_error(
                    400,
                    "invalid_client",
                    700213,
                    "No matching federated identity record found for presented assertion subject.",
                )
        elif "client_secret" not in form:
            return entra_error(
                401, "invalid_client", 7000218, "The request body must contain client_secret."
            )
        elif form["client_secret"] != self.secret:
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope.strip():
            return entra_error(
                400, "invalid_scope", 70011, f"The provided scope '{scope}' is not valid."
            )
        resource = scope.removesuffix("/.default")
        if resource not in KNOWN_RESOURCES:
            return entra_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant.",
            )
        token = self.issuer.issue(
            tenant=self.tenant,
            client_id=self.client_id,
            audience=resource,
            lifetime=self.token_lifetime,
        )
        lifetime = self.token_lifetime
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "ext_expires_in": int(lifetime),
            "access_token": token,
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return Answer(200, body)
