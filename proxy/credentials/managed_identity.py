"""Managed identity: tokens from the Azure platform's local identity endpoint, no secret held.

Two endpoints serve the same purpose (docs/azure.md, section 2):

- App Service, Functions and Container Apps run a local endpoint guarded by a per-process
  header value (App Service managed identity docs, api-version 2019-08-01);
- VMs, scale sets and AKS nodes answer on IMDS at 169.254.169.254 (entra-docs
  how-to-use-vm-token).

Both are loopback or link-local services, so the ``http`` client given must never go through an
HTTP proxy: a proxy cannot reach them and would see the token. The caller builds that client
and passes the endpoint and header values from the settings; nothing here reads the process
environment, and ``aclose`` leaves the client alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx2
from pydantic import SecretStr

from proxy.credentials.base import AccessToken, number, parse_token_response
from proxy.credentials.claims import scope_resource
from proxy.credentials.codes import TokenErrorCode
from proxy.credentials.entra_errors import parse_retry_after
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from proxy.redaction import safe_message

log = logging.getLogger("foundry_proxy.token")

IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_PATH = "/metadata/identity/oauth2/token"
IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"

# A Retry-After longer than this is not slept through inside one get_token: the error carries it
# and the token provider schedules the next attempt instead.
_LONGEST_WAIT = 60.0

_UNASSIGNED_HINT = (
    "assign a managed identity to this resource, or fix the user-assigned identity named by "
    "AZURE_CLIENT_ID, FOUNDRY_PROXY_MANAGED_IDENTITY_OBJECT_ID or "
    "FOUNDRY_PROXY_MANAGED_IDENTITY_RESOURCE_ID: it must exist and be assigned here"
)


@dataclass(frozen=True, slots=True)
class IdentitySelector:
    """Which managed identity to ask for: the system-assigned one, or one user-assigned identity
    named by exactly one of its ids. The ids are not secret."""

    client_id: str | None = None
    object_id: str | None = None
    resource_id: str | None = None

    def __post_init__(self) -> None:
        given = [name for name, value in self._ids() if value]
        if len(given) > 1:
            # Both endpoints reject a request naming two ids; say so before asking.
            raise ValueError(
                f"a user-assigned identity is chosen by one id, got {' and '.join(given)}"
            )

    def _ids(self) -> tuple[tuple[str, str | None], ...]:
        return (
            ("client id", self.client_id),
            ("object id", self.object_id),
            ("resource id", self.resource_id),
        )

    def describe(self) -> str:
        for name, value in self._ids():
            if value:
                return f"user-assigned ({name} {value})"
        return "system-assigned"

    def query(self, resource_id_param: str) -> dict[str, str]:
        """The query parameter naming the identity; the resource-id name differs per endpoint
        (IMDS ``msi_res_id``, App Service ``mi_res_id``)."""
        if self.client_id:
            return {"client_id": self.client_id}
        if self.object_id:
            return {"object_id": self.object_id}
        if self.resource_id:
            return {resource_id_param: self.resource_id}
        return {}


def _json(response: httpx2.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _token(body: object, now: float) -> AccessToken:
    """IMDS sends expires_in and expires_on, App Service only expires_on (epoch seconds).

    expires_in is preferred: it is immune to skew between this clock and the platform's.
    """
    if isinstance(body, Mapping) and number(body.get("expires_in")) is None:
        expires_on = number(body.get("expires_on"))
        if expires_on is None:
            raise CredentialUnavailable(
                "the managed identity endpoint's answer has neither expires_in nor expires_on",
                code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
            )
        lifetime = expires_on - now
        if lifetime <= 0:
            raise CredentialUnavailable(
                "the managed identity endpoint's token has already expired by this machine's "
                "clock (expires_on is in the past): check the clock",
                code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE,
            )
        # parse_token_response bounds the lifetime from above and checks the token.
        body = {**body, "expires_in": lifetime}
    return parse_token_response(body)


def _detail(body: object, response: httpx2.Response, secrets: Sequence[str] = ()) -> str:
    """What the endpoint said, one line fit to show: IMDS answers ``error_description``, App
    Service ``message`` (sometimes nested under ``error``)."""
    if isinstance(body, Mapping):
        nested = body.get("error")
        for value in (
            body.get("error_description"),
            body.get("message"),
            nested.get("message") if isinstance(nested, Mapping) else nested,
        ):
            if isinstance(value, str) and value.strip():
                return safe_message(value, secrets)
    return safe_message(response.text, secrets) if body is None else ""


def _with_detail(message: str, detail: str) -> str:
    return f"{message} (the endpoint said: {detail})" if detail else message


def _transient(status: int) -> bool:
    return status in (404, 408, 429) or status >= 500


class AppServiceIdentity:
    """Managed identity on App Service, Functions and Container Apps.

    ``GET {endpoint}?api-version=2019-08-01&resource=...`` with the ``X-IDENTITY-HEADER`` the
    platform gives the process; the header value is a secret and never appears in an error.
    ``http`` must not use an HTTP proxy.
    """

    kind = "managed identity (App Service)"

    def __init__(
        self,
        endpoint: str,
        header: SecretStr,
        selector: IdentitySelector,
        http: httpx2.AsyncClient,
    ) -> None:
        self.endpoint = endpoint
        self._header = header
        self._selector = selector
        self._http = http

    async def get_token(self, scope: str) -> AccessToken:
        params = {
            "api-version": APP_SERVICE_API_VERSION,
            "resource": scope_resource(scope),  # v1 protocol: a resource, not a scope
            **self._selector.query("mi_res_id"),
        }
        secret = self._header.get_secret_value()
        try:
            response = await self._http.get(
                self.endpoint,
                params=params,
                headers={"X-IDENTITY-HEADER": secret, "Accept": "application/json"},
            )
        except httpx2.RequestError as exc:
            raise CredentialUnavailable(
                f"the managed identity endpoint {self.endpoint} is not reachable "
                f"({type(exc).__name__})",
                code=TokenErrorCode.IDENTITY_ENDPOINT_UNREACHABLE,
            ) from None
        body = _json(response)
        if response.status_code == 200:
            return _token(body, time.time())
        # The endpoint should never echo the header, but a proxy or a broken gateway might.
        raise self._error(response, body, secret)

    def _error(self, response: httpx2.Response, body: object, secret: str) -> CredentialError:
        status = response.status_code
        detail = _detail(body, response, (secret,))
        if status == 400:
            return AuthenticationFailed(
                _with_detail(
                    f"the managed identity endpoint has no {self._selector.describe()} identity "
                    "for this app (none is assigned, or the user-assigned identity named is not "
                    "assigned here)",
                    detail,
                ),
                code=TokenErrorCode.IDENTITY_NOT_ASSIGNED,
                hint=_UNASSIGNED_HINT,
            )
        if status in (401, 403):
            return AuthenticationFailed(
                _with_detail(
                    f"the managed identity endpoint refused the identity header (HTTP {status})",
                    detail,
                ),
                code=TokenErrorCode.IDENTITY_HEADER_REJECTED,
                hint="IDENTITY_HEADER must be the value the platform set for this process; it "
                "changes when the app restarts",
            )
        message = _with_detail(f"the managed identity endpoint answered HTTP {status}", detail)
        if _transient(status) or not 400 <= status < 500:
            return CredentialUnavailable(
                message,
                code=TokenErrorCode.IDENTITY_ENDPOINT_UNAVAILABLE,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return AuthenticationFailed(
            message, code=TokenErrorCode.IDENTITY_ENDPOINT_HTTP.with_status(status)
        )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""


class ImdsIdentity:
    """Managed identity on VMs, scale sets and AKS nodes, from the Instance Metadata Service.

    Retries inside one ``get_token`` as entra-docs how-to-use-vm-token advises: 404, 429 and 5xx
    after each of ``retry_delays`` (a longer Retry-After wins); 410, IMDS updating itself, until
    ``gone_retry_for`` seconds have passed since the first attempt (the docs promise it is back
    within 70 s). Other 4xx are not retried. ``http`` must not use an HTTP proxy.
    """

    kind = "managed identity (IMDS)"

    def __init__(
        self,
        selector: IdentitySelector,
        http: httpx2.AsyncClient,
        *,
        endpoint: str = IMDS_ENDPOINT,
        retry_delays: Sequence[float] = (2, 6, 14, 30),
        gone_retry_for: float = 70.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._selector = selector
        self._http = http
        self._delays = tuple(retry_delays)
        self._gone_retry_for = gone_retry_for

    async def get_token(self, scope: str) -> AccessToken:
        params = {
            "api-version": IMDS_API_VERSION,
            "resource": scope_resource(scope),  # v1 protocol: a resource, not a scope
            **self._selector.query("msi_res_id"),
        }
        started = time.monotonic()
        attempt = 0
        while True:
            response = await self._send(params)
            if response.status_code == 200:
                return _token(_json(response), time.time())
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            delay = self._delay(response.status_code, attempt, started)
            if delay is None or (retry_after or 0) > _LONGEST_WAIT:
                raise self._error(response, attempt + 1, retry_after)
            delay = max(delay, retry_after or 0)
            log.info("IMDS answered HTTP %d; retrying in %.1f s", response.status_code, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _send(self, params: Mapping[str, str]) -> httpx2.Response:
        try:
            return await self._http.get(
                self.endpoint + IMDS_PATH, params=params, headers={"Metadata": "true"}
            )
        except httpx2.RequestError as exc:
            raise CredentialUnavailable(
                f"IMDS at {self.endpoint} is not reachable ({type(exc).__name__}): this is not "
                "an Azure VM or node, or the pod cannot reach 169.254.169.254",
                code=TokenErrorCode.IMDS_UNREACHABLE,
                hint="on AKS, allow egress to 169.254.169.254/32 in the network policies; "
                "elsewhere, choose another credential",
            ) from None

    def _delay(self, status: int, attempt: int, started: float) -> float | None:
        """Seconds to wait before the next attempt, or None to stop."""
        if not self._delays:
            return None
        if status == 410:
            if time.monotonic() - started >= self._gone_retry_for:
                return None
            return self._delays[min(attempt, len(self._delays) - 1)]
        if status in (404, 429) or status >= 500:
            return self._delays[attempt] if attempt < len(self._delays) else None
        return None

    def _error(
        self, response: httpx2.Response, attempts: int, retry_after: float | None
    ) -> CredentialError:
        status = response.status_code
        body = _json(response)
        detail = _detail(body, response)
        if status == 400:
            return AuthenticationFailed(
                _with_detail(
                    "no managed identity is assigned to this VM/node (or the user-assigned "
                    f"identity named does not exist); asked for {self._selector.describe()}",
                    detail,
                ),
                code=TokenErrorCode.IDENTITY_NOT_ASSIGNED,
                hint=_UNASSIGNED_HINT + "; on AKS, assign it to the node pool (VM scale set)",
            )
        if status == 403 and "unreachable" in response.text.lower():
            # Docker Desktop's network answers 403 "...unreachable" for 169.254.169.254
            # (azure-identity treats it as unavailable too).
            return CredentialUnavailable(
                "IMDS is not reachable from here (HTTP 403, network unreachable): this is not "
                "an Azure VM or node",
                code=TokenErrorCode.IMDS_UNREACHABLE,
            )
        if status == 410 or _transient(status):
            return CredentialUnavailable(
                _with_detail(f"IMDS answered HTTP {status} after {attempts} attempts", detail),
                code=TokenErrorCode.IMDS_UNAVAILABLE,
                retry_after=retry_after,
            )
        if 400 <= status < 500:
            return AuthenticationFailed(
                _with_detail(f"IMDS refused the token request (HTTP {status})", detail),
                code=TokenErrorCode.IMDS_HTTP.with_status(status),
            )
        return CredentialUnavailable(
            _with_detail(f"IMDS answered HTTP {status}", detail),
            code=TokenErrorCode.IMDS_UNAVAILABLE,
        )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""


async def imds_reachable(
    http: httpx2.AsyncClient,
    endpoint: str = IMDS_ENDPOINT,
    # The probe's whole point is its short bound, so it is part of the call, not the caller's.
    timeout: float = 1.0,  # noqa: ASYNC109
) -> bool:
    """Whether Azure IMDS answers: one short probe for auto-detection.

    The request names no resource, so IMDS answers 400 with a JSON error and mints nothing.
    Only that shape counts: other clouds' metadata services also listen on 169.254.169.254
    (AWS, GCP), and Docker Desktop answers 403 "unreachable" for it; taking those for IMDS
    would lock auto-detection onto a managed identity that cannot work. ``http`` must not use
    an HTTP proxy.
    """
    try:
        async with asyncio.timeout(timeout):
            response = await http.get(
                endpoint.rstrip("/") + IMDS_PATH,
                params={"api-version": IMDS_API_VERSION},
                headers={"Metadata": "true"},
                timeout=timeout,
            )
    except (httpx2.RequestError, TimeoutError):
        return False
    if response.status_code not in (200, 400):
        return False
    body = _json(response)
    return isinstance(body, dict) and ("error" in body or "access_token" in body)
