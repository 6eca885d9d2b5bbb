"""The benchmark harness still starts everything and produces its table (tiny mode).

Figures from a run this short mean nothing and are not judged: this only guards the harness.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.processes import run

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("nginx", "wrk")


@pytest.mark.skipif(
    not all(shutil.which(t) or Path(f"/usr/sbin/{t}").exists() for t in TOOLS),
    reason="the benchmark needs nginx and wrk (apt-get install nginx-light wrk; .ci/run does)",
)
def test_tiny_benchmark_produces_the_table(tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)], cwd=ROOT, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = (tmp_path / "latest.md").read_text()
    for row in (
        "CPU per small request, c=32",
        "req/s, c=256",
        "delayed stream: time to first byte",
        "slow streams: completed",
        "required packages imported alone, no proxy module: RSS (MB) | - | - | ",
        "bodies byte-identical to direct |  | True | True |",
        # A harness that measures error pages measures nothing.
        "failed or non-2xx requests (all tests) | 0 | 0 | 0 |",
    ):
        assert row in table, row
    assert "| foundry-proxy |" in table.splitlines()[2]
    # The CPU floor: the bare stack (bench/bare_proxy.py) must forward, or the floor is an
    # error page's cost.
    assert "| the required stack alone (bench/bare_proxy.py: no proxy feature) | " in table
    bare = json.loads((tmp_path / "latest.json").read_text())["observability"]["bare"]
    assert bare["rps"] > 0, bare
    assert bare["errors"] == 0, bare
    assert not bare["socket_errors"], bare
