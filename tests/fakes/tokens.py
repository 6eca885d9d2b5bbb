"""The emulator's token issuer, plus what tests need: a record of every token, and revocation."""

from __future__ import annotations

import threading

from proxy.emulator.tokens import TokenIssuer


class RecordingIssuer(TokenIssuer):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.issued: list[str] = []
        self.revoked: set[str] = set()

    def issue(self, *, tenant: str, client_id: str, audience: str, lifetime: float) -> str:
        token = super().issue(
            tenant=tenant, client_id=client_id, audience=audience, lifetime=lifetime
        )
        with self._lock:
            self.issued.append(token)
        return token

    def verify(self, token: str, audiences: tuple[str, ...]) -> str | None:
        if token in self.revoked:
            return "revoked"
        return super().verify(token, audiences)

    def serial(self, token: str) -> int | None:
        """1 for the first token issued, 2 for the next, ..."""
        try:
            return self.issued.index(token) + 1
        except ValueError:
            return None

    def token(self, serial: int) -> str:
        return self.issued[serial - 1]

    def revoke_all(self) -> None:
        with self._lock:
            self.revoked.update(self.issued)

    def canaries(self) -> list[str]:
        """Token material that may never appear in a log or an answer: each token whole, its
        signature, and the start of its claims (a shortened token is still a leak)."""
        with self._lock:
            return [
                *self.issued,
                *(t.rsplit(".", 1)[1] for t in self.issued),
                *(t.split(".")[1][:32] for t in self.issued),
            ]
