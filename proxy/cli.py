"""Command line: argv -> Settings -> logging -> the server (server.py); `demo` and `check`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.errors import ConfigError
from proxy.listener import parser_in_use
from proxy.logs import configure_logging
from proxy.settings import Settings, environment_proxy_variables, load_settings

log = logging.getLogger("foundry_proxy")

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", type=Path, help="read settings from this file")
    parser.add_argument(
        "--host", help="address to listen on (FOUNDRY_PROXY_HOST, default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        help="port to listen on, 0 for any free one (FOUNDRY_PROXY_PORT, default 8787)",
    )
    parser.add_argument(
        "--upstream", help="Foundry / Azure OpenAI resource origin (FOUNDRY_PROXY_UPSTREAM)"
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="FOUNDRY_PROXY_LOG_LEVEL, default info",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port, each with its own token "
        "(FOUNDRY_PROXY_WORKERS, default 1)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        default=None,
        help="allow listening on a non-loopback address (FOUNDRY_PROXY_ALLOW_REMOTE)",
    )


def _commands(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    commands = parser.add_subparsers(
        title="commands",
        dest="command",
        metavar="COMMAND",
        description="Without a command, foundry-proxy runs the proxy with the options above.",
    )
    demo = commands.add_parser(
        "demo",
        prog="foundry-proxy demo",
        help="try the proxy against an emulated Entra ID and Foundry (no Azure account)",
        description="Run the proxy in front of an emulated Entra ID and Foundry: no Azure "
        "account needed, nothing leaves this machine.",
    )
    if argv[:1] == ["demo"]:
        # Only the demo's own command line needs its options: importing them brings in the
        # emulator and the demo, which a proxy serving requests never uses (idle memory).
        from proxy.demo import add_arguments as demo_arguments

        demo_arguments(demo)
    check = commands.add_parser(
        "check",
        prog="foundry-proxy check",
        help="check a configuration step by step, down to one call to the upstream",
        description="Check a configuration step by step: settings, Entra token, token "
        "contents, one call to the upstream. Exits 0 only when that call works.",
    )
    check.add_argument("--env-file", type=Path, help="read settings from this file")
    check.add_argument("--json", action="store_true", help="print the result as one JSON object")
    check.add_argument(
        "--claude-deployment",
        metavar="NAME",
        help="also call Claude's Messages API on this Foundry deployment (max_tokens 1)",
    )


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-proxy",
        # argparse would show the command as required; without one, the proxy runs.
        usage="%(prog)s [options]\n       %(prog)s demo [options]\n       %(prog)s check [options]",
        description="Local authenticating reverse proxy for Azure AI Foundry / Azure OpenAI. "
        "Apps call http://127.0.0.1:PORT/v1 with no secret; the proxy adds an Entra ID token.",
        epilog="Every option can also be set in the environment or the env file "
        "(see config.example.env); options given here win. "
        "'foundry-proxy COMMAND --help' describes a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"foundry-proxy {__version__}")
    _serve_options(parser)
    _commands(parser, argv)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.command is not None and argv[0] != args.command:
        # The proxy's options mean nothing to a command, and a command's own options share
        # their names (--port, --env-file): refuse rather than silently drop either.
        parser.error(f"options go after the command: foundry-proxy {args.command} [options]")
    return args


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "upstream", "log_level", "allow_remote", "workers")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _stop(signum: int, frame: object) -> None:
    """A signal before the server takes them (while starting) or after (while closing)."""
    log.info("stopped by %s", signal.Signals(signum).name)
    raise SystemExit(0)


def _install_stop_handlers() -> None:
    from proxy.server import DRAIN_SIGNALS

    for signum in DRAIN_SIGNALS:
        signal.signal(signum, _stop)


def _detect(settings: Settings) -> Settings:
    """Settings with the credential kind made explicit (auto-detection)."""
    from proxy.credentials.selection import detect

    choice = asyncio.run(detect(settings))
    for reason in choice.passed_over:
        log.info("credential auto-detection passed over %s", reason)
    return choice.settings


def _build(settings: Settings) -> Any:
    """The app for one process; None with workers (each builds its own), after checking once,
    here, that the credential's files are usable, so that a bad certificate fails once."""
    from proxy.app import create_app  # after logging is set up: the app logs while it builds
    from proxy.credentials.factory import preflight

    if settings.workers == 1:
        return create_app(settings)
    preflight(settings)
    return None


def _log_setup(settings: Settings) -> None:
    keys = settings.inbound_keys()
    log.info(
        "HTTP parser %s; request heads up to %d bytes within %g s; %s; policy %s%s",
        parser_in_use(),
        settings.max_header_bytes,
        settings.head_timeout,
        f"{len(keys)} inbound key(s) required" if keys else "no inbound key required",
        settings.policy,
        " with FOUNDRY_PROXY_ALLOW/DENY rules" if settings.allow or settings.deny else "",
    )
    ignored = environment_proxy_variables()
    if ignored and not settings.trust_env:
        log.warning(
            "%s set in the environment but not used; set FOUNDRY_PROXY_TRUST_ENV=true to send "
            "upstream and Entra calls through it",
            "/".join(ignored),
        )
    for warning in settings.warnings():
        log.warning("%s", warning)


def _announce(settings: Settings, url: str) -> None:
    """Where to connect: called only once the address accepts connections (server.py)."""
    if settings.uds is not None:
        log.info("also listening on unix:%s (mode 0600)", settings.uds)
    log.info(
        "foundry-proxy %s listening on %s -> %s (%s)",
        __version__,
        url,
        # Several backends are named with their origins, in priority order (docs/backends.md).
        ", ".join(f"{b.name}={b.origin}" for b in settings.pool.backends)
        if len(settings.pool.backends) > 1
        else settings.upstream,
        _identity(settings),
    )
    log.info("OpenAI SDKs: base_url=%s/v1 ; AzureOpenAI: azure_endpoint=%s", url, url)


def serve(settings: Settings) -> int:
    """Run the proxy until SIGINT/SIGTERM/SIGHUP and the drain; returns the exit code."""
    from proxy.server import ListenError, open_listeners, run, run_workers

    try:
        settings = _detect(settings)
        app = _build(settings)
        listeners = open_listeners(settings.host, settings.port, settings.uds)
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        log.error("%s", exc)
        return EXIT_STARTUP
    _log_setup(settings)
    announce = partial(_announce, settings, listeners.url)
    if app is None:
        run_workers(settings, listeners, announce)
        return 0
    return 0 if run(app, settings, listeners, announce) else EXIT_STARTUP


def _identity(settings: Settings) -> str:
    """Which identity the proxy acts as, for the startup line (ids only, never secrets)."""
    kind = settings.credential_kind
    if settings.credential in ("secret", "certificate", "workload-identity"):
        return f"{kind} of app {settings.client_id} in tenant {settings.tenant_id}"
    if settings.credential == "managed-identity":
        chosen = (
            settings.client_id
            or settings.managed_identity_object_id
            or settings.managed_identity_resource_id
        )
        return f"{kind}, " + (f"user-assigned {chosen}" if chosen else "system-assigned")
    if settings.tenant_id and settings.credential in ("azure-cli", "azd"):
        return f"{kind} login, tenant {settings.tenant_id}"
    return f"{kind} login" if settings.credential in ("azure-cli", "azd") else kind


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run as run_demo

    configure_logging("info")
    return run_demo(args)


def _check(args: argparse.Namespace) -> int:
    from proxy.check import run as run_check

    configure_logging("error")
    return run_check(args.env_file, args.json, args.claude_deployment)


def _proxy(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.env_file, **_overrides(args))
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        print("See config.example.env for every setting.", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, secrets=settings.known_secrets())
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        return _check(args)
    _install_stop_handlers()
    return _demo(args) if args.command == "demo" else _proxy(args)
