"""`foundry-proxy demo`: the real proxy in front of an emulated Entra ID and Foundry, one process.

Nothing leaves the machine and no Azure account is needed. The proxy is configured exactly as in
production except for the two URLs, which point at the emulator on loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import socket
import sys
import uuid
from collections.abc import Iterator

import uvicorn

from proxy.app import create_app
from proxy.emulator.entra import EmulatedEntra
from proxy.emulator.foundry import EmulatedFoundry, Faults
from proxy.emulator.tokens import TokenIssuer
from proxy.errors import ConfigError
from proxy.settings import load_settings

log = logging.getLogger("foundry_proxy.emulator")

DEMO_TENANT = "emulator.onmicrosoft.com"
DEMO_CLIENT_ID = str(uuid.uuid5(uuid.NAMESPACE_DNS, "client.emulator.foundry-proxy"))


class _QuietServer(uvicorn.Server):
    """An emulator server: the proxy's server owns the signals; this one stops when told."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=8787, help="proxy port (default 8787; 0: any free port)"
    )
    parser.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        metavar="S",
        help="lifetime of emulated Entra tokens in seconds (default 3600); "
        "short ones show the refresh at work",
    )
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.05,
        metavar="S",
        help="seconds between streamed tokens (default 0.05)",
    )
    parser.add_argument(
        "--first-token-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds before the first byte of each answer (default 0)",
    )
    parser.add_argument(
        "--rate-limit-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with 429 and Retry-After: 2 (default off)",
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with 500 (default off)",
    )


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: object, quiet: bool, grace: float = 1.0) -> uvicorn.Server:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        lifespan="on" if not quiet else "off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    return _QuietServer(config) if quiet else uvicorn.Server(config)


def banner(proxy: str, entra: str, foundry: str, faults: Faults, lifetime: float) -> str:
    knobs = []
    if faults.rate_limit_every:
        knobs.append(f"429 every {faults.rate_limit_every} requests")
    if faults.fail_every:
        knobs.append(f"500 every {faults.fail_every} requests")
    if faults.first_token_delay:
        knobs.append(f"first token after {faults.first_token_delay:g} s")
    knobs.append(f"tokens live {lifetime:g} s")
    return f"""
foundry-proxy demo: the real proxy in front of an EMULATED Entra ID and Foundry.
No Azure account is used and nothing leaves this machine. Answers are echoes from the emulator.

  proxy              {proxy}
  emulated Entra ID  {entra}
  emulated Foundry   {foundry}   ({", ".join(knobs)})

Try it:

  curl -N {proxy}/v1/chat/completions -H 'Content-Type: application/json' -d \\
    '{{"model": "gpt-4o-mini", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{proxy}/v1", api_key="unused")
  for chunk in client.chat.completions.create(
      model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}], stream=True
  ):
      if chunk.choices and chunk.choices[0].delta.content:
          print(chunk.choices[0].delta.content, end="", flush=True)

Readiness: {proxy}/readyz   Stop: Ctrl-C
"""


async def _run(args: argparse.Namespace) -> int:
    issuer = TokenIssuer()
    secret = secrets.token_urlsafe(30)
    faults = Faults(
        rate_limit_every=args.rate_limit_every,
        fail_every=args.fail_every,
        first_token_delay=args.first_token_delay,
        token_delay=args.token_delay,
    )
    entra = EmulatedEntra(
        issuer,
        tenant=DEMO_TENANT,
        client_id=DEMO_CLIENT_ID,
        secret=secret,
        token_lifetime=args.token_lifetime,
    )
    foundry = EmulatedFoundry(issuer, faults)
    entra_sock, foundry_sock = _loopback_socket(), _loopback_socket()
    sockets = [entra_sock, foundry_sock]
    try:
        entra_url = f"http://127.0.0.1:{entra_sock.getsockname()[1]}"
        foundry_url = f"http://127.0.0.1:{foundry_sock.getsockname()[1]}"
        settings = load_settings(
            upstream=foundry_url,
            authority_host=entra_url,
            tenant_id=DEMO_TENANT,
            client_id=DEMO_CLIENT_ID,
            client_secret=secret,
            host="127.0.0.1",
            port=args.port,
            # Everything stays on this machine, whatever proxy variables the environment holds.
            trust_env=False,
        )
        proxy_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(proxy_sock)
        proxy_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            proxy_sock.bind(("127.0.0.1", args.port))
        except OSError as exc:
            log.error(
                "cannot listen on 127.0.0.1:%s: %s (try --port 0)", args.port, exc.strerror or exc
            )
            return 3
        proxy_url = f"http://127.0.0.1:{proxy_sock.getsockname()[1]}"

        emulators = [_server(entra.app, quiet=True), _server(foundry, quiet=True)]
        tasks = [
            asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
            for server, sock in zip(emulators, (entra_sock, foundry_sock), strict=True)
        ]
        proxy = _server(create_app(settings), quiet=False, grace=settings.shutdown_grace)
        try:
            while not all(s.started for s in emulators):
                if any(t.done() for t in tasks):
                    return 3
                await asyncio.sleep(0.01)
            log.info("emulated Entra ID on %s, emulated Foundry on %s", entra_url, foundry_url)
            log.info(
                "foundry-proxy demo listening on %s -> emulated Foundry %s", proxy_url, foundry_url
            )
            print(
                banner(proxy_url, entra_url, foundry_url, faults, args.token_lifetime), flush=True
            )
            await proxy.serve(sockets=[proxy_sock])
        finally:
            for server in emulators:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
        return 0 if proxy.started else 3
    finally:
        for sock in sockets:
            sock.close()


def problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the demo's own options."""
    out = []
    if not 0 <= args.port <= 65535:
        out.append("--port must be between 0 and 65535")
    if args.token_lifetime < 1:
        out.append("--token-lifetime must be at least 1 second")
    for name in ("token_delay", "first_token_delay", "rate_limit_every", "fail_every"):
        if getattr(args, name) < 0:
            out.append(f"--{name.replace('_', '-')} must not be negative")
    return out


def run(args: argparse.Namespace) -> int:
    """Serve the demo until Ctrl-C; returns the exit code."""
    wrong = problems(args)
    if wrong:
        print("foundry-proxy demo: " + "; ".join(wrong), file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"foundry-proxy demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        print("stopped", file=sys.stderr)
        return 130
