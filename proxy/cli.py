"""Command line: argv -> Settings -> logging -> uvicorn. The only module that imports uvicorn."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from proxy import __version__
from proxy.errors import ConfigError
from proxy.logs import configure_logging
from proxy.settings import Settings, environment_proxy_variables, load_settings

log = logging.getLogger("foundry_proxy")

EXIT_CONFIG = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-proxy",
        description="Local authenticating reverse proxy for Azure AI Foundry / Azure OpenAI. "
        "Apps call http://127.0.0.1:PORT/v1 with no secret; the proxy adds an Entra ID token.",
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
        "--allow-remote",
        action="store_true",
        default=None,
        help="allow listening on a non-loopback address (FOUNDRY_PROXY_ALLOW_REMOTE)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "upstream", "log_level", "allow_remote")
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


def _drained(signum: int, frame: object) -> None:
    log.info("shut down cleanly after %s", signal.Signals(signum).name)


def serve(settings: Settings) -> int:
    """Run the proxy until SIGINT/SIGTERM; returns the process exit code."""
    from proxy.app import create_app  # after logging is set up: the app logs while it builds

    app = create_app(settings)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return EXIT_STARTUP
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "foundry-proxy %s listening on http://%s:%d -> %s (client secret of app %s in tenant %s)",
        __version__,
        shown,
        port,
        settings.upstream,
        settings.client_id,
        settings.tenant_id,
    )
    log.info(
        "OpenAI SDKs: base_url=http://%s:%d/v1 ; AzureOpenAI: azure_endpoint=http://%s:%d",
        shown,
        port,
        shown,
        port,
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
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # The upstream's Date passes through; proxy-made answers need none.
        date_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        backlog=2048,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM itself (graceful drain; a second signal forces exit) and
    # then re-raises the signal to the handler that was installed before it. With the default
    # handler that kills the process with the signal; a completed drain should exit 0 instead.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _drained)
    server.run(sockets=[sock])
    return 0 if server.started else EXIT_STARTUP


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file, **_overrides(args))
    except ConfigError as exc:
        print(f"foundry-proxy: {exc}", file=sys.stderr)
        print("See config.example.env for every setting.", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, secrets=[settings.client_secret.get_secret_value()])
    return serve(settings)
