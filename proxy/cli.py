"""Command line: argv -> Settings -> logging -> uvicorn; dispatches `demo` and `check`."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import math
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from proxy import __version__
from proxy.errors import ConfigError
from proxy.listener import DrainingServer, ProxyConfig, parser_in_use
from proxy.logs import configure_logging
from proxy.settings import Settings, environment_proxy_variables, load_settings

log = logging.getLogger("foundry_proxy")

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-proxy",
        description="Local authenticating reverse proxy for Azure AI Foundry / Azure OpenAI. "
        "Apps call http://127.0.0.1:PORT/v1 with no secret; the proxy adds an Entra ID token. "
        "Other commands: 'foundry-proxy demo' (try it with an emulator, no Azure account) and "
        "'foundry-proxy check' (diagnose a configuration).",
        epilog="Every option can also be set in the environment or the env file "
        "(see config.example.env); options given here win.",
    )
    parser.add_argument("--version", action="version", version=f"foundry-proxy {__version__}")
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
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "upstream", "log_level", "allow_remote", "workers")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _bind_unix(path: Path) -> socket.socket:
    """A Unix socket only its owner can connect to (mode 0600, set before anyone can)."""
    if path.is_socket():
        path.unlink()  # left over from a previous run; binding would fail on it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.set_inheritable(True)
    return sock


def _stop(signum: int, frame: object) -> None:
    """Runs for a signal uvicorn did not take: before it started, or re-raised after its drain.

    Either way the right end is a clean exit (uvicorn re-raises the signal so that the default
    handler would kill the process; after a completed drain, exit 0 is the honest status).
    """
    log.info("stopped by %s", signal.Signals(signum).name)
    raise SystemExit(0)


def _uvicorn_config(app: Any, settings: Settings, **extra: Any) -> uvicorn.Config:
    return ProxyConfig(
        app,
        head_timeout=settings.head_timeout,
        max_header_bytes=settings.max_header_bytes,
        ws_max_size=settings.ws_max_message_bytes,
        lifespan="on",
        log_config=None,  # logging is ours (logs.py), redaction included
        access_log=False,
        server_header=False,
        # The upstream's Date passes through; proxy-made answers need none.
        date_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        backlog=2048,
        **extra,
    )


def _serve_workers(settings: Settings, sockets: list[socket.socket]) -> int:
    """N processes accepting on one socket, supervised by uvicorn (restarts, signals)."""
    from uvicorn.supervisors import Multiprocess

    from proxy.app import AppFactory

    config = _uvicorn_config(AppFactory(settings), settings, factory=True, workers=settings.workers)
    # The supervisor took the worker's run method as `target` in older uvicorn releases.
    if "target" in inspect.signature(Multiprocess).parameters:
        supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=sockets)  # type: ignore[call-arg]
    else:
        supervisor = Multiprocess(config, sockets=sockets)
    supervisor.run()
    return 0


def serve(settings: Settings) -> int:
    """Run the proxy until SIGINT/SIGTERM; returns the process exit code."""
    from proxy.app import create_app  # after logging is set up: the app logs while it builds
    from proxy.credentials.factory import preflight
    from proxy.credentials.selection import detect

    try:
        choice = asyncio.run(detect(settings))
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = choice.settings
    for reason in choice.passed_over:
        log.info("credential auto-detection passed over %s", reason)
    try:
        # With workers, each worker builds its own app; the supervisor only checks that the
        # credential's files are usable, so a bad certificate fails once, here, not per worker.
        app = create_app(settings) if settings.workers == 1 else None
        if app is None:
            preflight(settings)
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return EXIT_STARTUP
    sockets = [sock]
    if settings.uds is not None:
        try:
            sockets.append(_bind_unix(settings.uds))
        except OSError as exc:
            log.error("cannot listen on %s: %s", settings.uds, exc.strerror or exc)
            sock.close()
            return EXIT_STARTUP
        log.info("also listening on unix:%s (mode 0600)", settings.uds)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "foundry-proxy %s listening on http://%s:%d -> %s (%s)",
        __version__,
        shown,
        port,
        settings.upstream,
        _identity(settings),
    )
    log.info(
        "OpenAI SDKs: base_url=http://%s:%d/v1 ; AzureOpenAI: azure_endpoint=http://%s:%d",
        shown,
        port,
        shown,
        port,
    )
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
    if settings.workers > 1:
        return _serve_workers(settings, sockets)
    assert app is not None  # one worker: built above
    config = _uvicorn_config(app, settings)
    server = DrainingServer(config)
    _install_drain_handlers()
    try:
        server.run(sockets=sockets)
    finally:
        if settings.uds is not None:
            settings.uds.unlink(missing_ok=True)
    return 0 if server.started else EXIT_STARTUP


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


def _demo_parser() -> argparse.ArgumentParser:
    from proxy.demo import add_arguments

    parser = argparse.ArgumentParser(
        prog="foundry-proxy demo",
        description="Run the proxy in front of an emulated Entra ID and Foundry: no Azure "
        "account needed, nothing leaves this machine.",
    )
    add_arguments(parser)
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-proxy check",
        description="Check a configuration step by step: settings, Entra token, token contents, "
        "one call to the upstream. Exits 0 only when that call works.",
    )
    parser.add_argument("--env-file", type=Path, help="read settings from this file")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _install_drain_handlers() -> None:
    # uvicorn handles SIGINT/SIGTERM itself (graceful drain; a second signal forces exit) and
    # then re-raises the signal to the handler that was installed before it. With the default
    # handler that kills the process with the signal; a completed drain should exit 0 instead.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["demo"]:
        demo_args = _demo_parser().parse_args(args_list[1:])
        configure_logging("info")
        _install_drain_handlers()
        from proxy.demo import run as run_demo

        return run_demo(demo_args)
    if args_list[:1] == ["check"]:
        check_args = _check_parser().parse_args(args_list[1:])
        configure_logging("error")
        from proxy.check import run as run_check

        return run_check(check_args.env_file, check_args.json)
    args = _parser().parse_args(args_list)
    try:
        settings = load_settings(args.env_file, **_overrides(args))
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        print("See config.example.env for every setting.", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, secrets=settings.known_secrets())
    return serve(settings)
