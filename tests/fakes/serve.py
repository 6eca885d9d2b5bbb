"""Run an ASGI app under a real uvicorn server on a loopback port, in a background thread.

The fakes run in their own thread and event loop so that tests can drive the proxy with
blocking clients (the sync openai SDK, raw sockets) without starving the servers.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from tests.support.readiness import wait_until


def bind_loopback(host: str = "127.0.0.1") -> socket.socket:
    """A socket on a free port of ``host``, bound but not listening (connections to it are
    refused until a server takes it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


class ServerThread:
    """uvicorn serving ``app`` on ``host`` and a free port until stop()."""

    def __init__(self, app: Any, host: str = "127.0.0.1", **config: Any) -> None:
        self.sock = bind_loopback(host)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            loop="asyncio",
            timeout_graceful_shutdown=1,
            **config,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        if not wait_until(lambda: self.server.started or not self.thread.is_alive(), 30):
            self.stop()
            raise RuntimeError("fake server did not start within 30 s")
        if not self.server.started:
            self.sock.close()
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
