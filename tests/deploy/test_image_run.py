"""The container image, built from the real Dockerfile with podman and run as users run it.

One build per module (the first test pays for it: a few minutes on a cold machine). Every
container runs read-only (as `docker run --read-only`) on the host's network, where the fake
Entra and fake Foundry listen on loopback. Skipped, with the reason, only where podman cannot
run at all; anything else that goes wrong (no base image, a failed build) is a failure.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.deploy.podman_image import (
    NONROOT,
    Fakes,
    Podman,
    PodmanUnavailable,
    base_image_name,
    build_image,
    container,
    ensure_base,
    fakes,
    free_port,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(scope="module")
def podman() -> Podman:
    try:
        return Podman.find()
    except PodmanUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[str]:
    tag = f"localhost/foundry-proxy-test:{uuid.uuid4().hex[:12]}"
    log: list[str] = []
    try:
        ensure_base(podman, log)
        build_image(podman, tag, log)
        print("\n".join(log))
        yield tag
    finally:
        podman.run("rmi", "--force", tag, timeout=300, check=False)


@pytest.fixture(scope="module")
def fake() -> Iterator[Fakes]:
    with fakes() as f:
        yield f


# What the image holds, seen from inside by its own interpreter.
INSIDE = r"""
import glob, importlib, importlib.util, json, os, pathlib, ssl, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
dynload = os.path.join(sysconfig.get_paths()["stdlib"], "lib-dynload")
broken = []
for base in (site, dynload):
    for so in pathlib.Path(base).rglob("*.so"):
        parts = list(so.relative_to(base).parts)
        parts[-1] = parts[-1].split(".")[0]
        name = ".".join(parts)
        if name.startswith(("_test", "xx", "_xxtest", "_ctypes_test")):
            continue  # CPython's own test modules
        try:
            importlib.import_module(name)
        except Exception as exc:
            broken.append(f"{name}: {exc!r}")
tools = ["sh", "bash", "dash", "ls", "cat", "env", "apt", "apt-get", "dpkg", "perl", "pip",
         "pip3", "curl", "wget", "su", "mount"]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "python": sys.executable,
    "version": list(sys.version_info[:2]),
    "pip": importlib.util.find_spec("pip") is not None,
    "setuptools": importlib.util.find_spec("setuptools") is not None,
    "ensurepip": glob.glob("/usr/lib/python3*/ensurepip") + glob.glob("/usr/share/python-wheels"),
    "tools": [t for t in tools for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin")
              if os.path.lexists(os.path.join(d, t))],
    "packages": sorted(os.listdir("/var/lib/dpkg/status.d")),
    "os_release": open("/etc/os-release").read(),
    "passwd": open("/etc/passwd").read(),
    "build_leftovers": [p for p in ("/tools", "/wheels", "/src", "/rootfs") if os.path.exists(p)],
    "mnt": os.listdir("/mnt") if os.path.exists("/mnt") else [],
    "stdlib_pyc": os.path.exists(importlib.util.cache_from_source(json.__file__)),
    "proxy_pyc": bool(glob.glob(site + "/proxy/__pycache__/cli.*.pyc")),
    "default_cas": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "broken_extensions": broken,
    "pip_env": sorted(k for k in os.environ if k.startswith(("PIP_", "SSL_CERT"))),
}))
"""


def test_image_config_and_content(podman: Podman, image: str) -> None:
    """Non-root user, entrypoint, no CMD, HEALTHCHECK kept; inside, Debian's python3 and the
    libraries every extension module loads, recorded for scanners, and nothing else: no shell,
    package manager, pip, or anything of the build (its CA, /tools, /wheels, /src)."""
    config = podman.inspect("image", image)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == NONROOT
    assert config["Entrypoint"] == ["foundry-proxy"]
    assert not config.get("Cmd"), "a CMD would become the proxy's arguments"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Labels"]["org.opencontainers.image.base.name"] == base_image_name()
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/foundry-proxy/bin:")
    assert not [k for k in env if k.startswith(("PIP_", "FOUNDRY_PROXY_", "SSL_CERT"))], env
    health = podman.inspect("image", image)["Healthcheck"]
    assert isinstance(health, dict)
    assert health["Test"][:3] == ["CMD", "python", "-c"]

    with container(podman, image, "-c", INSIDE, entrypoint="python") as c:
        assert c.wait(120) == 0, c.logs()
        facts = json.loads(next(li for li in c.logs().splitlines() if li.startswith("{")))
    assert (facts["uid"], facts["gid"]) == (65532, 65532)
    assert "nonroot:x:65532:65532:" in facts["passwd"]
    assert facts["python"] == "/opt/foundry-proxy/bin/python"
    assert facts["version"][0] == 3
    # No shell, package manager, pip or downloader: nothing to run but the proxy's Python.
    assert facts["tools"] == []
    assert not facts["pip"]
    assert not facts["setuptools"]
    assert facts["ensurepip"] == []
    assert facts["build_leftovers"] == []
    assert facts["mnt"] == [], "the build's CA mount left a trace in the image"
    # What it holds is Debian's, and says so to image scanners.
    assert "ID=debian" in facts["os_release"]
    for package in ("libc6", "libssl3t64", "ca-certificates", "base-files", "python3-minimal"):
        assert package in facts["packages"], facts["packages"]
    assert not {"bash", "dash", "coreutils", "apt", "dpkg", "perl-base"} & set(facts["packages"])
    assert facts["broken_extensions"] == [], "a library the wheels or the stdlib load is missing"
    assert facts["default_cas"] > 50, "Python's default TLS context finds no CA bundle"
    assert facts["stdlib_pyc"], "Debian's standard library bytecode is missing"
    assert facts["proxy_pyc"], "the project's bytecode is missing"
    assert facts["pip_env"] == []


def test_read_only_non_root_health_readiness_and_a_proxied_chat(
    podman: Podman, image: str, fake: Fakes
) -> None:
    with container(podman, image, env=fake.env) as c:
        c.wait_healthy()
        c.wait_ready()
        status = Path(f"/proc/{c.pid()}/status").read_text()
        uid = next(li for li in status.splitlines() if li.startswith("Uid:")).split()[1:]
        gid = next(li for li in status.splitlines() if li.startswith("Gid:")).split()[1:]
        assert set(uid) == {"65532"}, status
        assert set(gid) == {"65532"}, status

        # Read-only for real: even root inside cannot write to the image's filesystem.
        write = podman.run(
            "exec", "--user", "0", c.name, "python", "-c", "open('/opt/x', 'w')",
            timeout=60, check=False,
        )  # fmt: skip
        assert write.returncode != 0
        assert "Read-only file system" in write.stderr, write.stderr

        before = time.monotonic()
        with httpx2.Client(timeout=30, trust_env=False) as client:
            r = client.post(c.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        seen = [e for e in fake.foundry.entries("/chat/completions") if e.started >= before]
        assert len(seen) == 1
        # The client sent no credential: the bearer upstream is the proxy's token from Entra.
        assert seen[0].header("authorization")[0].startswith("Bearer ")
        assert seen[0].auth == "ok"
        assert seen[0].token_serial is not None
        assert any(call.secret_ok for call in fake.entra.calls)

        # The image's own HEALTHCHECK, run by podman in the container: passes now...
        check = podman.run("healthcheck", "run", c.name, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        # ...and the same command fails where nothing listens (it checks, it does not pass).
        argv = podman.inspect("image", image)["Healthcheck"]["Test"][1:]  # type: ignore[index]
        closed = podman.run(
            "exec", "--env", f"FOUNDRY_PROXY_PORT={free_port()}", c.name, *argv,
            timeout=60, check=False,
        )  # fmt: skip
        assert closed.returncode != 0

        logs = c.logs()
        assert fake.env["AZURE_CLIENT_SECRET"] not in logs
        assert not [t for t in fake.issuer.canaries() if t in logs]


def test_sigterm_drains_the_request_in_flight_and_exits_0(
    podman: Podman, image: str, fake: Fakes
) -> None:
    tag = uuid.uuid4().hex
    body: list[bytes] = []
    errors: list[BaseException] = []

    def read(url: str) -> None:
        headers = {"x-fake-chunks": "10", "x-fake-delay": "0.2", "x-test-id": tag}
        try:
            with (
                httpx2.Client(timeout=60, trust_env=False) as client,
                client.stream(
                    "POST", url, json=CHAT | {"stream": True}, headers=headers
                ) as response,
            ):
                body.append(response.read())
        except httpx2.HTTPError as exc:
            errors.append(exc)

    with container(podman, image, env=fake.env) as c:
        c.wait_healthy()
        c.wait_ready()
        reader = threading.Thread(target=read, args=(c.url + "/v1/chat/completions",))
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not any(
                e.events for e in fake.foundry.entries("/chat/") if e.header("x-test-id") == [tag]
            ):
                assert time.monotonic() < deadline, "the stream never started upstream"
                time.sleep(0.02)
            # `podman stop` sends the image's STOPSIGNAL (SIGTERM) and waits for the exit.
            code = c.stop(timeout=60)
        finally:
            reader.join(90)
        assert not reader.is_alive()
        assert errors == []
        assert body[0].endswith(b"data: [DONE]\n\n"), body
        assert body[0].count(b"data: ") >= 10
        assert code == 0, c.logs()


def test_demo_runs_inside_the_image(podman: Podman, image: str) -> None:
    port = free_port()
    with container(podman, image, "demo", "--port", str(port), port=port) as c:
        c.wait_healthy()
        c.wait_ready()
        with httpx2.Client(timeout=30, trust_env=False) as client:
            r = client.post(c.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert c.stop(timeout=60) == 0, c.logs()
        assert "EMULATED Entra ID and Foundry" in c.logs()
