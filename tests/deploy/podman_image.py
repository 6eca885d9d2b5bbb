"""The real container image, built from the repository's Dockerfile and run with podman.

Used by tests/deploy/test_image_run.py and, as ``python -m tests.deploy.podman_image``, to measure
the figures in BENCHMARKS.md ("Image"). Every podman call has a timeout; every container started
here is removed by its context manager whatever happens.

This machine cannot reach a container registry, so the Dockerfile's base image
(``debian:<suite>-slim``) is made from Debian's package mirror by scripts/debian-slim-base and
tagged with the official name; it is kept as a tarball in a cache directory between runs on the
same machine, and made afresh when that is missing. Where the official image is already in
podman's storage (pulled from a registry), it is used as it is.

Flags this sandbox needs and that change nothing in the image users get (docs/container.md):
``--runtime runc`` (crun refuses these hybrid cgroups), ``--ulimit`` at the hard limits already in
force (there is no CAP_SYS_RESOURCE to raise them), the host's CA bundle mounted on the image's
empty /mnt with ``PIP_CERT`` as a build argument of the build stage only (this network inspects
TLS), ``--network host``, ``--no-cache`` (every test run builds for real) and ``--format docker``
(the OCI format has no HEALTHCHECK).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx2

from tests.fakes.entra import FakeEntra
from tests.fakes.foundry import FakeFoundry
from tests.fakes.serve import ServerThread
from tests.fakes.tokens import RecordingIssuer

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BASE_SCRIPT = REPO / "scripts" / "debian-slim-base"
#: What the base script's import writes as the image's comment, followed by its own hash.
STAND_IN = "debian-slim-base"
RUNTIME = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
NONROOT = "65532:65532"


class PodmanUnavailable(Exception):
    """podman is missing or cannot run at all on this machine: the only reason to skip."""


class PodmanError(AssertionError):
    """A podman command failed or timed out; the message holds its command line and output."""


@dataclass(frozen=True)
class Podman:
    exe: str

    @classmethod
    def find(cls) -> Podman:
        exe = shutil.which("podman")
        if exe is None:
            raise PodmanUnavailable(
                "podman is not installed, so the image was neither built nor run "
                "(.ci/run installs it: apt-get install podman runc debootstrap)"
            )
        podman = cls(exe)
        info = podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
        if info.returncode != 0:
            raise PodmanUnavailable(f"podman cannot run here: {info.stderr.strip()[-600:]}")
        return podman

    def run(
        self,
        *args: str,
        timeout: float,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        command = [self.exe, *RUNTIME, *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanError(f"timed out after {timeout:g} s: {' '.join(command)}") from exc
        if check and done.returncode != 0:
            output = (done.stdout + done.stderr)[-4000:]
            raise PodmanError(f"exit {done.returncode}: {' '.join(command)}\n{output}")
        return done

    def dangling(self) -> set[str]:
        """The IDs of untagged images."""
        out = self.run("images", "--quiet", "--no-trunc", "--filter", "dangling=true", timeout=60)
        return set(out.stdout.split())

    def inspect(self, kind: str, name: str) -> dict[str, object]:
        out = self.run(kind, "inspect", name, timeout=60).stdout
        found = json.loads(out)
        assert isinstance(found, list), out
        assert len(found) == 1, out
        item = found[0]
        assert isinstance(item, dict)
        return item


# ---- the base image ---------------------------------------------------------------------------


def base_image_name() -> str:
    """The Dockerfile's default base (its ``ARG BASE=...``)."""
    m = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert m, "the Dockerfile names its base in a global `ARG BASE=...`"
    return m[1]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "foundry-proxy"


def ensure_base(podman: Podman, log: list[str]) -> str:
    """The base image in podman's storage: official, or this script's stand-in (current)."""
    name = base_image_name()
    m = re.fullmatch(r"(?:docker\.io/library/)?debian:(\w+)-slim", name)
    assert m, f"the base {name} is not a Debian slim image: tests cannot make a stand-in"
    suite = m[1]
    script_hash = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()[:16]
    marker = f"{STAND_IN} {script_hash}"
    present = podman.run("image", "exists", name, timeout=60, check=False).returncode == 0
    if present:
        comment = str(podman.inspect("image", name).get("Comment") or "")
        if not comment.startswith(STAND_IN) or comment.startswith(marker):
            log.append(f"base {name}: already present ({comment or 'from a registry'})")
            return name
    tarball = cache_dir() / f"debian-{suite}-slim-{script_hash}.tar"
    if not tarball.is_file():
        if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
            raise PodmanError(
                f"{name} is not in podman's storage and debootstrap is missing to make it "
                "(apt-get install debootstrap, or pull the image where a registry is reachable)"
            )
        tarball.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        _run_script(
            [str(BASE_SCRIPT), "--suite", suite, "--tar", str(tarball), "--tag", ""], timeout=900
        )
        log.append(f"base {name}: debootstrapped in {time.monotonic() - started:.0f} s")
        for stale in tarball.parent.glob(f"debian-{suite}-slim-*.tar"):
            if stale != tarball:
                stale.unlink(missing_ok=True)
    podman.run(
        "import",
        "--quiet",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["bash"]',
        "--message",
        f"{marker} {suite}",
        str(tarball),
        name,
        timeout=300,
    )
    log.append(f"base {name}: imported from {tarball}")
    return name


def _run_script(command: list[str], timeout: float) -> None:
    # Its own process group, so that a timeout also ends debootstrap and its children.
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise PodmanError(f"timed out after {timeout:g} s: {' '.join(command)}") from None
    if proc.returncode != 0:
        raise PodmanError(f"exit {proc.returncode}: {' '.join(command)}\n{out[-4000:]}")


# ---- the build ----------------------------------------------------------------------------------


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's own pip trusts (a TLS-inspecting network's CA is in it)."""
    candidates = [
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_image(podman: Podman, tag: str, log: list[str], timeout: float = 1200) -> None:
    """``podman build`` of the repository's Dockerfile, exactly as users run it plus the
    sandbox's flags (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="foundry-proxy-build-") as tmp:
        flags = [*ULIMITS, "--network", "host", "--no-cache", "--pull=never", "--format", "docker"]
        ca = host_ca_bundle()
        if ca is not None:
            # /mnt exists, empty, in Debian's image: mounting on it leaves no trace in a layer.
            shutil.copyfile(ca, Path(tmp) / "ca.pem")
            flags += ["--volume", f"{tmp}:/mnt:ro", "--build-arg", "PIP_CERT=/mnt/ca.pem"]
        if index := os.environ.get("PIP_INDEX_URL"):
            flags += ["--build-arg", f"PIP_INDEX_URL={index}"]
        dangling = podman.dangling()
        started = time.monotonic()
        try:
            podman.run(
                "build", *flags, "--tag", tag, "--file", str(DOCKERFILE), str(REPO), timeout=timeout
            )
        finally:
            # The build stage's image is left untagged: only the image users get is kept.
            if left := podman.dangling() - dangling:
                podman.run("rmi", "--force", *sorted(left), timeout=300, check=False)
        log.append(f"image {tag}: built in {time.monotonic() - started:.0f} s")


# ---- running it -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Container:
    """One detached container of the image on the host's network; removed on exit."""

    podman: Podman
    image: str
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None
    name: str = field(default_factory=lambda: f"foundry-proxy-test-{uuid.uuid4().hex[:12]}")
    port: int = field(default_factory=free_port)
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {"FOUNDRY_PROXY_PORT": str(self.port), **self.env}
        self.started = time.monotonic()
        self.podman.run(
            "run",
            "--detach",
            "--name",
            self.name,
            *ULIMITS,
            "--network",
            "host",
            # As `docker run --read-only`: podman would otherwise add writable tmpfs mounts.
            "--read-only",
            "--read-only-tmpfs=false",
            # The HEALTHCHECK is run by hand (`healthcheck run`); podman's timer needs systemd.
            "--health-interval",
            "disable",
            *[f"--env={k}={v}" for k, v in env.items()],
            *([f"--entrypoint={self.entrypoint}"] if self.entrypoint else []),
            self.image,
            *self.args,
            timeout=120,
        )

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "0", self.name, timeout=120, check=False)

    def wait(self, timeout: float) -> int:
        """The exit code, once the container has stopped by itself."""
        done = self.podman.run("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def stop(self, timeout: float = 60) -> int:
        """`podman stop` (the image's STOPSIGNAL, then SIGKILL after ``timeout``); exit code."""
        self.podman.run("stop", "--time", str(int(timeout)), self.name, timeout=timeout + 30)
        code = self.state()["ExitCode"]
        assert isinstance(code, int), code
        return code

    def logs(self) -> str:
        done = self.podman.run("logs", self.name, timeout=60, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, object]:
        state = self.podman.inspect("container", self.name)["State"]
        assert isinstance(state, dict)
        return state

    def pid(self) -> int:
        pid = self.state()["Pid"]
        assert isinstance(pid, int), pid
        assert pid > 0, f"the container is not running:\n{self.logs()}"
        return pid

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds from `podman run` to the first 200 on /healthz."""
        deadline = time.monotonic() + timeout
        with httpx2.Client(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return time.monotonic() - self.started
                except httpx2.TransportError:
                    pass
                if self.state().get("Running") is False:
                    raise PodmanError(f"the container stopped:\n{self.logs()}")
                time.sleep(0.02)
        raise PodmanError(f"no /healthz within {timeout:g} s:\n{self.logs()}")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with httpx2.Client(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if client.get(self.url + "/readyz").status_code == 200:
                    return
                time.sleep(0.05)
        raise PodmanError(f"never ready within {timeout:g} s:\n{self.logs()}")


@contextmanager
def container(
    podman: Podman,
    image: str,
    *args: str,
    env: dict[str, str] | None = None,
    entrypoint: str | None = None,
    port: int | None = None,
) -> Iterator[Container]:
    c = Container(podman, image, args, env or {}, entrypoint)
    if port is not None:
        c.port = port
    try:
        c.start()
        yield c
    finally:
        c.remove()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# ---- fakes on the host's loopback ---------------------------------------------------------------

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@dataclass
class Fakes:
    """Fake Entra and fake Foundry (tests/fakes) on the host's loopback, as the container sees
    them on the host's network; ``env`` configures the proxy in the image to use them."""

    issuer: RecordingIssuer
    entra: FakeEntra
    foundry: FakeFoundry
    env: dict[str, str]


@contextmanager
def fakes() -> Iterator[Fakes]:
    issuer = RecordingIssuer()
    secret = f"CANARY-SECRET-{uuid.uuid4().hex}"
    entra = FakeEntra(issuer, tenant=TENANT, client_id=CLIENT_ID, secret=secret)
    foundry = FakeFoundry(issuer)
    entra_server = ServerThread(entra.app).start()
    try:
        foundry_server = ServerThread(foundry).start()
        try:
            env = {
                "FOUNDRY_PROXY_UPSTREAM": foundry_server.url,
                "AZURE_AUTHORITY_HOST": entra_server.url,
                "AZURE_TENANT_ID": TENANT,
                "AZURE_CLIENT_ID": CLIENT_ID,
                "AZURE_CLIENT_SECRET": secret,
            }
            yield Fakes(issuer, entra, foundry, env)
        finally:
            foundry_server.stop()
    finally:
        entra_server.stop()


# ---- figures for BENCHMARKS.md ----------------------------------------------------------------


def _started_at(state: dict[str, object]) -> float:
    """The container process's start (podman's StartedAt, nanoseconds cut) as a Unix time."""
    raw = str(state["StartedAt"])
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", raw)
    assert m, raw
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(f"{m[1]}.{(m[2] or '0')[:6]:0<6}{zone}").timestamp()


def measure(runs: int = 5) -> dict[str, object]:
    """Build the image, then start it ``runs`` times against the fakes: size, layers, time to
    /healthz (from `podman run` and from the process's start), idle RSS as bench/ takes it."""
    podman = Podman.find()
    log: list[str] = []
    ensure_base(podman, log)
    tag = "localhost/foundry-proxy:measure"
    build_image(podman, tag, log)
    image = podman.inspect("image", tag)
    base = podman.inspect("image", base_image_name())
    history = json.loads(podman.run("history", "--format", "json", tag, timeout=60).stdout)
    layers = [h for h in history if int(h.get("size", 0)) > 0]
    from_run, from_process, rss = [], [], []
    with fakes() as f:
        for _ in range(runs):
            with container(podman, tag, env=f.env | {"FOUNDRY_PROXY_LOG_LEVEL": "warning"}) as c:
                from_run.append(c.wait_healthy())
                healthy_at = time.time()
                from_process.append(healthy_at - _started_at(c.state()))
                c.wait_ready()
                time.sleep(0.5)  # as bench/: idle RSS half a second after ready
                rss.append(rss_mb(c.pid()))
    size, base_size = image["Size"], base["Size"]
    assert isinstance(size, int)
    assert isinstance(base_size, int)
    return {
        "log": log,
        "size_mb": round(size / 1e6, 1),
        "base_mb": round(base_size / 1e6, 1),
        "layers": [(round(int(h["size"]) / 1e6, 1), h["CreatedBy"][:80]) for h in layers],
        "podman_run_to_healthz_s": sorted(round(s, 3) for s in from_run),
        "process_start_to_healthz_s": sorted(round(s, 3) for s in from_process),
        "idle_rss_mb": sorted(round(r, 1) for r in rss),
        "medians": {
            "podman_run_to_healthz_s": round(statistics.median(from_run), 3),
            "process_start_to_healthz_s": round(statistics.median(from_process), 3),
            "idle_rss_mb": round(statistics.median(rss), 1),
        },
    }


if __name__ == "__main__":
    json.dump(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5), sys.stdout, indent=2)
    print()
