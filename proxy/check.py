"""`foundry-proxy check`: the setup doctor.

Walks a real configuration step by step (settings, token, token contents, one data-plane call)
and says for each step what is wrong and how to fix it. Exits 0 only when an authenticated call
to the upstream works. Never prints the secret or a token: only a short fingerprint.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx2

from proxy.clouds import CLOUDS, DATA_PLANE_AUDIENCES
from proxy.credentials.claims import decode_claims, scope_resource
from proxy.credentials.factory import TokenClients, credential_from_settings
from proxy.credentials.provider import fingerprint
from proxy.credentials.selection import detect
from proxy.errors import ConfigError, CredentialError, problem_list
from proxy.settings import Settings, SettingsError, load_settings
from proxy.settings_values import looks_like_secret_id

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
ENTRA_HOST_FIX = (
    "AZURE_AUTHORITY_HOST must be an Entra login host such as https://login.microsoftonline.com "
    "(a proxy or portal may have answered instead)"
)
TLS_FIX = (
    "a proxy or firewall is inspecting TLS: point SSL_CERT_FILE at your organisation's CA bundle "
    "(a PEM file)"
)


@dataclass
class Step:
    name: str
    status: str  # "ok", "fail" or "warn"
    summary: str
    cause: str = ""
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", "warn") for s in self.steps) and bool(self.steps)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step


def _settings_failure(exc: ConfigError, report: Report) -> None:
    placeholders = exc.placeholders if isinstance(exc, SettingsError) else []
    if placeholders:
        report.add(
            Step(
                "settings",
                "fail",
                f"{len(placeholders)} setting(s) still hold config.example.env's placeholders",
                cause=problem_list(placeholders),
                fix="replace each with your own value (where to find it is on its line)",
                details={"problems": placeholders},
            )
        )
    others = [p for p in exc.problems if p not in placeholders]
    if others:
        report.add(
            Step(
                "settings",
                "fail",
                f"{len(others)} setting(s) missing or malformed",
                cause=problem_list(others),
                fix="set them in the environment or the env file (see config.example.env)",
                details={"problems": others},
            )
        )


def _check_settings(env_file: Path | None, report: Report) -> Settings | None:
    try:
        settings = load_settings(env_file)
    except ConfigError as exc:
        _settings_failure(exc, report)
        return None
    secret = settings.client_secret.get_secret_value() if settings.client_secret else ""
    if looks_like_secret_id(secret):
        report.add(
            Step(
                "settings",
                "fail",
                "AZURE_CLIENT_SECRET looks like a secret ID, not a secret value",
                cause="the value is a GUID: that is the Secret ID shown next to the secret",
                fix="create or copy the secret's Value (shown once, when it is created) "
                "into AZURE_CLIENT_SECRET",
            )
        )
        return None
    details = {
        "upstream": settings.upstream,
        "tenant": settings.tenant_id,
        "client_id": settings.client_id,
        "authority": settings.authority_host,
        "scope": settings.scope,
    }
    # The proxy's own startup warnings (an unusual upstream host, a misspelt variable, a
    # secret file others can read): the same rules, the same words.
    notices = settings.warnings()
    if notices:
        report.add(
            Step(
                "settings",
                "warn",
                notices[0] if len(notices) == 1 else f"{len(notices)} warnings",
                cause="" if len(notices) == 1 else problem_list(notices),
                fix="the proxy logs the same warning(s) at startup; fix them unless intended",
                details=details | {"warnings": notices},
            )
        )
    else:
        report.add(Step("settings", "ok", "all settings present and well-formed", details=details))
    return settings


def _credential_failure(exc: ConfigError) -> Step:
    return Step(
        "credential",
        "fail",
        exc.problems[0],
        cause=problem_list(exc.problems[1:]),
        fix="see the README section of the credential you mean to use",
        details={"problems": exc.problems},
    )


def _token_failure(err: CredentialError, kind: str) -> Step:
    fixes = {
        "token_dns_error": "check AZURE_AUTHORITY_HOST and this machine's DNS; " + NETWORK_FIX,
        "token_unreachable": NETWORK_FIX,
        "token_timeout": NETWORK_FIX,
        "token_tls_error": TLS_FIX,
        "imds_unreachable": "run on an Azure VM, scale set or AKS node with a managed identity, "
        "or choose another FOUNDRY_PROXY_CREDENTIAL",
        "imds_unavailable": "IMDS is busy or updating: try again in a minute",
        "identity_endpoint_unavailable": "the platform's identity endpoint is busy: try again "
        "in a minute",
        "identity_endpoint_unreachable": "IDENTITY_ENDPOINT is set by App Service and Container "
        "Apps; outside them, unset it",
    }
    if kind.startswith("client") or kind in ("certificate", "workload identity"):
        fixes["malformed_token_response"] = ENTRA_HOST_FIX
    fix = err.hint or fixes.get(err.code, "")
    if not fix and err.code.startswith("http_3"):
        fix = (
            "something redirected the token request: AZURE_AUTHORITY_HOST must be the Entra "
            "login host itself, e.g. https://login.microsoftonline.com"
        )
    fix = fix or "look the error code up in Microsoft's Entra error code reference"
    return Step(
        "token",
        "fail",
        f"the {kind} could not get a token ({err.code})",
        cause=err.message,
        fix=fix,
        details={"code": err.code},
    )


def _describe_claims(token: str, scope: str, default_scope: str) -> Step:
    claims = decode_claims(token)
    print_id = fingerprint(token)
    if claims is None:
        return Step(
            "token contents", "warn", f"token {print_id} is not a readable JWT; not inspected"
        )
    expected = scope_resource(scope)
    audience = str(claims.get("aud", ""))
    exp = claims.get("exp")
    left = (
        int(float(exp) - time.time())
        if isinstance(exp, int | float) and math.isfinite(float(exp)) and abs(float(exp)) < 1e12
        else None
    )
    details = {
        "fingerprint": print_id,
        "audience": audience,
        "tenant": claims.get("tid"),
        "app_id": claims.get("appid") or claims.get("azp"),
        "expires_in": left,
    }
    if "roles" in claims:
        details["roles"] = claims["roles"]
    summary = (
        f"token {print_id}: audience {audience}, tenant {details['tenant']}, "
        f"app {details['app_id']}, expires in {left} s"
    )
    audience = audience.rstrip("/")
    if audience != expected.rstrip("/"):
        cause = f"the audience is {audience}, but FOUNDRY_PROXY_SCOPE asks for {expected}"
    elif audience not in DATA_PLANE_AUDIENCES:
        cause = (
            f"the audience is {audience}: Foundry and Azure OpenAI accept tokens for "
            f"{DATA_PLANE_AUDIENCES[0]} or {DATA_PLANE_AUDIENCES[1]}"
        )
    else:
        return Step("token contents", "ok", summary, details=details)
    fix = f"set FOUNDRY_PROXY_SCOPE={default_scope}"
    return Step("token contents", "warn", summary, cause=cause, fix=fix, details=details)


_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def _shown(text: object, limit: int = 300) -> str:
    """Upstream text fit to print: any bearer token removed first, then shortened.

    An upstream or gateway may echo the request, Authorization header included.
    """
    return _BEARER.sub(r"\1[token]", str(text))[:limit]


def _error_code(response: httpx2.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", _shown(response.text, 200)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code", "")), _shown(error.get("message", ""))
        if "statusCode" in body:
            return "entra_token_rejected", _shown(body.get("message", ""))
    return "", _shown(body, 200)


def _data_plane_step(response: httpx2.Response, url: str, settings: Settings) -> Step:
    status = response.status_code
    code, message = _error_code(response)
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
    if status == 401 and code == "PermissionDenied":
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


def _transport_failure(exc: httpx2.RequestError, url: str) -> Step:
    if isinstance(exc, httpx2.TimeoutException) and not isinstance(exc, httpx2.ConnectTimeout):
        return Step(
            "data plane",
            "fail",
            f"GET {url}: no answer in time",
            cause="connected, but the upstream did not answer within FOUNDRY_PROXY_TOKEN_TIMEOUT",
            fix="try again; if it persists, check the resource's health in the Azure portal",
        )
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return Step(
                "data plane",
                "fail",
                f"GET {url}: host not found",
                cause="the upstream host name does not resolve",
                fix="check FOUNDRY_PROXY_UPSTREAM and this machine's DNS",
            )
        if isinstance(seen, ssl.SSLError):
            return Step(
                "data plane", "fail", f"GET {url}: TLS failed", cause=str(seen)[:200], fix=TLS_FIX
            )
        seen = seen.__cause__ or seen.__context__
    return Step(
        "data plane",
        "fail",
        f"GET {url}: {type(exc).__name__}",
        cause="could not connect to the upstream",
        fix=NETWORK_FIX,
    )


async def run_checks(env_file: Path | None) -> Report:
    report = Report()
    settings = _check_settings(env_file, report)
    if settings is None:
        return report
    timeout = httpx2.Timeout(settings.token_timeout, connect=min(10.0, settings.connect_timeout))
    tls = ssl.create_default_context()  # honours SSL_CERT_FILE, like the proxy itself
    try:
        choice = await detect(settings)
        settings = choice.settings
        clients = TokenClients.create(settings, tls)
    except ConfigError as exc:
        report.add(_credential_failure(exc))
        return report
    async with httpx2.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=settings.trust_env, verify=tls
    ) as http:
        try:
            credential = credential_from_settings(settings, clients)
            report.add(
                Step(
                    "credential",
                    "ok",
                    f"using the {credential.kind}",
                    details={"kind": credential.kind, "passed_over": list(choice.passed_over)},
                )
            )
            token = await credential.get_token(settings.scope)
        except ConfigError as exc:
            report.add(_credential_failure(exc))
            return report
        except CredentialError as err:
            report.add(_token_failure(err, credential.kind))
            return report
        finally:
            if "credential" in locals():
                await credential.aclose()
            await clients.aclose()
        report.add(
            Step(
                "token",
                "ok",
                f"the {credential.kind} gave a token for {settings.scope} "
                f"(valid {token.expires_in:.0f} s)",
            )
        )
        report.add(_describe_claims(token.token, settings.scope, CLOUDS[settings.cloud].scope))
        url = f"{settings.upstream}/openai/v1/models"
        step = await _call(http, url, token.token, settings)
        if step.details.get("status") == 404:
            # Older resources may not serve the v1 API; the dated one proves the setup as well.
            dated = f"{settings.upstream}/openai/models?api-version=2024-10-21"
            dated_step = await _call(http, dated, token.token, settings)
            if dated_step.details.get("status") != 404:
                dated_step.summary += " (the v1 API answered 404)"
                step = dated_step
        report.add(step)
    return report


async def _call(http: httpx2.AsyncClient, url: str, token: str, settings: Settings) -> Step:
    try:
        response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx2.RequestError as exc:
        return _transport_failure(exc, url)
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


_MARKS = MappingProxyType({"ok": "[ ok ]", "fail": "[FAIL]", "warn": "[warn]"})


def render(report: Report) -> str:
    lines = []
    for step in report.steps:
        lines.append(f"{_MARKS[step.status]} {step.name}: {step.summary}")
        if "\n" in step.cause or step.cause.startswith("  - "):
            # A list of problems, in the server's format (errors.problem_list).
            lines.append("       cause:")
            lines += [f"       {line}" for line in step.cause.splitlines()]
        elif step.cause:
            lines.append(f"       cause: {step.cause}")
        if step.fix:
            lines.append(f"       fix:   {step.fix}")
    lines.append("")
    lines.append(
        "All good: the proxy can authenticate and reach the upstream."
        if report.ok
        else "Not ready: fix the first failing step and run foundry-proxy check again."
    )
    return "\n".join(lines)


def run(env_file: Path | None, as_json: bool) -> int:
    report = asyncio.run(run_checks(env_file))
    if as_json:
        print(json.dumps({"ok": report.ok, "steps": [asdict(s) for s in report.steps]}, indent=2))
    else:
        print(render(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
