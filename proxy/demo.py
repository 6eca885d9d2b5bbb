"""`foundry-proxy demo`: the real proxy in front of an emulated Entra ID and Foundry, one process.

Nothing leaves the machine and no Azure account is needed. The proxy is configured exactly as in
production except for the two URLs, which point at the emulator on loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from proxy.app import create_app
from proxy.emulator import deployments
from proxy.emulator.deployments import Deployment, Deployments
from proxy.emulator.entra import EmulatedEntra
from proxy.emulator.faults import Faults
from proxy.emulator.foundry import EmulatedFoundry
from proxy.emulator.tokens import TokenIssuer
from proxy.errors import ConfigError
from proxy.server import (
    DrainingServer,
    ListenError,
    Listeners,
    open_listeners,
    proxy_config,
    run_main,
    serve,
)
from proxy.settings import Settings, load_settings

log = logging.getLogger("foundry_proxy.emulator")

DEMO_TENANT = "emulator.onmicrosoft.com"
DEMO_CLIENT_ID = str(uuid.uuid5(uuid.NAMESPACE_DNS, "client.emulator.foundry-proxy"))
EXIT_USAGE = 2
EXIT_STARTUP = 3


class _EmulatorServer(uvicorn.Server):
    """An emulator's server: the proxy's server owns the signals; this one stops when told."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _EmulatorLifecycle(logging.Filter):
    """Drops the emulators' own uvicorn lifecycle lines ("Started server process", "Shutting
    down", ...): they would repeat the proxy's, which is the server the user runs. Warnings
    and errors pass."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: set[asyncio.Task[None]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        try:
            return asyncio.current_task() not in self.tasks
        except RuntimeError:  # logged from outside the event loop's thread
            return True


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
        help="answer every Nth request with 429 and Azure's throttling headers (default off)",
    )
    parser.add_argument(
        "--retry-after",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds a 429 asks the client to wait (Retry-After, retry-after-ms; default 2)",
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with 500 (default off)",
    )
    parser.add_argument(
        "--deployments",
        metavar="NAME=KIND,...",
        help="the emulated resource's deployments, replacing the defaults ("
        + ", ".join(f"{d.name}={d.kind}" for d in deployments.DEFAULTS)
        + "); KIND is one of "
        + ", ".join(deployments.KINDS)
        + ". Other names get Azure's 404 DeploymentNotFound",
    )


def _emulator_server(app: object) -> _EmulatorServer:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=1,
    )
    return _EmulatorServer(config)


def _chat_model(held: tuple[Deployment, ...]) -> str:
    chat = next((d.name for d in held if d.kind == "chat"), None)
    return chat or "gpt-4o-mini"


def banner(
    proxy: str,
    entra: str,
    foundry: str,
    faults: Faults,
    lifetime: float,
    held: tuple[Deployment, ...] = deployments.DEFAULTS,
) -> str:
    knobs = []
    if faults.rate_limit_every:
        knobs.append(f"429 every {faults.rate_limit_every} requests")
    if faults.fail_every:
        knobs.append(f"500 every {faults.fail_every} requests")
    if faults.first_token_delay:
        knobs.append(f"first token after {faults.first_token_delay:g} s")
    knobs.append(f"tokens live {lifetime:g} s")
    model = _chat_model(held)
    claude = next((d.name for d in held if d.kind == "claude"), None)
    claude_lines = (
        f"""
  # Claude, with the Anthropic SDK (pip install anthropic):
  from anthropic import Anthropic
  claude = Anthropic(base_url="{proxy}/anthropic", api_key="unused")
  print(claude.messages.create(model="{claude}", max_tokens=256,
      messages=[{{"role": "user", "content": "Hello"}}]).content[0].text)
"""
        if claude
        else ""
    )
    return f"""
foundry-proxy demo: the real proxy in front of an EMULATED Entra ID and Foundry.
No Azure account is used and nothing leaves this machine. Answers are echoes from the emulator.

  proxy              {proxy}
  Anthropic base URL {proxy}/anthropic
  emulated Entra ID  {entra}
  emulated Foundry   {foundry}   ({", ".join(knobs)})
  deployments        {",".join(f"{d.name}={d.kind}" for d in held)}

Try it:

  curl -N {proxy}/v1/chat/completions -H 'Content-Type: application/json' -d \\
    '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

  # Python, with the OpenAI SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{proxy}/v1", api_key="unused")
  for chunk in client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "Hello"}}], stream=True
  ):
      if chunk.choices and chunk.choices[0].delta.content:
          print(chunk.choices[0].delta.content, end="", flush=True)
{claude_lines}
Readiness: {proxy}/readyz   Stop: Ctrl-C
"""


@dataclass(frozen=True)
class _Demo:
    """The emulators and the proxy's settings, each server's socket bound and listening."""

    faults: Faults
    held: tuple[Deployment, ...]
    entra: EmulatedEntra
    foundry: EmulatedFoundry
    settings: Settings
    entra_at: Listeners
    foundry_at: Listeners
    proxy_at: Listeners

    def close(self) -> None:
        for listeners in (self.entra_at, self.foundry_at, self.proxy_at):
            listeners.close()


def _prepare(args: argparse.Namespace) -> _Demo:
    """Emulators, settings and listening sockets; raises ConfigError or ListenError."""
    issuer = TokenIssuer()
    secret = secrets.token_urlsafe(30)
    faults = Faults(
        rate_limit_every=args.rate_limit_every,
        retry_after=args.retry_after,
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
    with contextlib.ExitStack() as undo:
        entra_at = open_listeners("127.0.0.1", 0)
        undo.callback(entra_at.close)
        foundry_at = open_listeners("127.0.0.1", 0)
        undo.callback(foundry_at.close)
        settings = load_settings(
            upstream=foundry_at.url,
            authority_host=entra_at.url,
            tenant_id=DEMO_TENANT,
            client_id=DEMO_CLIENT_ID,
            client_secret=secret,
            host="127.0.0.1",
            port=args.port,
            # Everything stays on this machine, whatever proxy variables the environment holds.
            trust_env=False,
        )
        proxy_at = open_listeners(settings.host, settings.port)
        undo.pop_all()
    held = deployments.parse(args.deployments) if args.deployments else deployments.DEFAULTS
    foundry = EmulatedFoundry(issuer, faults, Deployments(held))
    return _Demo(faults, held, entra, foundry, settings, entra_at, foundry_at, proxy_at)


def _announce(demo: _Demo, lifetime: float) -> None:
    """Where to connect: called once the proxy (and both emulators) accept connections."""
    entra, foundry, proxy = demo.entra_at.url, demo.foundry_at.url, demo.proxy_at.url
    log.info("emulated Entra ID on %s, emulated Foundry on %s", entra, foundry)
    log.info("foundry-proxy demo listening on %s -> emulated Foundry %s", proxy, foundry)
    print(banner(proxy, entra, foundry, demo.faults, lifetime, demo.held), flush=True)


async def _serve(demo: _Demo, proxy: DrainingServer) -> bool:
    """The emulators, then the proxy until a signal; True if the proxy started."""
    emulators = [
        (_emulator_server(demo.entra.app), demo.entra_at),
        (_emulator_server(demo.foundry), demo.foundry_at),
    ]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(server.serve(sockets=at.sockets)) for server, at in emulators]
    lifecycle = _EmulatorLifecycle()
    lifecycle.tasks.update(tasks)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(lifecycle)
    try:
        while not all(server.started for server, _ in emulators):
            if any(task.done() for task in tasks):
                return False
            await asyncio.sleep(0.01)
        return await serve(proxy, demo.proxy_at)
    finally:
        # The emulators outlive the proxy's drain: requests in flight still reach them.
        for server, _ in emulators:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        uvicorn_log.removeFilter(lifecycle)


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
    if not 0 < args.retry_after <= 120:
        # Above 120 s the OpenAI SDK gives up instead of waiting (docs/azure.md, section 9).
        out.append("--retry-after must be more than 0 and at most 120 seconds")
    if args.deployments is not None:
        try:
            deployments.parse(args.deployments)
        except ValueError as exc:
            out.append(f"--deployments: {exc}")
    return out


def run(args: argparse.Namespace) -> int:
    """Serve the demo until Ctrl-C; returns the exit code."""
    wrong = problems(args)
    if wrong:
        print("foundry-proxy demo: " + "; ".join(wrong), file=sys.stderr)
        return EXIT_USAGE
    try:
        demo = _prepare(args)
    except ConfigError as exc:
        print(f"foundry-proxy demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ListenError as exc:
        log.error("%s (try --port 0)", exc)
        return EXIT_STARTUP
    try:
        # The proxy exactly as `foundry-proxy` runs it (server.py), in front of the emulators.
        app = create_app(demo.settings)
        announce = functools.partial(_announce, demo, args.token_lifetime)
        proxy = DrainingServer(proxy_config(app, demo.settings), on_started=announce)
        started = run_main(proxy.config, _serve(demo, proxy))
    except ConfigError as exc:
        print(f"foundry-proxy demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        demo.close()
    return 0 if started else EXIT_STARTUP
