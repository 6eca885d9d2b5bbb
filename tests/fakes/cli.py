"""Stand-ins for the ``az`` and ``azd`` executables, steered by a JSON control file.

``install_fake_cli(directory, "az")`` writes ``directory/az``, a script run by this test
interpreter. At every invocation it re-reads ``directory/az.json`` (so a test, or a proxy
process started by an end-to-end test, sees changes between calls), appends its argv as one JSON
line to ``directory/az.calls`` and writes its pid to ``directory/az.pid``.

Control keys (all optional):
- ``mode``: "ok" (default), "not-logged-in", "aadsts", "sleep" (then "ok"), "crash", "raw";
- ``token``, ``expires_on`` (POSIX seconds; default now + 1 h), ``tenant``;
- ``legacy_only``: az prints only the naive local ``expiresOn``, as CLIs before 2.54.0 did;
- ``expiresOn``: the text az prints there instead of the one matching ``expires_on``;
- ``json_stderr``: azd writes its errors as JSON lines, as it does with ``--output json``;
- ``aadsts``: the AADSTS number for mode "aadsts" (default 700082);
- ``sleep``: seconds for mode "sleep" (default 30);
- ``stdout``, ``stderr``, ``exit``: what mode "raw" prints and its exit status.

The outputs and error texts follow the real tools (docs/azure.md, section 3).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Literal

CliName = Literal["az", "azd"]

DEFAULT_TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJmYWtlIjoiY2xpIn0.ZmFrZS1jbGktc2lnbmF0dXJl"

_SCRIPT = r"""
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
control_file = HERE / (NAME + ".json")
control = json.loads(control_file.read_text()) if control_file.exists() else {}
argv = sys.argv[1:]
with open(HERE / (NAME + ".calls"), "a", encoding="utf-8") as calls:
    calls.write(json.dumps(argv) + "\n")
(HERE / (NAME + ".pid")).write_text(str(os.getpid()))


def option(flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else default


def fail(text, status=1):
    sys.stderr.write(text)
    sys.exit(status)


def azd_error(text):
    if control.get("json_stderr"):
        stamp = datetime.now(timezone.utc).isoformat()
        blank = {"type": "consoleMessage", "timestamp": stamp, "data": {"message": "\n"}}
        error = {"error": text, "message": "Authentication with Azure failed.",
                 "suggestion": "Run 'azd auth login' to sign in again."}
        fail(json.dumps(blank) + "\n" + json.dumps(error) + "\n")
    fail("\nERROR: " + text + "\n")


mode = control.get("mode", "ok")
token = control.get("token", DEFAULT_TOKEN)
expires_on = int(control.get("expires_on", time.time() + 3600))
entra = ("AADSTS%d: The refresh token has expired due to inactivity. Trace ID: 0000 "
         "Correlation ID: 1111 Timestamp: 2024-01-01 00:00:00Z" % control.get("aadsts", 700082))

if mode == "sleep":
    time.sleep(control.get("sleep", 30))
    mode = "ok"
if mode == "raw":
    sys.stdout.write(control.get("stdout", ""))
    fail(control.get("stderr", ""), control.get("exit", 0))
if mode == "crash":
    fail("Traceback (most recent call last):\n  File \"main.py\", line 1\nKeyError: 'boom'\n")

if NAME == "az":
    local = datetime.fromtimestamp(expires_on).strftime("%Y-%m-%d %H:%M:%S.%f")
    if mode == "not-logged-in":
        fail("ERROR: Please run 'az login' to setup account.\n")
    if mode == "aadsts":
        fail("ERROR: " + entra + "\nTo re-authenticate, please run:\n"
             "az login --scope https://cognitiveservices.azure.com/.default\n")
    answer = {
        "accessToken": token,
        "expiresOn": control.get("expiresOn") or local,
        "expires_on": expires_on,
        "subscription": "00000000-0000-0000-0000-000000000001",
        "tenant": option("--tenant", control.get("tenant", "00000000-0000-0000-0000-00000000000t")),
        "tokenType": "Bearer",
    }
    if control.get("legacy_only"):
        del answer["expires_on"]
else:
    if mode == "not-logged-in":
        azd_error("not logged in, run `azd auth login` to login")
    if mode == "aadsts":
        azd_error("fetching token: failed to authenticate:\n(invalid_grant) " + entra + "\n")
    stamp = datetime.fromtimestamp(expires_on, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = {"token": token, "expiresOn": stamp}
print(json.dumps(answer, indent=2))
"""


def install_fake_cli(directory: Path, name: CliName) -> Path:
    """Write the executable ``directory/name``; returns its path."""
    path = directory / name
    header = f"#!{sys.executable}\nNAME = {name!r}\nDEFAULT_TOKEN = {DEFAULT_TOKEN!r}\n"
    path.write_text(header + _SCRIPT, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_control(directory: Path, name: CliName, **control: object) -> None:
    """Replace the control file; atomic, so a running fake never reads half of it."""
    scratch = directory / f"{name}.json.tmp"
    scratch.write_text(json.dumps(control), encoding="utf-8")
    os.replace(scratch, directory / f"{name}.json")


def read_calls(directory: Path, name: CliName) -> list[list[str]]:
    """The argv (without the program name) of every invocation so far, oldest first."""
    path = directory / f"{name}.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def last_pid(directory: Path, name: CliName) -> int:
    return int((directory / f"{name}.pid").read_text(encoding="utf-8"))
