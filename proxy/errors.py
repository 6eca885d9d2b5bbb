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


class ProxyError(Exception):
    """Base of every error foundry-proxy raises on purpose."""


class ConfigError(ProxyError):
    """The configuration is invalid; ``problems`` lists every problem found, one per entry."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class CredentialError(ProxyError):
    """No token could be obtained.

    ``code`` is a short machine-readable code (an ``AADSTSnnnn`` code when Entra gave one),
    ``retry_after`` the seconds the token service asked us to wait, if it said.
    Messages never contain the secret or a token: they are built from Entra's error fields.
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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
        self.retry_after = retry_after
        #: Entra's correlation id, which its support and sign-in logs are searched by.
        self.correlation_id = correlation_id


class CredentialUnavailable(CredentialError):
    """The token service could not be asked or did not answer usefully (transient)."""


class AuthenticationFailed(CredentialError):
    """The token service refused the credential: a configuration problem."""

    permanent = True
