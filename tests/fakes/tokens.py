"""The ledger shared by the fake Entra (which issues tokens) and fake Foundry (which checks them).

Tokens look like ``CANARY-TOKEN-<uuid>-<serial>`` so a scan of logs and responses can find any
leak of one; the ledger knows each token's scope, expiry and whether it was revoked.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass


@dataclass
class Issued:
    serial: int
    scope: str
    expires_at: float  # time.monotonic()
    revoked: bool = False


class TokenLedger:
    def __init__(self) -> None:
        self._serials = itertools.count(1)
        self._lock = threading.Lock()
        self.issued: dict[str, Issued] = {}
        self.prefix = f"CANARY-TOKEN-{uuid.uuid4().hex}"

    def issue(self, scope: str, lifetime: float) -> str:
        with self._lock:
            serial = next(self._serials)
            token = f"{self.prefix}-{serial}"
            self.issued[token] = Issued(serial, scope, time.monotonic() + lifetime)
            return token

    def check(self, token: str, scope: str) -> str | None:
        """None when the token is good for ``scope``; else why not."""
        issued = self.issued.get(token)
        if issued is None:
            return "unknown"
        if issued.revoked:
            return "revoked"
        if time.monotonic() >= issued.expires_at:
            return "expired"
        if issued.scope != scope:
            return "audience"
        return None

    def serial(self, token: str) -> int | None:
        issued = self.issued.get(token)
        return issued.serial if issued else None

    def revoke_all(self) -> None:
        with self._lock:
            for issued in self.issued.values():
                issued.revoked = True

    @property
    def count(self) -> int:
        return len(self.issued)
