"""The process's budget for request-body bytes held in memory (docs/security.md, "Resource
bounds").

A body up to the replay limit is read whole before a concurrency slot is taken (forwarding.py),
so that a client trickling its body holds no slot; the slots therefore do not bound the bytes
held meanwhile, and thousands of connections each sending a large part of a body and then
nothing held all of it until their body deadline. Each request holds its first ``free`` bytes
without asking (bounded by FOUNDRY_PROXY_MAX_CONNECTIONS; ordinary requests never need more);
every byte beyond comes out of one budget shared by the requests of the process,
FOUNDRY_PROXY_MAX_BUFFERED_BODY_BYTES.

Bytes are counted where they enter memory, in the listener, as the parser hands them over, and
before it keeps them: a count kept by the forwarder would come too late, after the listener
had buffered a whole read for every connection of a burst. A request that finds the budget
spent is answered 503 at once (listener.py): its bytes are in memory by then, so waiting for
room would hold them outside the budget. The forwarder gives bytes back as it streams them on;
the rest comes back when the request ends (whichever of the listener and the forwarder sees
that first). One event loop runs every request of a process, so the counts need no lock.
"""

from __future__ import annotations

# What a request may hold without asking: a chat request of a few thousand tokens. At the
# default FOUNDRY_PROXY_MAX_CONNECTIONS, 2048 x 16 KiB = 32 MiB at most.
FREE_BYTES = 16 * 1024
# The app's budget in the ASGI lifespan state, where the listener finds it (app.py).
BUDGET_KEY = "foundry_proxy.body_budget"
# A request's HeldBody in its ASGI scope, where the forwarder finds it.
HELD_KEY = "foundry_proxy.held_body"


class BodyBudget:
    """Request-body bytes held by the requests of this process, against ``limit``."""

    __slots__ = ("free", "limit", "refused", "used")

    def __init__(self, limit: int, free: int = FREE_BYTES) -> None:
        self.limit = limit
        self.free = free
        self.used = 0  # bytes taken, beyond the requests' free parts
        self.refused = 0  # requests refused for want of room


class HeldBody:
    """The bytes of one request's body held in memory, wherever they are (the listener's
    buffer, the forwarder's), and what of them was taken from the budget."""

    __slots__ = ("budget", "size", "taken")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0
        self.taken = 0

    def add(self, size: int) -> bool:
        """``size`` more bytes are about to be kept; False (nothing taken) when the budget
        cannot cover them. A request that alone needs more than the whole budget is let
        through while no other request holds any: a budget set below the replay limit serves
        such bodies one at a time rather than never."""
        held = self.size + size
        over = held - self.budget.free
        if over > self.taken:
            budget = self.budget
            more = over - self.taken
            if budget.used + more > budget.limit and budget.used > self.taken:
                budget.refused += 1
                return False
            budget.used += more
            self.taken = over
        self.size = held
        return True

    def drop(self, size: int) -> None:
        """``size`` bytes are no longer held (passed on upstream)."""
        held = max(0, self.size - size)
        self.size = held
        over = max(0, held - self.budget.free)
        if over < self.taken:
            self.budget.used -= self.taken - over
            self.taken = over

    def close(self) -> None:
        """The request is over: everything it took goes back (again is harmless)."""
        self.budget.used -= self.taken
        self.taken = self.size = 0
