"""`foundry-proxy check`'s data-plane call: one authenticated GET to the upstream, and what its
answer (or its failure to come) means for the setup."""

from __future__ import annotations

import re
import socket
import ssl

import httpx2

from proxy.check_report import Step
from proxy.clouds import CLOUDS
from proxy.errors import cause_of
from proxy.settings import Settings
from proxy.upstream_refusals import Refusal, classify_401

ROLES_FIX = (
    "assign one of Cognitive Services OpenAI User, Cognitive Services User or Azure AI User to "
    "the app or identity on this resource (Access control (IAM) > Add role assignment); "
    "Cognitive Services Contributor is not enough: it has no data actions. New assignments "
    "can take a few minutes."
)
NETWORK_FIX = (
    "check that this machine can reach the host; behind a corporate proxy set HTTPS_PROXY and "
    "FOUNDRY_PROXY_TRUST_ENV=true"
)
TLS_FIX = (
    "a proxy or firewall is inspecting TLS: point SSL_CERT_FILE at your organisation's CA bundle "
    "(a PEM file)"
)


_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def shown(text: object, limit: int = 300) -> str:
    """Upstream text fit to print: any bearer token removed first, then shortened.

    An upstream or gateway may echo the request, Authorization header included.
    """
    return _BEARER.sub(r"\1[token]", str(text))[:limit]


def parsed_json(response: httpx2.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def error_code(response: httpx2.Response) -> tuple[str, str]:
    body = parsed_json(response)
    if body is None:
        return "", shown(response.text, 200)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code", "")), shown(error.get("message", ""))
        if "statusCode" in body:
            return "entra_token_rejected", shown(body.get("message", ""))
    return "", shown(body, 200)


def _data_plane_step(response: httpx2.Response, url: str, settings: Settings) -> Step:
    status = response.status_code
    code, message = error_code(response)
    details = {"url": url, "status": status, "code": code}
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return Step(
                "data plane",
                "fail",
                f"GET {url} -> 200, but not a models list",
                cause="something other than a Foundry / Azure OpenAI endpoint answered (a "
                "sign-in page of a corporate proxy, a different service)",
                fix="check FOUNDRY_PROXY_UPSTREAM; behind a proxy that intercepts traffic, ask "
                "for this host to be allowed through",
                details=details,
            )
        return Step(
            "data plane", "ok", f"GET {url} -> 200 ({len(data)} models visible)", details=details
        )
    if 300 <= status < 400:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> {status} redirect",
            cause=f"the endpoint redirects to {response.headers.get('location', 'elsewhere')}; "
            "the proxy never follows redirects with the token",
            fix="set FOUNDRY_PROXY_UPSTREAM to the resource endpoint itself (Keys and Endpoint)",
            details=details,
        )
    refusal = (
        classify_401(parsed_json(response), challenge="www-authenticate" in response.headers)
        if status == 401
        else None
    )
    if refusal is Refusal.NO_ROLE:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> 401 PermissionDenied",
            cause="the app has a valid token but no data-plane role on this resource: " + message,
            fix=ROLES_FIX,
            details=details,
        )
    if status == 401:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> 401",
            cause="the resource refused the token (wrong audience, another tenant, or "
            "expired): " + message,
            fix=f"FOUNDRY_PROXY_SCOPE is {settings.scope}: resource hosts take "
            f"{CLOUDS[settings.cloud].scope}; also check that the resource belongs to "
            + (f"tenant {settings.tenant_id}" if settings.tenant_id else "the identity's tenant"),
            details=details,
        )
    if status == 403:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> 403",
            cause="the resource denied access from this network (firewall, virtual "
            "network rules or disabled public access), or the resource is disabled: " + message,
            fix="allow this machine's network in the resource's Networking settings, or "
            "use it through its private endpoint",
            details=details,
        )
    if status == 404:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> 404",
            cause="no such route or deployment on this host: " + message,
            fix="set FOUNDRY_PROXY_UPSTREAM to the endpoint on the resource's Keys and "
            "Endpoint page (origin only, e.g. https://myres.openai.azure.com); deployment "
            "names go in the request's model",
            details=details,
        )
    if status == 429:
        return Step(
            "data plane",
            "fail",
            f"GET {url} -> 429",
            cause="authorized, but the resource is throttling requests right now",
            fix="try again later, or raise the deployment's quota",
            details=details,
        )
    return Step(
        "data plane",
        "fail",
        f"GET {url} -> {status}",
        cause=message or "unexpected answer",
        fix="try again; if it persists, check the resource's health in the Azure portal",
        details=details,
    )


def transport_failure(
    exc: httpx2.RequestError, url: str, name: str = "data plane", method: str = "GET"
) -> Step:
    """What a call that got no answer means; ``name``: the step, ``method``: the call's."""
    if isinstance(exc, httpx2.TimeoutException) and not isinstance(exc, httpx2.ConnectTimeout):
        return Step(
            name,
            "fail",
            f"{method} {url}: no answer in time",
            cause="connected, but the upstream did not answer within FOUNDRY_PROXY_TOKEN_TIMEOUT",
            fix="try again; if it persists, check the resource's health in the Azure portal",
        )
    if cause_of(exc, socket.gaierror) is not None:
        return Step(
            name,
            "fail",
            f"{method} {url}: host not found",
            cause="the upstream host name does not resolve",
            fix="check FOUNDRY_PROXY_UPSTREAM and this machine's DNS",
        )
    if (tls := cause_of(exc, ssl.SSLError)) is not None:
        return Step(name, "fail", f"{method} {url}: TLS failed", cause=str(tls)[:200], fix=TLS_FIX)
    return Step(
        name,
        "fail",
        f"{method} {url}: {type(exc).__name__}",
        cause="could not connect to the upstream",
        fix=NETWORK_FIX,
    )


async def call_upstream(http: httpx2.AsyncClient, url: str, token: str, settings: Settings) -> Step:
    try:
        response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx2.RequestError as exc:
        return transport_failure(exc, url)
    except UnicodeEncodeError:
        return Step(
            "data plane",
            "fail",
            f"GET {url}: the token is not plain ASCII",
            cause="the token service returned an unusable token",
            fix="check AZURE_AUTHORITY_HOST",
        )
    step = _data_plane_step(response, url, settings)
    # Belt and braces: the token itself, however an echo framed it.
    step.cause = step.cause.replace(token, "[token]")
    return step


async def check_origin(
    http: httpx2.AsyncClient, origin: str, token: str, settings: Settings
) -> Step:
    """The data-plane step for one upstream origin: its models list, v1 first."""
    step = await call_upstream(http, f"{origin}/openai/v1/models", token, settings)
    if step.details.get("status") == 404:
        # Older resources may not serve the v1 API; the dated one proves the setup as well.
        dated = f"{origin}/openai/models?api-version=2024-10-21"
        dated_step = await call_upstream(http, dated, token, settings)
        if dated_step.details.get("status") != 404:
            dated_step.summary += " (the v1 API answered 404)"
            step = dated_step
    return step
