"""Running the proxy's HTTP server: bind, listen, announce, serve, drain.

`foundry-proxy` and `foundry-proxy demo` both start the proxy through this module, so the demo
runs what production runs: the guarded listener (listener.py) configured from the settings, the
draining server below, on the event loop uvicorn picks (uvloop when installed).

A line that tells a person or a script where to connect is written only once that address
accepts connections. Sockets are bound *and listening* before anything is announced (the kernel
queues connections made before the event loop takes them, up to BACKLOG), and one process
announces its address after its server has started; a ``--workers`` supervisor announces once
its shared socket listens, and its workers take the queued connections as they start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from uvicorn.supervisors import Multiprocess

from proxy import garbage
from proxy.listener import ProxyConfig
from proxy.listener_limits import ListenerLimits
from proxy.settings import Settings
from proxy.websocket_listener import GuardedWebSocketProtocol

log = logging.getLogger("foundry_proxy")

T = TypeVar("T")
Announce = Callable[[], None]

# Connections the kernel holds for the proxy before it accepts them (a burst at startup, or
# while the event loop is busy). Linux caps it at net.core.somaxconn.
BACKLOG = 2048
# Signals that end the service gracefully. SIGHUP is what a closing terminal or ssh session
# sends: in-flight streams finish, as for SIGTERM from a process manager.
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ListenError(Exception):
    """An address the proxy cannot listen on; the message names the address and the reason."""


@dataclass(frozen=True)
class Listeners:
    """The proxy's sockets, bound and listening: a TCP socket and optionally a Unix one."""

    tcp: socket.socket
    unix: socket.socket | None = None
    unix_path: Path | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.tcp] if self.unix is None else [self.tcp, self.unix]

    @property
    def url(self) -> str:
        host, port = self.tcp.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)


def _listen_tcp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # shared with the worker processes of --workers
    return sock


def _listen_unix(path: Path) -> socket.socket:
    """A Unix socket only its owner can connect to (mode 0600, set before anyone can)."""
    if path.is_socket():
        path.unlink()  # left over from a previous run; binding would fail on it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.set_inheritable(True)
    return sock


def open_listeners(host: str, port: int, uds: Path | None = None) -> Listeners:
    """Bind and listen on ``host:port`` (and the Unix socket ``uds``); raise ListenError."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        tcp = _listen_tcp(host, port)
    except OSError as exc:
        raise ListenError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc
    if uds is None:
        return Listeners(tcp)
    try:
        unix = _listen_unix(uds)
    except OSError as exc:
        tcp.close()
        raise ListenError(f"cannot listen on {uds}: {exc.strerror or exc}") from exc
    return Listeners(tcp, unix, uds)


# File descriptors the proxy may need besides its connections and theirs upstream: listening
# sockets, the token service's connections, log files, the event loop's own, idle upstream
# connections kept after their clients left, connections being turned away.
FD_HEADROOM = 256


def open_files_wanted(max_connections: int) -> int:
    """Descriptors for FOUNDRY_PROXY_MAX_CONNECTIONS connections: each and its upstream
    connection, plus FD_HEADROOM."""
    return 2 * max_connections + FD_HEADROOM


def open_files_target(soft: int, hard: int, wanted: int) -> int:
    """The soft RLIMIT_NOFILE to set: ``wanted`` as far as ``hard`` allows, never lower than
    ``soft`` is already."""
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    return wanted if hard == resource.RLIM_INFINITY else max(soft, min(wanted, hard))


def fit_open_files(settings: Settings) -> None:
    """Raise this process's soft open-file limit to what FOUNDRY_PROXY_MAX_CONNECTIONS needs
    (worker processes inherit it); warn when the hard limit does not allow it. With the usual
    soft limit of 1024 the proxy could not even accept 1024 connections: accept() would fail
    long before the connection cap answered anyone 503."""
    wanted = open_files_wanted(settings.max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = open_files_target(soft, hard, wanted)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # macOS caps it below an unlimited hard limit
            target = soft
        else:
            log.debug("open-file limit raised from %d to %d", soft, target)
    if target < wanted:
        log.warning(
            "the open-file limit is %d (hard limit %s): FOUNDRY_PROXY_MAX_CONNECTIONS=%d needs "
            "about %d, so connections will fail to be accepted before that cap answers 503. "
            "Raise the hard limit (ulimit -Hn; LimitNOFILE= for systemd; --ulimit nofile= for "
            "containers) or set FOUNDRY_PROXY_MAX_CONNECTIONS to %d or less",
            target,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
            settings.max_connections,
            wanted,
            max(1, (target - FD_HEADROOM) // 2),
        )


def proxy_config(app: Any, settings: Settings, **extra: Any) -> ProxyConfig:
    """uvicorn's configuration for the proxy, from the settings. Every way of starting the
    proxy (one process, workers, the demo) comes through here, so this is also where the
    process's open-file limit is fitted to the connection cap."""
    fit_open_files(settings)
    config = ProxyConfig(
        app,
        head_timeout=settings.head_timeout,
        max_header_bytes=settings.max_header_bytes,
        ws_max_size=settings.ws_max_message_bytes,
        ws=GuardedWebSocketProtocol,
        lifespan="on",
        log_config=None,  # logging is ours (logs.py), redaction included
        access_log=False,
        # Nothing stands in front of the proxy: X-Forwarded-For or -Proto from a local client
        # must not change what uvicorn reports about the connection (uvicorn trusts them from
        # 127.0.0.1 by default).
        proxy_headers=False,
        server_header=False,
        # The upstream's Date passes through; proxy-made answers need none.
        date_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        backlog=BACKLOG,
        **extra,
    )
    ListenerLimits.from_settings(settings).apply_to(config)
    return config


def _nothing() -> None:
    return None


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with the proxy's signal handling and a hook for announcing itself.

    SIGINT, SIGTERM and SIGHUP all drain: no new connections, requests in flight finish within
    the grace period. A second SIGINT or SIGTERM ends the drain at once (uvicorn forces the exit
    only on a second SIGINT; Kubernetes and process managers send SIGTERM twice, or SIGTERM
    then SIGKILL). A second SIGHUP does not: a closing terminal can deliver it twice (once
    from the shell, once from the kernel), and that is no operator asking twice.
    """

    def __init__(self, config: uvicorn.Config, on_started: Announce = _nothing) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            garbage.settle()
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version takes SIGINT and SIGTERM only, and re-raises them after the
        # drain so that the default handler kills the process by the signal; after a
        # completed drain the honest end is a normal exit, status 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if not self.should_exit:
            self.should_exit = True
            log.info(
                "%s: no new connections; draining %d request(s) in flight for up to %s s",
                name,
                self._busy(),
                self.config.timeout_graceful_shutdown,
            )
        elif sig != signal.SIGHUP and not self.force_exit:
            self.force_exit = True
            log.warning("%s again: exiting now, cutting %d request(s)", name, self._busy())

    def _busy(self) -> int:
        return len(self.server_state.tasks)


def run_main(config: uvicorn.Config, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the event loop uvicorn picks for ``config`` (uvloop when installed)."""
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        return runner.run(main)


async def serve(server: DrainingServer, listeners: Listeners) -> bool:
    """Serve on ``listeners`` until a signal and its drain; close them. True if it started."""
    try:
        await server.serve(sockets=listeners.sockets)
    finally:
        listeners.close()
    return server.started


def run(app: Any, settings: Settings, listeners: Listeners, announce: Announce) -> bool:
    """One process: serve ``app`` until a signal; ``announce`` once it accepts connections."""
    server = DrainingServer(proxy_config(app, settings), on_started=announce)
    return run_main(server.config, serve(server, listeners))


@dataclass(frozen=True)
class _WorkerApp:
    """Builds a worker's app (in the worker process) from a picklable factory."""

    factory: Callable[[], Any]

    def __call__(self) -> Any:
        # A closing terminal sends SIGHUP to every process of its foreground group, workers
        # included. The supervisor drains them (SIGTERM, below); on their own they would die
        # at once, cutting their streams.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        app = self.factory()
        garbage.settle()  # after the bulk of imports; the lifespan adds few
        return app


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor; SIGHUP stops the service like SIGTERM, where uvicorn
    would restart the workers."""

    def handle_hup(self) -> None:
        log.info("SIGHUP: stopping the workers; each drains its requests in flight")
        self.should_exit.set()


def run_workers(settings: Settings, listeners: Listeners, announce: Announce) -> None:
    """``settings.workers`` processes accepting on the same sockets, each with its own app
    and token, supervised (restarts, signals) until a signal and the workers' drain."""
    from proxy.app import AppFactory

    config = proxy_config(
        _WorkerApp(AppFactory(settings)), settings, factory=True, workers=settings.workers
    )
    # The supervisor took the worker's run method as `target` in older uvicorn releases.
    if "target" in inspect.signature(Multiprocess).parameters:
        target = uvicorn.Server(config).run
        supervisor = _Supervisor(config, target=target, sockets=listeners.sockets)  # type: ignore[call-arg]
    else:
        supervisor = _Supervisor(config, sockets=listeners.sockets)
    announce()
    try:
        supervisor.run()
    finally:
        listeners.close()
