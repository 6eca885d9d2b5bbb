"""Which ``api-version`` values the emulated dated routes take, and Azure's answer to the rest.

Azure answers a dated route without ``api-version`` with 404 "Resource not found" and a version it
does not serve with 400 "API version not supported" (docs/azure.md, "The emulator's error
answers"). The emulator takes every dated version Azure has published the shape of (a date from
2022-12-01 on, optionally ``-preview``) and the aliases ``preview`` and ``latest``; it does not
know which of them a given model supports.
"""

from __future__ import annotations

import datetime
import re

from proxy.emulator import azure_errors
from proxy.emulator.wire import Reply

_DATED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(-preview)?$")
_FIRST = datetime.date(2022, 12, 1)
_ALIASES = frozenset({"preview", "latest"})


def supported(version: str) -> bool:
    if version in _ALIASES:
        return True
    match = _DATED.match(version)
    if match is None:
        return False
    try:
        day = datetime.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return _FIRST <= day <= datetime.date.today() + datetime.timedelta(days=366)


def version_problem(version: str | None) -> Reply | None:
    """Azure's answer to a missing or unknown version; None for one it serves."""
    if version is None:
        return azure_errors.resource_not_found()
    return None if supported(version) else azure_errors.api_version_not_supported()
