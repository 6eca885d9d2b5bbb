"""The backends the proxy sends to: FOUNDRY_PROXY_UPSTREAM's list, or FOUNDRY_PROXY_BACKENDS_FILE.

Pure: parses and checks, never connects. Each origin is checked by the same rule as a single
upstream (settings_values.origin: https, or http on loopback; no user, path, query or
fragment), so a pool never reaches further than one upstream could. Every problem is reported,
each naming the backend and the key at fault, never a value that may be a secret
(docs/backends.md).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.settings_values import BACKEND_NAME, BACKENDS_FILE, origin, scope

EXAMPLE = "myresource.openai.azure.com"
# Azure deployment names: letters, digits, "-", "_" and "." (up to 64); a mapped name goes
# into the upstream path, so nothing that could change the path's shape is accepted.
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_BACKENDS = 16
_MAX_WEIGHT = 1000
_BACKEND_KEYS = frozenset({"name", "origin", "priority", "weight", "deployments", "scope"})
_TOP_KEYS = frozenset({"backend", "breaker_failures", "breaker_seconds"})
#: Consecutive failures that open a backend's circuit, and how long it stays open.
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One Foundry resource as configured. ``priority``: lower goes first; equal priorities
    share load by ``weight``. ``deployments``: client name -> this resource's deployment name.
    ``scope``: the token scope for its OpenAI and model routes when not the global one."""

    name: str
    origin: str
    priority: int = 1
    weight: int = 1
    deployments: tuple[tuple[str, str], ...] = ()
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    backends: tuple[BackendSpec, ...]
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_seconds: float = DEFAULT_BREAKER_SECONDS


def upstream_origins(value: str) -> list[str]:
    """FOUNDRY_PROXY_UPSTREAM's origins in priority order (one, or a comma-separated list),
    each checked like a single upstream; raises ValueError naming the item at fault."""
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise ValueError(f"is empty: give an origin such as https://{EXAMPLE}")
    if len(items) > _MAX_BACKENDS:
        raise ValueError(f"lists more than {_MAX_BACKENDS} origins")
    out: list[str] = []
    for number, item in enumerate(items, 1):
        if not item:
            raise ValueError(f"item {number} of the list is empty")
        try:
            checked = origin(item, EXAMPLE, allow_path=False)
        except ValueError as exc:
            raise ValueError(exc.args[0] if len(items) == 1 else f"item {number}: {exc}") from None
        if checked in out:
            raise ValueError(f"item {number} repeats an earlier origin")
        out.append(checked)
    return out


def short_name(origin_: str, taken: set[str], number: int) -> str:
    """A backend's name from its origin: the host's first label (myres for
    https://myres.openai.azure.com), else backendN; made unique with -N."""
    host = urlsplit(origin_).hostname or ""
    label = host.split(".", 1)[0].lower()
    name = label if BACKEND_NAME.fullmatch(label) and not label.isdigit() and "." in host else ""
    name = name[:28] or f"backend{number}"
    if name in taken:
        name = f"{name}-{number}"
    taken.add(name)
    return name


def pool_from_upstream(value: str) -> PoolSpec:
    """The pool FOUNDRY_PROXY_UPSTREAM describes: its origins in priority order, weight 1."""
    taken: set[str] = set()
    return PoolSpec(
        tuple(
            BackendSpec(short_name(o, taken, n), o, priority=n)
            for n, o in enumerate(upstream_origins(value), 1)
        )
    )


def pool_from_file(path: Path) -> tuple[PoolSpec | None, list[str]]:
    """The pool a backends file describes, or None and every problem found in it."""
    where = f"{BACKENDS_FILE} ({path.name})"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{where}: cannot be read ({type(exc).__name__})"]
    except tomllib.TOMLDecodeError as exc:
        # The parser's message names a line and column, never the value found there.
        return None, [f"{where}: is not valid TOML ({exc})"]
    return pool_from_table(data, where)


def pool_from_table(data: Mapping[str, Any], where: str) -> tuple[PoolSpec | None, list[str]]:
    problems = [f"{where}: unknown key {key!r}" for key in sorted(set(data) - _TOP_KEYS)]
    failures = data.get("breaker_failures", DEFAULT_BREAKER_FAILURES)
    if not _is_int(failures) or not 1 <= failures <= 1000:
        problems.append(f"{where}: breaker_failures must be a whole number from 1 to 1000")
    seconds = data.get("breaker_seconds", DEFAULT_BREAKER_SECONDS)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= 3600:
        problems.append(f"{where}: breaker_seconds must be a number of seconds from 0 to 3600")
    entries = data.get("backend")
    if not isinstance(entries, list) or not entries:
        problems.append(f"{where}: holds no backend (write one [[backend]] table per resource)")
        return None, problems
    if len(entries) > _MAX_BACKENDS:
        problems.append(f"{where}: more than {_MAX_BACKENDS} backends")
    specs: list[BackendSpec] = []
    names: set[str] = set()
    origins: set[str] = set()
    for number, entry in enumerate(entries, 1):
        spec = _backend(entry, f"{where}: backend {number}", problems)
        if spec is None:
            continue
        if spec.name in names:
            problems.append(f"{where}: backend {number}: the name {spec.name!r} is used twice")
        if spec.origin in origins:
            problems.append(f"{where}: backend {number}: repeats an earlier origin")
        names.add(spec.name)
        origins.add(spec.origin)
        specs.append(spec)
    if problems:
        return None, problems
    # Stable: equal priorities keep the file's order (which only matters for the logs).
    ordered = tuple(sorted(specs, key=lambda s: s.priority))
    return PoolSpec(ordered, int(failures), float(seconds)), []


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _backend(entry: object, where: str, problems: list[str]) -> BackendSpec | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a table ([[backend]])")
        return None
    found: list[str] = [f"{where}: unknown key {k!r}" for k in sorted(set(entry) - _BACKEND_KEYS)]
    name = entry.get("name")
    if not isinstance(name, str) or not BACKEND_NAME.fullmatch(name):
        found.append(
            f"{where}: name is required: 1-32 lower-case letters, digits, '-' or '_' "
            "(it names the backend in logs and metrics)"
        )
    else:
        where = f"{where} ({name})"
    checked = ""
    raw = entry.get("origin")
    if not isinstance(raw, str):
        found.append(f"{where}: origin is required, such as https://{EXAMPLE}")
    else:
        try:
            checked = origin(raw, EXAMPLE, allow_path=False)
        except ValueError as exc:
            found.append(f"{where}: origin {exc}")
    priority = entry.get("priority", 1)
    if not _is_int(priority) or not 0 <= priority <= 1000:
        found.append(f"{where}: priority must be a whole number from 0 to 1000 (lower goes first)")
    weight = entry.get("weight", 1)
    if not _is_int(weight) or not 1 <= weight <= _MAX_WEIGHT:
        found.append(f"{where}: weight must be a whole number from 1 to {_MAX_WEIGHT}")
    deployments = _deployments(entry.get("deployments", {}), where, found)
    token_scope = entry.get("scope")
    if token_scope is not None:
        try:
            token_scope = scope(token_scope) if isinstance(token_scope, str) else None
        except ValueError as exc:
            found.append(f"{where}: scope {exc}")
        if token_scope is None:
            found.append(f"{where}: scope must be a string ending in /.default")
    problems += found
    if found:
        return None
    assert isinstance(name, str)
    return BackendSpec(
        name, checked, int(priority), int(weight), tuple(deployments.items()), token_scope
    )


def _deployments(table: object, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(table, dict):
        problems.append(f"{where}: deployments must be a table of client name = deployment name")
        return {}
    out: dict[str, str] = {}
    for number, (client, deployment) in enumerate(table.items(), 1):
        if not _DEPLOYMENT.match(client):
            problems.append(f"{where}: deployments: client name {number} is not a deployment name")
        elif not isinstance(deployment, str) or not _DEPLOYMENT.match(deployment):
            problems.append(
                f"{where}: deployments: the name given for {client!r} is not a deployment name "
                "(letters, digits, '-', '_' and '.', up to 64)"
            )
        else:
            out[client] = deployment
    return out
