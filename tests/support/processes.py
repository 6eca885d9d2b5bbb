"""Child processes for tests: started in a process group of their own, output read as it comes,
and always ended whole.

A test that starts a process must not be able to hang the session, whatever happens to it:

* each child gets a new session, so its process group holds it and everything it starts
  (uvicorn's workers, a CLI it runs); ending it kills the group, not just the first process;
* its output is read by daemon threads into lists, so a full pipe never blocks the child and
  a reader left waiting never keeps the interpreter alive;
* every child is tracked until ended: tests/conftest.py ends whatever a test module left.

``run()`` is ``subprocess.run`` on these terms: on a timeout it kills the group, where
``subprocess.run`` kills only the child and then waits, for ever, on pipes a grandchild holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

# Children not yet ended, so that a test module's teardown can end what a failed test left.
_LIVE: set[Child] = set()
_LIVE_LOCK = threading.Lock()

LineWatcher = Callable[[str, str], None]


class Child:
    """One started process (and its process group), its stdout and stderr as lists of lines.

    ``merge`` sends stderr into stdout, keeping the order the process wrote them in.
    ``on_line(stream, line)`` runs in the reader thread for each line as it arrives ("out" or
    "err"), before the next one is read: a test can act at the instant a line appears.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        merge: bool = True,
        on_line: LineWatcher | None = None,
    ) -> None:
        self.argv = list(argv)
        self.out: list[str] = []
        self.err: list[str] = []
        self._on_line = on_line
        self.watch_errors: list[Exception] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        streams: list[tuple[IO[str] | None, list[str], str]] = [(self.proc.stdout, self.out, "out")]
        if not merge:
            streams.append((self.proc.stderr, self.err, "err"))
        self._readers = [
            threading.Thread(target=self._read, args=s, daemon=True, name=f"child-{s[2]}")
            for s in streams
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, lines: list[str], name: str) -> None:
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):  # closed under us by end()
            for line in stream:
                if self._on_line is not None:
                    try:
                        self._on_line(name, line)
                    except Exception as exc:  # noqa: BLE001 - the output must still be read
                        self.watch_errors.append(exc)
                with self._changed:
                    lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def _reading(self) -> bool:
        return any(r.is_alive() for r in self._readers)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float, stream: str = "out"
    ) -> re.Match[str] | None:
        """The first line of ``stream`` matching ``pattern``, waiting up to ``timeout`` s for
        it; None if the deadline passes or the output ends first."""
        regex = re.compile(pattern)
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                for line in lines[checked:]:
                    if found := regex.search(line):
                        return found
                checked = len(lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self._reading():
                    return None
                self._changed.wait(min(left, 0.5))

    def wait(self, timeout: float) -> int | None:
        """The exit status, waiting up to ``timeout`` s; None if it is still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group), if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group, as a terminal does (Ctrl-C, hangup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Ask the process to stop with ``sig``; after ``timeout`` s, kill it. Then end()."""
        self.send_signal(sig)
        self.wait(timeout)
        self.end()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def end(self) -> None:
        """Kill whatever is left of the process group, reap the child and drain its output.

        Safe to call at any time, any number of times; never waits without a bound. If some
        process outside the group still holds the pipes (it made a session of its own), the
        reader threads are left behind: they are daemons and cannot keep pytest alive.
        """
        self.signal_group(signal.SIGKILL)
        self.wait(10)
        for reader in self._readers:
            reader.join(5)
        if not self._reading():
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


def end_all() -> list[str]:
    """End every child not yet ended; return their command lines (for a report)."""
    with _LIVE_LOCK:
        left = list(_LIVE)
    for child in left:
        child.end()
    return [" ".join(child.argv) for child in left]


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion with its output captured (like ``subprocess.run`` with
    ``check=False``). On timeout the whole process group is killed and TimeoutExpired raised
    with the output so far."""
    with Child(argv, env=env, cwd=cwd, merge=False) as child:
        code = child.wait(timeout)
        child.end()
        if code is None:
            raise subprocess.TimeoutExpired(
                child.argv, timeout, output=child.stdout, stderr=child.stderr
            )
        return subprocess.CompletedProcess(child.argv, code, child.stdout, child.stderr)
