"""Tokens from the developer's own sign-in: Azure CLI (``az``) and Azure Developer CLI (``azd``).

Each token call runs the CLI as a subprocess (never through a shell) and reads its JSON answer
(docs/azure.md, section 3). A call costs a Python or Go process start, about 0.5-1 s, and
neither CLI promises a cheap cache of its own; that is fine because the TokenProvider holds the
token and refreshes it in the background, so the CLI runs once per refresh, never per request.

The child inherits the proxy's environment (env=None): only settings.py reads the environment,
and the developer's PATH, HOME and AZURE_CONFIG_DIR are exactly what the CLI needs to find its
login. Standard output holds the token, so no message is ever built from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime

from proxy.credentials.base import AccessToken, number
from proxy.credentials.codes import TokenErrorCode
from proxy.errors import AuthenticationFailed, CredentialError, CredentialUnavailable
from proxy.redaction import safe_message

# Entra tokens live 60-90 minutes (24-28 h with CAE); an expiry beyond a year is a broken answer.
_MAX_LIFETIME = 366 * 24 * 3600
# A directory the OS controls: on Windows a relative executable name would otherwise be looked
# up in the working directory first, and azure-identity pins the directory for the same reason.
_SAFE_CWD = "/"
# After a kill, the pipes close as soon as the process group is gone; this only bounds a child
# that escaped the group and still holds them.
_REAP_SECONDS = 2.0

_AADSTS = re.compile(r"AADSTS(\d+)")


def _scrub(text: str) -> str:
    """One line, fit for a log, without the CLI's "ERROR:" prefix."""
    # The CLIs never print the token on stderr, but a message must not depend on that.
    return safe_message(text).removeprefix("ERROR:").strip()


def _first_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    # az prints WARNING lines (deprecations, upgrade notices) before the ERROR line that matters;
    # without one, the last line is the useful one (a Python traceback ends with the exception).
    chosen = next((line for line in lines if "ERROR" in line), lines[-1] if lines else "")
    return _scrub(chosen)


def _aadsts_line(text: str) -> tuple[str, str] | None:
    """(AADSTSnnnn, its first line) when the CLI relayed an Entra refusal."""
    for line in text.splitlines():
        found = _AADSTS.search(line)
        if found:
            # Trace and correlation IDs follow on the same line in some CLI versions.
            message = line[found.start() :].split(" Trace ID:")[0]
            return f"AADSTS{found.group(1)}", _scrub(message)
    return None


def _parse_time(raw: object, *, naive_is_utc: bool) -> float | None:
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if moment.tzinfo is None and naive_is_utc:
        moment = moment.replace(tzinfo=UTC)
    # A naive datetime's timestamp() reads it as local time, which is what old az printed.
    return moment.timestamp()


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if sys.platform == "win32":
            process.kill()
        else:
            # az is a shell script that starts Python without exec: killing only the script
            # would orphan the Python process, so end the whole group (start_new_session).
            os.killpg(process.pid, signal.SIGKILL)


class _DeveloperCli(ABC):
    """Runs one CLI and turns its exit status, stderr and JSON stdout into a token or an error."""

    kind: str
    _bearer_key: str
    _login_hint: str
    _install_url: str
    _login_command: str

    def __init__(self, tenant_id: str | None, *, timeout: float, executable: str) -> None:
        self._tenant_id = tenant_id
        self._timeout = timeout
        self._executable = executable

    @abstractmethod
    def _arguments(self, scope: str) -> list[str]:
        """The command line (after the executable) that prints a token for ``scope``."""

    @abstractmethod
    def _expires_on(self, body: dict[str, object]) -> float | None:
        """The token's expiry as POSIX seconds, from the CLI's JSON output."""

    def _error_text(self, stderr: str) -> str:
        return stderr

    @abstractmethod
    def _not_logged_in(self, text: str) -> bool:
        """Whether the CLI's error output says nobody is logged in."""

    async def get_token(self, scope: str) -> AccessToken:
        for value in filter(None, (scope, self._tenant_id)):
            # No shell is involved, but a value starting with "-" would still be read as an
            # option by the CLI's own argument parser.
            if value.startswith("-") or not value.isprintable() or " " in value:
                raise AuthenticationFailed(
                    f"{value!r} cannot be passed to the {self.kind}",
                    code=TokenErrorCode.CLI_BAD_ARGUMENT,
                )
        arguments = self._arguments(scope)
        status, stdout, stderr = await self._run(arguments)
        if status != 0:
            raise self._failure(status, self._error_text(stderr), arguments)
        return self._token(stdout)

    async def aclose(self) -> None:  # noqa: B027 - a real no-op, not an abstract method
        """Nothing to release: each call's process has ended before get_token returns."""

    def _not_installed(self) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"the {self.kind} ({self._executable}) is not installed or not on PATH",
            code=TokenErrorCode.CLI_NOT_INSTALLED,
            hint=f"install it ({self._install_url}) and run `{self._login_command}`, or choose "
            "another FOUNDRY_PROXY_CREDENTIAL",
        )

    async def _run(self, arguments: list[str]) -> tuple[int, bytes, str]:
        # Looked up at each call: PATH may change, and which() also finds az.cmd on Windows.
        path = shutil.which(self._executable)
        if path is None:
            raise self._not_installed()
        try:
            process = await asyncio.create_subprocess_exec(
                path,
                *arguments,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=_SAFE_CWD,
                env=None,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise self._not_installed() from None
        except OSError as exc:
            raise CredentialUnavailable(
                f"could not start the {self.kind} ({path}): {type(exc).__name__}",
                code=TokenErrorCode.CLI_FAILED,
            ) from None
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await process.communicate()
        except BaseException as exc:
            # Timeout or cancellation (shutdown): leave neither an orphan nor a zombie behind.
            _kill(process)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_SECONDS):
                    await process.communicate()
            if isinstance(exc, TimeoutError):
                raise CredentialUnavailable(
                    f"the {self.kind} did not answer within {self._timeout:g} s",
                    code=TokenErrorCode.CLI_TIMEOUT,
                    hint=self._try_by_hand(arguments),
                ) from None
            raise
        assert process.returncode is not None  # communicate() waits for the exit
        return process.returncode, stdout, stderr.decode("utf-8", errors="replace")

    def _try_by_hand(self, arguments: list[str]) -> str:
        shown = " ".join(a for a in arguments if a not in ("--output", "json"))
        return f"run `{self._executable} {shown}` in a terminal to see what it does"

    def _failure(self, status: int, text: str, arguments: list[str]) -> CredentialError:
        # Exit status 127 is the shell's "command not found"; cmd.exe says "is not recognized".
        if status == 127 or "is not recognized" in text:
            return self._not_installed()
        entra = _aadsts_line(text)
        if entra is not None:
            code, line = entra
            return AuthenticationFailed(
                f"the {self.kind} could not get a token: {line}",
                code=code,
                hint=self._login_hint,
            )
        if self._not_logged_in(text):
            return AuthenticationFailed(
                f"the {self.kind} is not logged in",
                code=TokenErrorCode.CLI_NOT_LOGGED_IN,
                hint=self._login_hint,
            )
        line = _first_error_line(text) or f"exit status {status}"
        return CredentialUnavailable(
            f"the {self.kind} failed: {line}",
            code=TokenErrorCode.CLI_FAILED,
            hint=self._try_by_hand(arguments),
        )

    def _token(self, stdout: bytes) -> AccessToken:
        try:
            body: object = json.loads(stdout)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._malformed("is not a JSON object")
        token = body.get(self._bearer_key)
        if not isinstance(token, str) or not token.strip():
            raise self._malformed(f"has no {self._bearer_key}")
        expires_on = self._expires_on(body)
        expires_in = None if expires_on is None else expires_on - time.time()
        if expires_in is None or not 0 < expires_in <= _MAX_LIFETIME:
            raise self._malformed("has no valid expiry")
        return AccessToken(token=token, expires_in=expires_in)

    def _malformed(self, problem: str) -> CredentialUnavailable:
        return CredentialUnavailable(
            f"the {self.kind}'s answer {problem}", code=TokenErrorCode.MALFORMED_TOKEN_RESPONSE
        )


def _resource(scope: str) -> str:
    # az takes a resource, not a scope: the v1-style resource is the scope without /.default.
    return scope.removesuffix("/.default")


class AzureCli(_DeveloperCli):
    """``az account get-access-token`` (MicrosoftDocs/azure-docs-cli; docs/azure.md, section 3)."""

    kind = "Azure CLI"
    _bearer_key = "accessToken"
    _install_url = "https://learn.microsoft.com/cli/azure/install-azure-cli"
    _login_command = "az login"
    _login_hint = "run `az login` (add --tenant <id> for a specific tenant)"

    def __init__(
        self, tenant_id: str | None = None, *, timeout: float = 10.0, executable: str = "az"
    ) -> None:
        super().__init__(tenant_id, timeout=timeout, executable=executable)

    def _arguments(self, scope: str) -> list[str]:
        arguments = ["account", "get-access-token", "--output", "json"]
        arguments += ["--resource", _resource(scope)]
        if self._tenant_id:
            arguments += ["--tenant", self._tenant_id]
        return arguments

    def _expires_on(self, body: dict[str, object]) -> float | None:
        # expires_on (POSIX seconds) exists from CLI 2.54.0 on and is unambiguous; older CLIs
        # give only expiresOn, a naive local time.
        posix = number(body.get("expires_on"))
        if posix is not None:
            return posix
        return _parse_time(body.get("expiresOn"), naive_is_utc=False)

    def _not_logged_in(self, text: str) -> bool:
        # The AADSTS case is decided before this: such errors also suggest `az login`.
        return "az login" in text or "az account set" in text


class AzureDeveloperCli(_DeveloperCli):
    """``azd auth token`` (docs/azure.md, section 3)."""

    kind = "Azure Developer CLI"
    _bearer_key = "token"
    _install_url = "https://aka.ms/azd-install"
    _login_command = "azd auth login"
    _login_hint = "run `azd auth login`"

    def __init__(
        self, tenant_id: str | None = None, *, timeout: float = 10.0, executable: str = "azd"
    ) -> None:
        super().__init__(tenant_id, timeout=timeout, executable=executable)

    def _arguments(self, scope: str) -> list[str]:
        arguments = ["auth", "token", "--output", "json", "--no-prompt", "--scope", scope]
        if self._tenant_id:
            arguments += ["--tenant-id", self._tenant_id]
        return arguments

    def _expires_on(self, body: dict[str, object]) -> float | None:
        # expiresOn is UTC ("...Z"). azure-identity reads it as local time, which is off by the
        # UTC offset wherever TZ is not UTC; a naive value is therefore taken as UTC too.
        return _parse_time(body.get("expiresOn"), naive_is_utc=True)

    def _error_text(self, stderr: str) -> str:
        # With --output json, azd writes its errors as JSON lines: {"error": ...} from v1.24,
        # {"type": "consoleMessage", "data": {"message": ...}} before. Plain text otherwise.
        parts: list[str] = []
        for line in stderr.splitlines():
            try:
                item: object = json.loads(line)
            except ValueError:
                parts.append(line)
                continue
            if not isinstance(item, dict):
                parts.append(line)
                continue
            data = item.get("data")
            for text in (
                item.get("error"),
                data.get("message") if isinstance(data, dict) else None,
            ):
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)

    def _not_logged_in(self, text: str) -> bool:
        return "not logged in, run `azd auth login` to login" in text
