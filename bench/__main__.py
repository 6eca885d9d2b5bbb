"""Benchmark foundry-proxy against nginx (the reference proxy) and direct calls, in one run.

    python -m bench [--quick | --tiny] [--reps N] [--install] [--out DIR]

Layout: the proxy under test is pinned to CPU 0; the nginx upstream, the delayed-SSE upstream,
the Entra emulator and every load generator to CPU 1. Runs are interleaved (for each
repetition, for each test, each variant) and every figure is the median over repetitions.
CPU per request comes from /proc (user + system time of the proxy's processes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers, profile
from bench.servers import CLIENT_ID, SECRET, TENANT

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
TOKEN = "Bearer bench-token-0123456789abcdef"  # noqa: S105 - what nginx injects in the bench
CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764115200,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The sea is wide, and its waves keep time.",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 25, "completion_tokens": 11, "total_tokens": 36},
    },
    separators=(",", ":"),
)


@dataclass(frozen=True)
class Mode:
    seconds: float  # each wrk / open-loop run
    reps: int
    sse_count: int  # sequential delayed streams (20 events, 10 ms apart)
    hold_streams: int  # concurrent slow streams
    hold_events: int  # events per slow stream, 250 ms apart
    rates: tuple[int, ...] = (200, 1000)
    workers: bool = True  # also measure --workers 2 against one worker
    peers: bool = True  # LiteLLM's proxy on the same upstream (installed into a cache dir)
    profile: bool = True  # py-spy flame graph of the proxy under load


MODES = {
    "full": Mode(seconds=6, reps=3, sse_count=60, hold_streams=1000, hold_events=40),
    "quick": Mode(seconds=2, reps=1, sse_count=10, hold_streams=300, hold_events=8),
    "tiny": Mode(
        seconds=1,
        reps=1,
        sse_count=2,
        hold_streams=20,
        hold_events=2,
        rates=(200,),
        workers=False,
        peers=False,
        profile=False,
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int) -> list[str]:
    """taskset prefix for one CPU; none for cpu -1 (or on a single-CPU machine)."""
    if cpu < 0:
        return []
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    )  # type: ignore[operator]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Variant:
    def __init__(self, name: str, base: str, proc: subprocess.Popen[bytes] | None) -> None:
        self.name = name
        self.base = base  # URL prefix to which "/chat/completions" etc. are appended
        self.proc = proc
        self.pids = process_tree(proc.pid) if proc else []


class Bench:
    def __init__(self, mode: Mode, out: Path) -> None:
        self.mode = mode
        self.out = out
        self.tmp = Path(tempfile.mkdtemp(prefix="foundry-proxy-bench-"))
        # nginx workers drop to an unprivileged user and must read the SSE body file.
        self.tmp.chmod(0o755)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}  # pid -> its stderr
        self.python = sys.executable
        self.skipped: dict[str, str] = {}  # part of the run -> why it did not run

    # -- processes ---------------------------------------------------------------------------

    def spawn(
        self, args: list[str], cpu: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{Path(args[0]).name}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            pinned(cpu) + args,
            cwd=ROOT,
            env=env,
            # Its own process group, so stop() also reaches what it forks (--workers).
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115
        )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def nginx(self, name: str, server: str, cpu: int) -> subprocess.Popen[bytes]:
        prefix = self.tmp / name
        prefix.mkdir()
        (prefix / "logs").mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 10000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  {server}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return self.spawn([nginx, "-p", str(prefix), "-c", str(conf)], cpu)

    def start(self) -> list[Variant]:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        stream_file = self.tmp / "stream.sse"
        events = [
            "data: "
            + json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "model": "gpt-4o-mini",
                    "choices": [
                        {"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}
                    ],
                }
            )
            + "\n\n"
            for i in range(100)
        ]
        stream_file.write_text("".join(events) + "data: [DONE]\n\n")
        up, slow, entra, ngx, fp = (free_port() for _ in range(5))
        self.spawn([self.python, "-m", "bench.servers", "slow", str(slow)], 1)
        self.spawn([self.python, "-m", "bench.servers", "entra", str(entra)], 1)
        self.nginx(
            "upstream",
            f"""
  server {{
    listen 127.0.0.1:{up} backlog=4096;
    location = /openai/v1/chat/completions {{ default_type application/json; return 200 '{CHAT_JSON}'; }}
    location = /openai/v1/stream {{ default_type text/event-stream; alias {stream_file}; }}
    location /openai/v1/slow {{
      proxy_pass http://127.0.0.1:{slow}; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}""",
            cpu=1,
        )
        nginx_proxy = self.nginx(
            "reference",
            f"""
  upstream up {{ server 127.0.0.1:{up}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{ngx} backlog=4096;
    location /v1/ {{
      proxy_pass http://up/openai/v1/; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Authorization "{TOKEN}"; proxy_buffering off; proxy_request_buffering off;
    }}
  }}""",
            cpu=0,
        )
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "FOUNDRY_PROXY_"))
        } | {
            "FOUNDRY_PROXY_UPSTREAM": f"http://127.0.0.1:{up}",
            "AZURE_AUTHORITY_HOST": f"http://127.0.0.1:{entra}",
            "AZURE_TENANT_ID": TENANT,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": SECRET,
            "FOUNDRY_PROXY_LOG_LEVEL": "warning",
            "FOUNDRY_PROXY_POOL_SIZE": "4096",
            "FOUNDRY_PROXY_MAX_CONCURRENCY": "4096",
            # The benchmark's stream and slow routes are not Azure operations.
            "FOUNDRY_PROXY_POLICY": "open",
        }
        self.proxy_env = env
        self.upstream = f"http://127.0.0.1:{up}"
        # -X importtime for the proxy under test: which modules serving loads, and their cost.
        proxy = self.spawn(
            [self.python, "-m", "proxy", "--port", str(fp)],
            0,
            env | {"PYTHONPROFILEIMPORTTIME": "1"},
        )
        for port in (up, slow, entra, ngx, fp):
            wait_port(port)
        deadline = time.monotonic() + 20
        while self.get(fp, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("foundry-proxy never became ready; logs in " + str(self.tmp))
            time.sleep(0.05)
        # Idle as the issue defines it: started, one request answered, then left alone.
        self.get(fp, "/v1/chat/completions", "POST", b'{"model":"gpt-4o-mini","messages":[]}')
        time.sleep(1)
        self.idle_rss = rss_mb([proxy.pid])
        self.stack_rss = self.stack_floor()
        self.importtime = import_summary(self.logs[proxy.pid])
        return [
            Variant("direct", f"http://127.0.0.1:{up}/openai/v1", None),
            Variant("nginx", f"http://127.0.0.1:{ngx}/v1", nginx_proxy),
            Variant("foundry-proxy", f"http://127.0.0.1:{fp}/v1", proxy),
        ]

    def stack_floor(self) -> float | None:
        """RSS of a fresh interpreter that imports only the packages the design requires
        (the server, the upstream client, settings, the framework, the token client) and no
        module of foundry-proxy: the floor under the proxy's idle figure."""
        done = subprocess.run(
            [
                self.python,
                "-c",
                "import uvloop, uvicorn, aiohttp, pydantic_settings, starlette, httpx2, cachetools"
                "\nprint(next(l.split()[1] for l in open('/proc/self/status') "
                "if l.startswith('VmRSS:')))",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            self.skipped["required-stack floor"] = done.stderr.strip()[-300:]
            return None
        return int(done.stdout.strip()) / 1024

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def get(
        port: int, path: str, method: str = "GET", body: bytes | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
            )
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    # -- measurements ------------------------------------------------------------------------

    def wrk(
        self,
        variant: Variant,
        path: str,
        connections: int,
        post: bool,
        auth: str = "Bearer local-dummy",
        seconds: float | None = None,
    ) -> dict[str, Any]:
        script = self.tmp / f"post-{hashlib.sha256(auth.encode()).hexdigest()[:8]}.lua"
        body = json.dumps(
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "user", "content": "Write one short sentence about the sea."}
                ],
            }
        )
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = [[{body}]]\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "{auth}"\n'
        )
        args = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds or self.mode.seconds))}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        if post:
            args += ["-s", str(script)]
        before = cpu_ticks(variant.pids)
        done = subprocess.run(
            pinned(1) + args + [variant.base + path], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            said = (done.stderr + done.stdout).strip()[-400:]
            raise RuntimeError(f"wrk against {variant.name} exited {done.returncode}: {said}")
        out = done.stdout
        used = cpu_ticks(variant.pids) - before
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: .*", out)
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _wrk_percentile(out, "50"),
            "p99_ms": _wrk_percentile(out, "99"),
            "cpu_us": used / TICK * 1e6 / requests if variant.pids and requests else None,
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else "",
        }

    def client(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        out = subprocess.run(
            [*pinned(1), self.python, "-m", "bench.clients", *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=timeout,
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def hold(self, variant: Variant) -> dict[str, Any]:
        mode = self.mode
        url = f"{variant.base}/slow?n={mode.hold_events}&delay_ms=250"
        peak = [rss_mb(variant.pids)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak.append(rss_mb(variant.pids))

        sampler = threading.Thread(target=sample)
        sampler.start()
        before, started = cpu_ticks(variant.pids), time.monotonic()
        deadline = mode.hold_events * 0.25 * 4 + 10
        result = self.client(
            "hold", url, str(mode.hold_streams), str(deadline), timeout=deadline + 30
        )
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        used = cpu_ticks(variant.pids) - before
        result["peak_rss_mb"] = max(peak) if variant.pids else None
        result["cpu_pct"] = 100 * used / TICK / elapsed if variant.pids else None
        return result

    def workers_scaling(self, single: Variant) -> dict[str, Any]:
        """req/s at 64 connections: the one-worker proxy pinned to CPU 0 vs two workers free to
        use both cores (so they share CPU 1 with wrk and the upstream)."""
        port = free_port()
        proc = self.spawn(
            [self.python, "-m", "proxy", "--port", str(port), "--workers", "2"], -1, self.proxy_env
        )
        wait_port(port)
        deadline = time.monotonic() + 20
        while self.get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        double = Variant("foundry-proxy x2", f"http://127.0.0.1:{port}/v1", proc)
        double.pids = sorted({p for pid in double.pids for p in process_tree(pid)})
        runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
        for _ in range(self.mode.reps):
            runs["1"].append(self.wrk(single, "/chat/completions", 64, True))
            runs["2"].append(self.wrk(double, "/chat/completions", 64, True))
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        return {n: _median(r) for n, r in runs.items()}

    def observability_cost(self) -> dict[str, Any]:
        """Fresh processes pinned to CPU 0, run alternately: the proxy with /metrics and the
        access log (the default), the proxy without them, and the bare stack (bench/bare_proxy.py:
        the required packages forwarding with nothing of foundry-proxy). What observability
        costs per request, and the floor under the whole figure. All start fresh, so none
        carries the heap of the earlier tests."""
        procs: dict[str, tuple[subprocess.Popen[bytes], Variant]] = {}
        off = {"FOUNDRY_PROXY_METRICS": "false", "FOUNDRY_PROXY_ACCESS_LOG": "off"}
        for name, extra in (("on", {}), ("off", off), ("bare", None)):
            port = free_port()
            if extra is None:
                command = [self.python, "-m", "bench.bare_proxy", str(port), self.upstream]
                proc = self.spawn(command, 0, self.proxy_env)
            else:
                command = [self.python, "-m", "proxy", "--port", str(port)]
                proc = self.spawn(command, 0, self.proxy_env | extra)
            wait_port(port)
            if extra is not None:
                deadline = time.monotonic() + 20
                while self.get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.05)
            procs[name] = (proc, Variant(f"proxy {name}", f"http://127.0.0.1:{port}/v1", proc))
        time.sleep(0.5)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in procs}
        for _ in range(max(2, self.mode.reps)):
            for name, (_, variant) in procs.items():
                runs[name].append(self.wrk(variant, "/chat/completions", 32, True))
        for proc, _ in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        return {n: _median(r) for n, r in runs.items()}

    def litellm(self, proxy: Variant) -> dict[str, Any] | None:
        """LiteLLM's proxy (one worker, pinned to CPU 0 like foundry-proxy) against foundry-proxy
        on the same nginx upstream, alternately, small requests at c=32."""
        command, reason = peers.litellm_command()
        if command is None:
            self.skipped["LiteLLM"] = reason
            return None
        port = free_port()
        config = self.tmp / "litellm.yaml"
        peers.litellm_config(config, self.upstream)
        args = [str(command), "--config", str(config), "--host", "127.0.0.1"]
        proc = subprocess.Popen(
            [*pinned(0), *args, "--port", str(port), "--num_workers", "1"],
            cwd=self.tmp,
            env=peers.litellm_env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "litellm.log", "wb"),  # noqa: SIM115
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 240  # it imports for a long while
        while self.get(port, "/health/liveliness")[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                self.skipped["LiteLLM"] = f"it did not start; its log: {self.tmp / 'litellm.log'}"
                return None
            time.sleep(0.5)
        time.sleep(1)
        peer = Variant("LiteLLM", f"http://127.0.0.1:{port}/v1", proc)
        peer.pids = sorted({p for pid in peer.pids for p in process_tree(pid)})
        auth = f"Bearer {peers.MASTER_KEY}"
        runs: dict[str, list[dict[str, Any]]] = {"litellm": [], "proxy": []}
        # Both share CPU 0; the one not measured is stopped (SIGSTOP) meanwhile, so that its
        # background work (LiteLLM's own loops) takes no CPU from the other's run.
        for _ in range(self.mode.reps):
            with _paused(proxy.pids):
                runs["litellm"].append(self.wrk(peer, "/chat/completions", 32, True, auth=auth))
            with _paused(peer.pids):
                runs["proxy"].append(self.wrk(proxy, "/chat/completions", 32, True))
        result = {n: _median(r) for n, r in runs.items()}
        result["idle_rss_mb"] = rss_mb(peer.pids)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        return result

    def flame(self, proxy: Variant, out: Path) -> dict[str, Any] | None:
        """The proxy under small requests at c=32, sampled by py-spy twice: a flame graph (SVG)
        and raw stacks summed into shares; each share times the CPU per request of its run."""
        exe = profile.py_spy()
        if exe is None:
            self.skipped["flame graph"] = "py-spy not found (pip install py-spy)"
            return None
        out.mkdir(parents=True, exist_ok=True)
        seconds = max(4, round(2 * self.mode.seconds))
        cpu: list[float] = []
        for fmt, path in (("flamegraph", out / "flame.svg"), ("raw", out / "flame.txt")):
            spy = profile.record(exe, proxy.pids[0], seconds, fmt, path, pinned(1))
            time.sleep(0.5)
            cpu.append(self.wrk(proxy, "/chat/completions", 32, True, seconds=seconds)["cpu_us"])
            _, err = spy.communicate(timeout=seconds + 60)
            if spy.returncode != 0 or not path.exists():
                self.skipped["flame graph"] = (
                    f"py-spy failed: {err.decode(errors='replace')[-300:]}"
                )
                return None
        per_request = statistics.median(cpu)
        return {
            "cpu_us": per_request,
            "shares": [
                (where, share, share * per_request)
                for where, share in profile.shares(out / "flame.txt")
            ],
        }

    def identical(self, variants: list[Variant]) -> dict[str, bool]:
        def fetch(v: Variant, path: str, post: bool) -> bytes:
            port = int(v.base.split(":")[2].split("/")[0])
            prefix = "/" + v.base.split("/", 3)[3]
            body = b'{"model":"gpt-4o-mini","messages":[]}' if post else None
            status, content = self.get(port, prefix + path, "POST" if post else "GET", body)
            if status != 200:
                raise RuntimeError(f"{v.name} {path} answered {status}: the setup is broken")
            return content

        out = {}
        for v in variants[1:]:
            same_json = (
                hashlib.sha256(fetch(v, "/chat/completions", True)).digest()
                == hashlib.sha256(fetch(variants[0], "/chat/completions", True)).digest()
            )
            same_sse = fetch(v, "/stream", False) == fetch(variants[0], "/stream", False)
            slow = fetch(v, "/slow?n=20&delay_ms=5", False)
            out[v.name] = (
                same_json
                and same_sse
                and slow.count(b"data: ") == 21
                and slow.endswith(b"data: [DONE]\n\n")
            )
        return out

    def run(self) -> dict[str, Any]:
        variants = self.start()
        mode = self.mode
        tests: list[tuple[str, Any]] = [
            ("chat_c32", lambda v: self.wrk(v, "/chat/completions", 32, True)),
            ("chat_c256", lambda v: self.wrk(v, "/chat/completions", 256, True)),
            ("stream_c32", lambda v: self.wrk(v, "/stream", 32, False)),
            *[
                (
                    f"openloop_{rate}",
                    lambda v, r=rate: self.client(
                        "openloop", v.base + "/chat/completions", str(r), str(mode.seconds)
                    ),
                )
                for rate in mode.rates
            ],
            (
                "sse_seq",
                lambda v: self.client(
                    "sse", v.base + "/slow?n=20&delay_ms=10", str(mode.sse_count)
                ),
            ),
            ("hold", self.hold),
        ]
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {
            t: {v.name: [] for v in variants} for t, _ in tests
        }
        identical = self.identical(variants)
        for rep in range(mode.reps):
            for name, test in tests:
                for variant in variants:
                    print(
                        f"  rep {rep + 1}/{mode.reps} {name:<14} {variant.name}",
                        file=sys.stderr,
                        flush=True,
                    )
                    raw[name][variant.name].append(test(variant))
                    time.sleep(0.5)
        scaling = None
        if mode.workers:
            try:
                scaling = self.workers_scaling(variants[2])
            except RuntimeError as exc:  # reported, and the rest of the run goes on
                self.skipped["--workers 2"] = str(exc)
        observability = self.observability_cost()
        litellm = self.litellm(variants[2]) if mode.peers else None
        flame = self.flame(variants[2], self.out) if mode.profile else None
        medians = {
            test: {v: _median(runs) for v, runs in by_variant.items()}
            for test, by_variant in raw.items()
        }
        return {
            "medians": medians,
            "identical": identical,
            "idle_rss_mb": self.idle_rss,
            "stack_rss_mb": self.stack_rss,
            "workers": scaling,
            "observability": observability,
            "litellm": litellm,
            "flame": flame,
            "importtime": self.importtime,
            "skipped": self.skipped,
            "raw": raw,
        }


@contextlib.contextmanager
def _paused(pids: list[int]) -> Iterator[None]:
    """These processes stopped (SIGSTOP) for the block, continued after whatever happens."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def import_summary(log: Path) -> dict[str, Any]:
    """From a `python -X importtime` log: modules imported, their total time, the packages
    that cost most (cumulative time of their top-level import)."""
    own_us = 0
    modules = 0
    packages: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        head, cumulative, name = (part.strip() for part in line.split("|", 2))
        own = head.removeprefix("import time:").strip()
        if not own.isdigit():
            continue  # the header line
        modules += 1
        own_us += int(own)
        top = name.split(".")[0]
        packages[top] = max(packages.get(top, 0), int(cumulative))
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])[:8]
    return {
        "modules": modules,
        "total_ms": own_us / 1000,
        "top_ms": [(n, us / 1000) for n, us in ranked],
    }


def _wrk_percentile(out: str, which: str) -> float | None:
    """One line of wrk's --latency distribution ("99%   31.20ms"), in milliseconds."""
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if found is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return float(found.group(1)) * scale


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = runs[0].keys()
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if values else runs[0][key]
    # The least disturbed repetition, shown beside the median: on a shared host the other
    # tenants move the median of the same code by 20 % between runs (BENCHMARKS.md).
    cpu = [r["cpu_us"] for r in runs if isinstance(r.get("cpu_us"), int | float)]
    out["cpu_us_best"] = min(cpu) if cpu else None
    return out


# -- report ------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _added(value: float | None) -> str:
    """A difference against direct, with its sign (a proxy can measure a hair under direct)."""
    return "-" if value is None else f"{value:+,.2f}"


def report(
    result: dict[str, Any], mode_name: str
) -> tuple[str, list[tuple[str, str, bool | None]]]:
    m = result["medians"]
    d, n, f = "direct", "nginx", "foundry-proxy"

    def added(test: str, key: str, variant: str) -> float | None:
        a, b = m[test][variant].get(key), m[test][d].get(key)
        return a - b if a is not None and b is not None else None

    c32, c256 = m["chat_c32"], m["chat_c256"]
    rows = [
        (
            "CPU per small request, c=32 (µs): median (best)",
            "-",
            f"{_f(c32[n]['cpu_us'])} ({_f(c32[n].get('cpu_us_best'))})",
            f"{_f(c32[f]['cpu_us'])} ({_f(c32[f].get('cpu_us_best'))})",
            _ratio(c32[f]["cpu_us"], c32[n]["cpu_us"], "x nginx"),
        ),
        (
            "CPU per small request, c=256 (µs)",
            "-",
            _f(c256[n]["cpu_us"]),
            _f(c256[f]["cpu_us"]),
            _ratio(c256[f]["cpu_us"], c32[f]["cpu_us"], "x its c=32"),
        ),
        (
            "req/s, c=32",
            _f(c32[d]["rps"]),
            _f(c32[n]["rps"]),
            _f(c32[f]["rps"]),
            _ratio(c32[f]["rps"], c32[n]["rps"], " of nginx", pct=True),
        ),
        (
            "latency c=32: p50 / p99 (ms)",
            f"{_f(c32[d]['p50_ms'], 2)} / {_f(c32[d]['p99_ms'], 2)}",
            f"{_f(c32[n]['p50_ms'], 2)} / {_f(c32[n]['p99_ms'], 2)}",
            f"{_f(c32[f]['p50_ms'], 2)} / {_f(c32[f]['p99_ms'], 2)}",
            _ratio(c32[f]["p99_ms"], c32[f]["p50_ms"], "x: foundry-proxy's p99 / p50"),
        ),
        (
            "req/s, c=256",
            _f(c256[d]["rps"]),
            _f(c256[n]["rps"]),
            _f(c256[f]["rps"]),
            _ratio(c256[f]["rps"], c256[n]["rps"], " of nginx", pct=True),
        ),
        (
            "100-event streams/s, c=32",
            _f(m["stream_c32"][d]["rps"]),
            _f(m["stream_c32"][n]["rps"]),
            _f(m["stream_c32"][f]["rps"]),
            _ratio(m["stream_c32"][f]["rps"], m["stream_c32"][n]["rps"], " of nginx", pct=True),
        ),
        (
            "CPU per 100-event stream (µs)",
            "-",
            _f(m["stream_c32"][n]["cpu_us"]),
            _f(m["stream_c32"][f]["cpu_us"]),
            _ratio(m["stream_c32"][f]["cpu_us"], m["stream_c32"][n]["cpu_us"], "x nginx"),
        ),
    ]
    for rate in MODES[mode_name].rates:
        t = f"openloop_{rate}"
        rows.append(
            (
                f"open loop {rate} req/s: p50 / p99 (ms)",
                f"{_f(m[t][d]['p50_ms'], 2)} / {_f(m[t][d]['p99_ms'], 2)}",
                f"{_added(added(t, 'p50_ms', n))} / {_added(added(t, 'p99_ms', n))}",
                f"{_added(added(t, 'p50_ms', f))} / {_added(added(t, 'p99_ms', f))}",
                "added vs direct",
            )
        )
    s = m["sse_seq"]
    rows += [
        (
            "delayed stream: time to first byte p50 (ms)",
            _f(s[d]["ttfb_p50_ms"], 2),
            f"{_added(added('sse_seq', 'ttfb_p50_ms', n))}",
            f"{_added(added('sse_seq', 'ttfb_p50_ms', f))}",
            "added vs direct",
        ),
        (
            "delayed stream: event latency p50 / p99 (ms)",
            f"{_f(s[d]['event_p50_ms'], 2)} / {_f(s[d]['event_p99_ms'], 2)}",
            f"{_f(s[n]['event_p50_ms'], 2)} / {_f(s[n]['event_p99_ms'], 2)}",
            f"{_f(s[f]['event_p50_ms'], 2)} / {_f(s[f]['event_p99_ms'], 2)}",
            "",
        ),
    ]
    h = m["hold"]
    streams = h[f]["streams"]
    rows += [
        (
            f"{streams} slow streams: completed",
            _f(h[d]["completed"]),
            _f(h[n]["completed"]),
            _f(h[f]["completed"]),
            "",
        ),
        (
            f"{streams} slow streams: event p99 (ms)",
            _f(h[d]["event_p99_ms"], 1),
            _f(h[n]["event_p99_ms"], 1),
            _f(h[f]["event_p99_ms"], 1),
            "",
        ),
        (
            f"{streams} slow streams: peak RSS (MB)",
            "-",
            _f(h[n]["peak_rss_mb"], 1),
            _f(h[f]["peak_rss_mb"], 1),
            "",
        ),
        (
            f"{streams} slow streams: CPU (% of a core)",
            "-",
            _f(h[n]["cpu_pct"], 1),
            _f(h[f]["cpu_pct"], 1),
            "",
        ),
        ("idle RSS after one request (MB)", "-", "-", _f(result["idle_rss_mb"], 1), ""),
        (
            "required packages imported alone, no proxy module: RSS (MB)",
            "-",
            "-",
            _f(result.get("stack_rss_mb"), 1),
            "the floor",
        ),
        (
            "failed or non-2xx requests (all tests)",
            _f(_errors(m, d)),
            _f(_errors(m, n)),
            _f(_errors(m, f)),
            "",
        ),
        (
            "bodies byte-identical to direct",
            "",
            str(result["identical"].get(n)),
            str(result["identical"].get(f)),
            "",
        ),
    ]
    lines = ["| measure | direct | nginx | foundry-proxy | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    if result.get("workers"):
        w = result["workers"]
        lines += [
            "",
            "| --workers (wrk -t1 -c64 on CPU 1; one worker pinned to CPU 0, two free to use both) | req/s | CPU per request (µs) |",
            "|---|---|---|",
            f"| 1 worker | {_f(w['1']['rps'])} | {_f(w['1']['cpu_us'])} |",
            f"| 2 workers | {_f(w['2']['rps'])} ({_ratio(w['2']['rps'], w['1']['rps'], 'x')}) | {_f(w['2']['cpu_us'])} |",
        ]
    if result.get("observability"):
        o = result["observability"]
        lines += [
            "",
            "| metrics + access log, and the floor (wrk c=32; three fresh processes pinned to CPU 0, run alternately) | req/s | CPU per request (µs) |",
            "|---|---|---|",
            f"| on (default) | {_f(o['on']['rps'])} | {_f(o['on']['cpu_us'])} |",
            f"| off | {_f(o['off']['rps'])} | {_f(o['off']['cpu_us'])} ({_ratio(o['on']['cpu_us'], o['off']['cpu_us'], 'x with them on')}) |",
        ]
        lines.append(
            f"| the required stack alone (bench/bare_proxy.py: no proxy feature) | {_f(o['bare']['rps'])} | {_f(o['bare']['cpu_us'])} (the floor) |"
        )
    lines += _extra_tables(result)
    targets = _targets(result, mode_name)
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [
        f"| {t} | {v} | {'yes' if ok else 'no' if ok is False else '-'} |" for t, v, ok in targets
    ]
    return "\n".join(lines), targets


def _extra_tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    peer = result.get("litellm")
    if peer:
        lit, fp = peer["litellm"], peer["proxy"]
        lines += [
            "",
            "| vs LiteLLM (wrk -t1 -c32 small requests; both pinned to CPU 0, run alternately) "
            "| req/s | CPU per request (µs) | p50 / p99 (ms) |",
            "|---|---|---|---|",
            f"| LiteLLM proxy (1 worker) | {_f(lit['rps'], 1)} | {_f(lit['cpu_us'])} "
            f"| {_f(lit['p50_ms'], 1)} / {_f(lit['p99_ms'], 1)} |",
            f"| foundry-proxy | {_f(fp['rps'])} ({_ratio(fp['rps'], lit['rps'], 'x LiteLLM')}) "
            f"| {_f(fp['cpu_us'])} ({_ratio(lit['cpu_us'], fp['cpu_us'], 'x less')}) "
            f"| {_f(fp['p50_ms'], 1)} / {_f(fp['p99_ms'], 1)} |",
            f"| LiteLLM idle RSS after the runs (MB) | {_f(peer['idle_rss_mb'], 1)} | | |",
        ]
    flame = result.get("flame")
    if flame:
        lines += [
            "",
            f"| where a small request's {_f(flame['cpu_us'])} µs go (py-spy --gil, self time "
            "by module; flame.svg) | share | µs |",
            "|---|---|---|",
        ]
        lines += [f"| {w} | {100 * sh:.1f} % | {us:.0f} |" for w, sh, us in flame["shares"]]
    imports = result.get("importtime")
    if imports:
        top = ", ".join(f"{n} {ms:.0f}" for n, ms in imports["top_ms"])
        lines += [
            "",
            f"python -X importtime of the proxy under test: {imports['modules']} modules, "
            f"{imports['total_ms']:.0f} ms in all; largest (ms, cumulative): {top}.",
        ]
    for part, reason in (result.get("skipped") or {}).items():
        lines += ["", f"{part}: skipped, {reason}"]
    return lines


def _errors(medians: dict[str, Any], variant: str) -> float:
    return sum(by_variant[variant].get("errors") or 0 for by_variant in medians.values())


def _ratio(a: float | None, b: float | None, suffix: str, pct: bool = False) -> str:
    if not a or not b:
        return "-"
    return f"{100 * a / b:.1f} %{suffix}" if pct else f"{a / b:.2f}{suffix}"


def _targets(result: dict[str, Any], mode_name: str) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the benchmark issue."""
    m = result["medians"]
    f, d = "foundry-proxy", "direct"

    def added(test: str, key: str) -> float | None:
        if test not in m:
            return None
        return float(m[test][f][key] - m[test][d][key])

    c32, c256 = m["chat_c32"][f]["cpu_us"], m["chat_c256"][f]["cpu_us"]
    p50, p99 = m["chat_c32"][f].get("p50_ms"), m["chat_c32"][f].get("p99_ms")
    w, peer = result.get("workers"), result.get("litellm")
    h = m["hold"][f]
    n = h["streams"]
    # (target, measured value, limit, format, at least instead of at most)
    rows: list[tuple[str, float | None, float, str, bool]] = [
        ("CPU per small request c=32 <= 200 µs", c32, 200, "{:.0f} µs", False),
        (
            "CPU per small request c=256 <= 1.5x c=32",
            c256 / c32 if c256 and c32 else None,
            1.5,
            "{:.2f}x",
            False,
        ),
        (
            "open loop 1,000 req/s: added p50 <= 1 ms",
            added("openloop_1000", "p50_ms"),
            1,
            "{:+.2f} ms",
            False,
        ),
        (
            "open loop 1,000 req/s: added p99 <= 2 ms",
            added("openloop_1000", "p99_ms"),
            2,
            "{:+.2f} ms",
            False,
        ),
        (
            "added time to first byte <= 1 ms",
            added("sse_seq", "ttfb_p50_ms"),
            1,
            "{:+.2f} ms",
            False,
        ),
        (
            "added per-event latency p50 <= 0.2 ms",
            added("sse_seq", "event_p50_ms"),
            0.2,
            "{:+.2f} ms",
            False,
        ),
        (f"{n} slow streams: 100 % complete", 100 * h["completed"] / n, 100, "{:.1f} %", True),
        (f"{n} slow streams: event p99 <= 20 ms", h["event_p99_ms"], 20, "{:.1f} ms", False),
        (f"{n} slow streams: peak RSS <= 100 MB", h["peak_rss_mb"], 100, "{:.1f} MB", False),
        (f"{n} slow streams: <= 25 % of a core", h["cpu_pct"], 25, "{:.1f} %", False),
        ("idle RSS after one request <= 40 MB", result["idle_rss_mb"], 40, "{:.1f} MB", False),
        ("c=32: p99 <= 3x p50", p99 / p50 if p50 and p99 else None, 3, "{:.2f}x", False),
        (
            "--workers 2: >= 1.7x the req/s of one",
            w["2"]["rps"] / w["1"]["rps"] if w else None,
            1.7,
            "{:.2f}x",
            True,
        ),
        (
            "LiteLLM on the same upstream: >= 50x its req/s",
            peer["proxy"]["rps"] / peer["litellm"]["rps"]
            if peer and peer["litellm"]["rps"]
            else None,
            50,
            "{:.0f}x",
            True,
        ),
    ]
    out: list[tuple[str, str, bool | None]] = []
    for name, value, limit, fmt, at_least in rows:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        if mode_name != "full":
            met = None  # short runs: shown, not judged
        shown = "-" if value is None else fmt.format(value)
        if name.startswith("CPU per small request c=32") and value is not None:
            best = m["chat_c32"][f].get("cpu_us_best")
            shown += f" (median; best repetition {_f(best)} µs)"
        out.append((name, shown, met))
    return out


def chart(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    m = result["medians"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    tests = [
        ("chat_c32", "small request\nc=32"),
        ("chat_c256", "small request\nc=256"),
        ("stream_c32", "100-event\nstream"),
    ]
    xs = range(len(tests))
    for offset, (variant, colour) in enumerate(
        (("nginx", "#8da0cb"), ("foundry-proxy", "#fc8d62"))
    ):
        values = [m[t][variant]["cpu_us"] or 0 for t, _ in tests]
        left.bar([x + offset * 0.38 for x in xs], values, 0.38, label=variant, color=colour)
    left.set_xticks([x + 0.19 for x in xs], [label for _, label in tests])
    left.set_ylabel("CPU µs per request / stream (lower is better)")
    left.set_yscale("log")
    left.legend()
    rates = [k for k in m if k.startswith("openloop_")]
    labels, nginx_vals, fp_vals = [], [], []
    for key in rates:
        for q in ("p50_ms", "p99_ms"):
            labels.append(f"{key.split('_')[1]} req/s\n{q.split('_')[0]}")
            nginx_vals.append(m[key]["nginx"][q] - m[key]["direct"][q])
            fp_vals.append(m[key]["foundry-proxy"][q] - m[key]["direct"][q])
    labels.append("first byte\np50")
    nginx_vals.append(m["sse_seq"]["nginx"]["ttfb_p50_ms"] - m["sse_seq"]["direct"]["ttfb_p50_ms"])
    fp_vals.append(
        m["sse_seq"]["foundry-proxy"]["ttfb_p50_ms"] - m["sse_seq"]["direct"]["ttfb_p50_ms"]
    )
    xs2 = range(len(labels))
    right.bar([x for x in xs2], nginx_vals, 0.38, label="nginx", color="#8da0cb")
    right.bar([x + 0.38 for x in xs2], fp_vals, 0.38, label="foundry-proxy", color="#fc8d62")
    right.set_xticks([x + 0.19 for x in xs2], labels)
    right.set_ylabel("latency added to direct calls (ms)")
    right.legend()
    fig.suptitle("foundry-proxy vs nginx, one core each, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def check_tools(install: bool) -> None:
    missing = [
        t
        for t in ("nginx", "wrk", "taskset")
        if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()
    ]
    if missing and install:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk", "util-linux"], check=True
        )
        missing = [
            t
            for t in ("nginx", "wrk")
            if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()
        ]
    if missing:
        sys.exit(
            f"bench needs {', '.join(missing)}: apt-get install nginx-light wrk (or run with --install as root)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quick",
        action="store_true",
        help="2 s runs, 1 repetition, 300 slow streams (under 2 minutes)",
    )
    group.add_argument(
        "--tiny", action="store_true", help="a smoke run that only checks the harness works"
    )
    parser.add_argument("--reps", type=int, help="repetitions (default: 3 full, 1 quick)")
    parser.add_argument(
        "--no-litellm", action="store_true", help="skip the LiteLLM comparison (and its install)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy flame graph")
    parser.add_argument(
        "--install", action="store_true", help="apt-get install nginx-light and wrk if missing"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where to write latest.md/.json/.png",
    )
    args = parser.parse_args()
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    if args.reps:
        mode = dataclasses.replace(mode, reps=args.reps)
    if args.no_litellm:
        mode = dataclasses.replace(mode, peers=False)
    if args.no_profile:
        mode = dataclasses.replace(mode, profile=False)
    check_tools(args.install)
    bench = Bench(mode, args.out)
    started = time.monotonic()
    try:
        result = bench.run()
    finally:
        bench.stop()
    table, _ = report(result, mode_name)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    header = (
        f"mode {mode_name}: {mode.reps} repetition(s) of {mode.seconds:g} s runs, medians; "
        f"proxy pinned to CPU 0, everything else to CPU 1; {machine}; took {time.monotonic() - started:.0f} s"
    )
    print(header)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(header + "\n\n" + table + "\n")
    (args.out / "latest.json").write_text(
        json.dumps({"mode": mode_name, "machine": machine, **result}, indent=1)
    )
    if chart(result, args.out / "latest.png"):
        print(f"\nchart: {args.out / 'latest.png'}")
    else:
        print("\nchart skipped: pip install matplotlib (or the [bench] extra)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
