"""What Linux's /proc says about a process: memory, CPU time, open files.

Sizes are in the unit /proc writes ("kB", which is KiB).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS: resident now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def rss_kb(pid: int) -> int:
    """Resident memory now."""
    return status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    """The most resident memory the process has had."""
    return status_kb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    """Open file descriptors."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _settle(read: Callable[[int], int], pid: int, target: int, timeout: float) -> int:
    """Poll ``read(pid)`` until it is at most ``target`` (bounded); return the last figure."""
    deadline = time.monotonic() + timeout
    value = read(pid)
    while value > target and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read(pid)
    return value


def settle_fds(pid: int, target: int, timeout: float) -> int:
    """Poll until the fd count is at most ``target`` (bounded); return the last count."""
    return _settle(fd_count, pid, target, timeout)


def settle_rss(pid: int, target_kb: int, timeout: float) -> int:
    """Poll until the RSS is at most ``target_kb`` (bounded); return the last figure (KiB).

    Memory an attack left comes back once the proxy is idle: its idle collector looks every
    second (proxy/garbage.py), which a loaded machine can delay."""
    return _settle(rss_kb, pid, target_kb, timeout)


class RssSampler:
    """Samples a process's RSS from a background thread; keeps the maximum seen."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak_kb = rss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError):
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
