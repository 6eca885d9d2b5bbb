"""Where a request to the emulated OpenAI routes goes (the operation, the deployment in its
path) and whether its ``api-version`` lets it through, as Azure decides it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.emulator import azure_errors
from proxy.emulator.api_versions import version_problem
from proxy.emulator.wire import EmuRequest, Reply

_DEPLOYMENT_ROUTE = re.compile(r"^/openai/deployments/([A-Za-z0-9._-]+)/(.+)$")


@dataclass(frozen=True, slots=True)
class Call:
    operation: str
    deployment: str | None
    v1: bool  # /openai/v1: errors carry OpenAI's ``type`` too
    versioned: bool  # a route that takes ``api-version`` (required there)


def resolve(request: EmuRequest) -> Call | None:
    """None for a path no OpenAI-family route serves."""
    path, dated = request.path, "api-version=" in request.query
    if m := _DEPLOYMENT_ROUTE.match(path):
        return Call(m.group(2), m.group(1), v1=False, versioned=True)
    if path.startswith("/openai/v1/"):
        return Call(path.removeprefix("/openai/v1/"), None, v1=True, versioned=False)
    if path.startswith("/models/"):
        return Call(path.removeprefix("/models/"), None, v1=False, versioned=True)
    if path.startswith("/openai/") and dated:
        return Call(path.removeprefix("/openai/"), None, v1=False, versioned=True)
    return None


def version_refusal(request: EmuRequest, call: Call | None, strict: bool) -> Reply | None:
    """Azure's answer to a request with no or a wrong ``api-version``; None if it has a good
    one or needs none. Not ``strict`` (the test fake): a version is asked for on the dated
    /openai routes only, and any value goes."""
    if call is None or not call.versioned:
        return None
    version = request.query_value("api-version")
    if not strict:
        dated = call.deployment is not None or request.path.startswith("/openai/")
        return azure_errors.resource_not_found() if dated and version is None else None
    return version_problem(version)
