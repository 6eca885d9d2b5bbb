"""The text of a backends file written from Python values (docs/backends.md), so that tests
state what a pool holds rather than hand-writing TOML; every string is quoted and escaped."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def backends_toml(*backends: Mapping[str, object], **pool: object) -> str:
    """``pool``'s keys (breaker_failures, ...) at the top, then one ``[[backend]]`` table for
    each of ``backends``; a value that is itself a mapping (deployments) becomes that
    backend's sub-table. Keys and values are written as given, unknown or invalid ones too."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in pool.items()]
    for backend in backends:
        lines += ["", "[[backend]]"]
        tables = {k: v for k, v in backend.items() if isinstance(v, Mapping)}
        lines += [f"{_key(k)} = {_value(v)}" for k, v in backend.items() if k not in tables]
        for name, table in tables.items():
            lines.append(f"[backend.{_key(name)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is one
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"no TOML form for {type(value).__name__} here")


def _string(text: str) -> str:
    """A TOML basic string: quote and backslash escaped, control characters (which TOML does
    not allow as they are) as \\uXXXX."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
