"""`foundry-proxy check`: the setup doctor.

Walks a real configuration step by step (settings, token, token contents, one data-plane call)
and says for each step what is wrong and how to fix it. Exits 0 only when an authenticated call
to the upstream works. Never prints the secret or a token: only a short fingerprint.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from dataclasses import asdict
from pathlib import Path

import httpx2

from proxy.check_claude import call_claude
from proxy.check_report import Report, Step, render
from proxy.check_token import describe_claims, token_failure
from proxy.check_upstream import check_origin
from proxy.clouds import CLOUDS
from proxy.credentials.base import Credential
from proxy.credentials.factory import TokenClients, credential_from_settings
from proxy.credentials.selection import detect
from proxy.errors import ConfigError, CredentialError, problem_list
from proxy.settings import Settings, SettingsError, load_settings
from proxy.settings_values import looks_like_secret_id


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
        fix="see docs/credentials.md for the credential you mean to use",
        details={"problems": exc.problems},
    )


async def run_checks(env_file: Path | None, claude_deployment: str | None = None) -> Report:
    """``claude_deployment``: also call Claude's Messages API on this deployment."""
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
            # Backends with a scope of their own (docs/backends.md) get a token for it.
            scoped = {
                b.scope: (await credential.get_token(b.scope)).token
                for b in settings.pool.backends
                if b.scope is not None and b.scope != settings.scope
            }
            claude = await _claude_token(credential, settings) if claude_deployment else None
        except ConfigError as exc:
            report.add(_credential_failure(exc))
            return report
        except CredentialError as err:
            report.add(token_failure(err, credential.kind, settings.credential))
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
        report.add(describe_claims(token.token, settings.scope, CLOUDS[settings.cloud].scope))
        # Every backend, one call each: a pool is only as good as the resources it fails over to.
        backends = settings.pool.backends
        for backend in backends:
            bearer = scoped.get(backend.scope or "", token.token)
            step = await check_origin(http, backend.origin, bearer, settings)
            if len(backends) > 1:
                step.summary = f"backend {backend.name}: {step.summary}"
            report.add(step)
        if claude_deployment:
            if isinstance(claude, Step):
                report.add(claude)
            elif claude is not None:
                origin = settings.upstream
                report.add(await call_claude(http, origin, claude_deployment, claude, settings))
    return report


async def _claude_token(credential: Credential, settings: Settings) -> str | Step:
    """A token for Claude's scope (the projects scope), or the step saying why there is none."""
    try:
        return (await credential.get_token(settings.projects_scope)).token
    except CredentialError as err:
        step = token_failure(err, credential.kind, settings.credential)
        step.name = "claude"
        step.summary += f" for {settings.projects_scope}"
        return step


def run(env_file: Path | None, as_json: bool, claude_deployment: str | None = None) -> int:
    report = asyncio.run(run_checks(env_file, claude_deployment))
    if as_json:
        print(json.dumps({"ok": report.ok, "steps": [asdict(s) for s in report.steps]}, indent=2))
    else:
        print(render(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
