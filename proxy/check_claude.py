"""`foundry-proxy check`'s Claude call: one real Messages API request (max_tokens 1) to a named
Claude deployment, with a token for the projects scope, and what its answer means for the setup
(docs/claude.md: the route, the scope and the roles)."""

from __future__ import annotations

import httpx2

from proxy.check_report import Step
from proxy.check_upstream import error_code, parsed_json, shown, transport_failure
from proxy.settings import Settings
from proxy.upstream_refusals import Refusal, classify_401

ANTHROPIC_VERSION = "2023-06-01"
CLAUDE_ROLES_FIX = (
    "assign one of Cognitive Services User, Azure AI User (shown as Foundry User in newer "
    "portals) or Azure AI Developer to the app or identity on this Foundry resource (Access "
    "control (IAM) > Add role assignment); Cognitive Services Contributor is not enough: it has "
    "no data actions. New assignments can take a few minutes."
)
NAME = "claude"


def _claude_error(response: httpx2.Response) -> tuple[str, str]:
    """(code or type, message) from Anthropic's error shape, else from Azure's."""
    body = parsed_json(response)
    if (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
    ):
        error = body["error"]
        return str(error.get("type", "")), shown(error.get("message", ""))
    return error_code(response)


def _answer_step(response: httpx2.Response, url: str, deployment: str, settings: Settings) -> Step:
    status = response.status_code
    code, message = _claude_error(response)
    details = {"url": url, "status": status, "code": code, "deployment": deployment}
    head = f"POST {url} (model {deployment})"
    if status == 200:
        body = parsed_json(response)
        if not isinstance(body, dict) or body.get("type") != "message":
            return Step(
                NAME,
                "fail",
                f"{head} -> 200, but not a Claude message",
                cause="something other than Foundry's Claude route answered",
                fix="check FOUNDRY_PROXY_UPSTREAM: Claude is served by the "
                "https://<resource>.services.ai.azure.com endpoint",
                details=details,
            )
        details["model"] = body.get("model")
        return Step(NAME, "ok", f"{head} -> 200 ({body.get('model')} answered)", details=details)
    refusal = (
        classify_401(parsed_json(response), challenge="www-authenticate" in response.headers)
        if status == 401
        else None
    )
    if refusal is Refusal.TOKEN_REJECTED:
        return Step(
            NAME,
            "fail",
            f"{head} -> 401",
            cause="the resource refused the token (Claude takes tokens for "
            f"https://ai.azure.com only): {message}",
            fix=f"FOUNDRY_PROXY_PROJECTS_SCOPE is {settings.projects_scope}: leave it unset "
            "(it follows FOUNDRY_PROXY_CLOUD) or set it to the ai.azure.com scope of your cloud",
            details=details,
        )
    if status in (401, 403):
        return Step(
            NAME,
            "fail",
            f"{head} -> {status} {code}".rstrip(),
            cause="the token is good but the app may not call Claude on this resource (a "
            "missing data-plane role, or network rules that block this machine): " + message,
            fix=CLAUDE_ROLES_FIX,
            details=details,
        )
    if status == 404:
        return Step(
            NAME,
            "fail",
            f"{head} -> 404",
            cause=f"no Claude deployment named {deployment!r} on this resource, or no Claude "
            "route on this host: " + message,
            fix="give --claude-deployment the deployment name shown in Foundry (Models + "
            "endpoints), and make FOUNDRY_PROXY_UPSTREAM the resource's "
            "services.ai.azure.com endpoint",
            details=details,
        )
    if status == 429:
        return Step(
            NAME,
            "fail",
            f"{head} -> 429",
            cause="authorized, but the deployment is throttling requests right now",
            fix="try again later, or raise the deployment's quota",
            details=details,
        )
    return Step(
        NAME,
        "fail",
        f"{head} -> {status}",
        cause=message or "unexpected answer",
        fix="check the deployment in Foundry; if it persists, check the resource's health",
        details=details,
    )


async def call_claude(
    http: httpx2.AsyncClient, origin: str, deployment: str, token: str, settings: Settings
) -> Step:
    """One Messages API call with ``max_tokens`` 1 to ``deployment`` at ``origin``."""
    url = f"{origin}/anthropic/v1/messages"
    body = {
        "model": deployment,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    }
    headers = {"Authorization": f"Bearer {token}", "anthropic-version": ANTHROPIC_VERSION}
    try:
        response = await http.post(url, json=body, headers=headers)
    except httpx2.RequestError as exc:
        return transport_failure(exc, url, NAME, "POST")
    except UnicodeEncodeError:
        return Step(NAME, "fail", f"POST {url}: the token is not plain ASCII")
    step = _answer_step(response, url, deployment, settings)
    step.cause = step.cause.replace(token, "[token]")
    return step
