"""The one exception tree of foundry-proxy.

ProxyError
├── ConfigError                 bad settings; the CLI exits 2
└── CredentialError             no token could be had
    ├── CredentialUnavailable   could not even try (network, TLS, timeout, Entra 5xx/429)
    └── AuthenticationFailed    Entra answered and said no (bad secret, unknown tenant, ...)

Upstream failures are not exceptions of ours: the forwarder maps aiohttp's straight onto
OpenAI-shaped 502/504 answers (replies.py).

The split between "could not try" and "tried and failed" decides the retry policy: the first is
transient, the second is a configuration problem that a quick retry will not fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from proxy.redaction import Redactor

E = TypeVar("E", bound=BaseException)


class ProxyError(Exception):
    """Base of every error foundry-proxy raises on purpose."""


def cause_of(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc``'s chain (itself, then what it was raised
    from or during), e.g. the DNS error under an HTTP client's connection error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def problem_list(problems: list[str], indent: str = "  ") -> str:
    """Problems as they are shown to people, by the server and by `check` alike: one per
    line, each a "- " item."""
    return "\n".join(f"{indent}- {p}" for p in problems)


class ConfigError(ProxyError):
    """The configuration is invalid; ``problems`` lists every problem found, one per entry."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + problem_list(problems))


class CredentialError(ProxyError):
    """No token could be obtained.

    ``code`` is a short machine-readable code (an ``AADSTSnnnn`` code when Entra gave one),
    ``retry_after`` the seconds the token service asked us to wait, if it said.

    The message, the code and the correlation id may carry text of the token service's, which
    is not always Entra (a gateway, a hostile host): they are redacted here, of ``secrets``
    (the credential's own secret values) and of every secret shape (redaction.py), so that
    nothing printing the error, a traceback included, can show a secret. There is one copy of
    the message, ``str(err)``; ``message`` reads it.
    """

    #: True when retrying soon is pointless (the configuration must change first).
    permanent: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        hint: str = "",
        retry_after: float | None = None,
        correlation_id: str = "",
        secrets: Iterable[str] = (),
    ) -> None:
        redact = Redactor.of(secrets)
        super().__init__(redact(message))
        self.code = redact(code)
        self.hint = hint
        self.retry_after = retry_after
        #: Entra's correlation id, which its support and sign-in logs are searched by.
        self.correlation_id = redact(correlation_id)

    @property
    def message(self) -> str:
        return str(self)


class CredentialUnavailable(CredentialError):
    """The token service could not be asked or did not answer usefully (transient)."""


class AuthenticationFailed(CredentialError):
    """The token service refused the credential: a configuration problem."""

    permanent = True
