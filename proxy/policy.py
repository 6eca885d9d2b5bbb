"""The method and path policy: which upstream operations a local caller may reach.

The token can do anything the identity's role allows on the resource (delete files, cancel
batches, start fine-tuning jobs), and anything that can reach the port can use it. So the
proxy forwards only an allow-list of (method, path pattern) pairs: by default inference and
reads. Operators widen it (FOUNDRY_PROXY_ALLOW), tighten it (FOUNDRY_PROXY_DENY, which wins),
or open it whole (FOUNDRY_PROXY_POLICY=open).

Rules are checked against the upstream path exactly as it will be sent (after route mapping,
without the query): the string decided on is the string forwarded. A path that no Azure
operation has (operations.py) is a mistake rather than a policy question: it is refused with
404 and the closest known operation, never with a 403 inviting the operator to allow a typo.
Standard library only (and operations.py), like rewrite.py.

Rule syntax: ``METHOD /path/pattern``, where METHOD is a method name or ``*``, a ``*`` segment
matches one path segment and a final ``**`` any number of segments (zero included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.operations import ANTHROPIC, INFERENCE, KNOWN_OPERATIONS, OperationSuggester

_READS = (
    "models",
    "models/*",
    "files",
    "files/*",
    "files/*/content",
    "batches",
    "batches/*",
    "responses/*",
    "responses/*/input_items",
)


def _v1(prefix: str) -> list[str]:
    return [
        *(f"POST {prefix}/{op}" for op in (*INFERENCE, "responses", "responses/*/cancel")),
        *(f"GET {prefix}/{path}" for path in _READS),
        # The Realtime API's WebSocket handshake (realtime.py).
        f"GET {prefix}/realtime",
    ]


#: Inference and reads on every route family. Uploads, batch
#: creation, deletions, fine-tuning, assistants and vector stores need FOUNDRY_PROXY_ALLOW.
DEFAULT_RULES: tuple[str, ...] = (
    *_v1("/openai/v1"),
    *_v1("/api/projects/*/openai/v1"),
    *_v1("/openai"),
    *(f"POST /openai/deployments/*/{op}" for op in INFERENCE),
    "GET /openai/deployments",
    "GET /openai/deployments/*",
    "POST /models/chat/completions",
    "POST /models/embeddings",
    "POST /models/images/embeddings",
    "GET /models/info",
    "GET /api/projects/*/deployments",
    "GET /api/projects/*/deployments/*",
    *(f"POST /anthropic/v1/{op}" for op in ANTHROPIC),
)
#: FOUNDRY_PROXY_POLICY=open: everything under the route families.
OPEN_RULES: tuple[str, ...] = (
    "* /openai/**",
    "* /models/**",
    "* /api/projects/**",
    "* /anthropic/**",
)

_METHOD = re.compile(r"^[A-Z]+$|^\*$")
# What "*" means in a rule, and all the policy ever forwards: no TRACE (cross-site tracing),
# CONNECT or WebDAV methods, which no Azure OpenAI or Foundry operation uses.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@-]+$")


@dataclass(frozen=True, slots=True)
class Rule:
    method: str  # upper case, or "*"
    pattern: str

    def regex(self) -> str:
        segments = self.pattern.strip("/").split("/")
        parts = []
        for i, segment in enumerate(segments):
            if segment == "**":
                if i != len(segments) - 1:
                    raise ValueError(f"{self.pattern}: ** may only end a pattern")
                parts.append("(?:/[^/]+)*")
            elif segment == "*":
                parts.append("/[^/]+")
            elif _SEGMENT.match(segment):
                parts.append("/" + re.escape(segment))
            else:
                raise ValueError(f"{self.pattern}: {segment!r} is not a valid path segment")
        return "".join(parts)


def parse_rules(text: str) -> list[Rule]:
    """``"POST /openai/v1/files, GET /openai/v1/files/*"`` -> rules; ValueError names the bad
    item."""
    rules = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        fields = item.split()
        if len(fields) != 2 or not _METHOD.match(fields[0].upper()) or fields[1][:1] != "/":
            raise ValueError(f"{item!r} is not METHOD /path (for example POST /openai/v1/files)")
        rule = Rule(fields[0].upper(), fields[1])
        rule.regex()  # raises ValueError for a bad pattern
        rules.append(rule)
    return rules


def _compile(rules: list[Rule]) -> dict[str, re.Pattern[str]]:
    methods = {r.method for r in rules if r.method != "*"} | {"GET", "HEAD", "POST", "DELETE"}
    compiled: dict[str, re.Pattern[str]] = {}
    for method in methods | {"*"}:
        chosen = [r.regex() for r in rules if r.method in (method, "*")]
        if method == "HEAD":  # HEAD is GET without a body (RFC 9110 section 9.3.2)
            chosen += [r.regex() for r in rules if r.method == "GET"]
        if chosen:
            compiled[method] = re.compile("|".join(f"(?:{c})" for c in chosen))
    return compiled


class Policy:
    """Decides (method, upstream path) -> forward, 403, 404 or 405."""

    def __init__(self, allow: list[Rule], deny: list[Rule] | None = None) -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny or [])
        known = [Rule("*", op.split()[1]) for op in KNOWN_OPERATIONS]
        # A path an operator allowed is known, whatever this list says.
        self._known = _compile([*known, *(Rule("*", r.pattern) for r in allow)])["*"]
        self._suggester = OperationSuggester()

    def _matches(self, table: dict[str, re.Pattern[str]], method: str, path: str) -> bool:
        pattern = table.get(method) or table.get("*")
        return pattern is not None and pattern.fullmatch(path) is not None

    def decide(self, method: str, path: str) -> int:
        """200 to forward; 405 when the path is allowed for other methods; 404 when no Azure
        operation (and no allow rule) has this path; else 403."""
        if method not in METHODS:
            return 405
        if self._matches(self._allow, method, path) and not self._matches(self._deny, method, path):
            return 200
        if self.allowed_methods(path):
            return 405
        return 403 if self._known.fullmatch(path) is not None else 404

    def allowed_methods(self, path: str) -> list[str]:
        return sorted(
            m
            for m in self._allow
            if m != "*"
            and self._matches(self._allow, m, path)
            and not self._matches(self._deny, m, path)
        )

    def closest(self, method: str, local_path: str) -> tuple[str, bool]:
        """The known operation a 404's ``METHOD local_path`` most likely meant, and whether it
        is close enough to name as such (operations.OperationSuggester)."""
        return self._suggester.closest(method, local_path)
