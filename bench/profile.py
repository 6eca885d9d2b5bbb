"""Where the proxy's CPU goes: py-spy samples of the proxy under load.

Two recordings of the same load: a flame graph (SVG) to look at, and raw collapsed stacks that
are summed here into shares per module. Only the thread holding the GIL is sampled (`--gil`),
so the access log's writer thread, asleep between batches, does not count as busy.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(
    exe: str, pid: int, seconds: int, fmt: str, out: Path, prefix: list[str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *prefix,
            exe,
            "record",
            "--gil",
            "--nonblocking",  # sampling without pausing the proxy: its figures stay its own
            "--rate",
            "200",
            "--duration",
            str(seconds),
            "--format",
            fmt,
            "--output",
            str(out),
            "--pid",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _where(frame: str) -> str:
    """'name (path:line)' -> what runs it: the proxy's file, else the package (py-spy gives
    paths relative to sys.path)."""
    name, _, rest = frame.partition(" (")
    path = rest.rsplit(":", 1)[0]
    if path.startswith("proxy/"):
        return path
    if path == "asyncio/runners.py":
        return "event loop (uvloop, in C)"
    if "/" in path:
        return path.split("/", 1)[0]
    return Path(path).stem or name


def shares(raw: Path, top: int = 14) -> list[tuple[str, float]]:
    """Self time per module, as fractions of all samples, largest first."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[_where(stack.split(";")[-1])] += int(count)
    if not total:
        return []
    ranked = [(where, n / total) for where, n in own.most_common()]
    rest = sum(share for _, share in ranked[top:])
    return ranked[:top] + ([("everything else", rest)] if rest else [])
