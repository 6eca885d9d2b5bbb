"""H67 soak: long traffic with client aborts, upstream resets and short tokens; opt-in.

    FOUNDRY_PROXY_SOAK_SECONDS=3600 pytest -m soak tests/load/test_soak.py -s

Asserts no token-caused failure, a flat RSS after warm-up (slope under 1 MB/h for runs of 30
minutes or more, where it means something; measured by
least squares over the samples) and flat file descriptors; prints the figures.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import threading
import time

import httpx2
import pytest

from tests.e2e.stack import Stack
from tests.support.chat import CHAT, CHAT_PATH, chat_body
from tests.support.procfs import rss_kb
from tests.support.rawsock import json_post

pytestmark = [pytest.mark.e2e, pytest.mark.soak]


def _abort_midway(url: str) -> None:
    """A streaming request whose client leaves after the first bytes (10 % of traffic)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        steering = {"x-fake-chunks": "50", "x-fake-delay": "0.02"}
        sock.sendall(json_post(CHAT_PATH, chat_body(stream=True), steering))
        sock.recv(512)


@pytest.mark.timeout(0)
def test_h67_soak(fresh_stack: Stack) -> None:
    seconds = float(os.environ.get("FOUNDRY_PROXY_SOAK_SECONDS", "300"))
    s = fresh_stack
    s.entra.token_lifetime = 300  # five-minute tokens: a refresh every ~2.5 minutes
    proxy = s.start_proxy()
    pid = proxy.proc.pid
    stop = time.monotonic() + seconds
    failures: list[str] = []
    counts = {"ok": 0, "aborted": 0, "upstream_5xx": 0}
    samples: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    rng = random.Random(67)

    def worker() -> None:
        with httpx2.Client(timeout=30) as client:
            while time.monotonic() < stop:
                roll = rng.random()
                if roll < 0.10:
                    _abort_midway(s.url)
                    with lock:
                        counts["aborted"] += 1
                    continue
                path = "/v1/status/503" if roll < 0.11 else CHAT_PATH
                r = client.post(s.url + path, json=CHAT)
                with lock:
                    if path.endswith("503") and r.status_code == 503:
                        counts["upstream_5xx"] += 1
                    elif r.status_code == 200:
                        counts["ok"] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started = time.monotonic()
    while time.monotonic() < stop:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        samples.append((time.monotonic() - started, rss_kb(pid) / 1024, fds))
        time.sleep(min(10.0, max(1.0, seconds / 100)))
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    assert not [e for e in s.foundry.journal if e.auth != "ok"], "an expired token went upstream"
    warm = [sample for sample in samples if sample[0] > seconds * 0.2]
    hours = [t / 3600 for t, _, _ in warm]
    slope = statistics.linear_regression(hours, [rss for _, rss, _ in warm]).slope
    fds = [fd for _, _, fd in warm]
    print(
        f"\nsoak {seconds:.0f} s: {counts}, token calls {len(s.entra.calls)}, "
        f"RSS {warm[0][1]:.1f} -> {warm[-1][1]:.1f} MB (slope {slope:+.2f} MB/h), "
        f"fds {min(fds)}-{max(fds)}"
    )
    assert slope < 1.0 or seconds < 1800, "RSS keeps growing"
    assert max(fds) - min(fds) <= 10
