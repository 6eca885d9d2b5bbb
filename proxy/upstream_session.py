"""The connections to the upstream: one long-lived aiohttp session, shared by the HTTP forwarder
and the Realtime relay's handshakes, built from the settings.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import aiohttp

from proxy.settings import Settings

if TYPE_CHECKING:
    from aiohttp.client_middlewares import ClientHandlerType


class UpstreamSession:
    """Opened by ``start`` in the app's lifespan, closed by ``aclose`` after the drain."""

    def __init__(self, settings: Settings, tls: ssl.SSLContext) -> None:
        self._settings = settings
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._handshakes: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_size, limit_per_host=0, ttl_dns_cache=60, ssl=self._tls
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Cookies from one caller's response must never ride on another caller's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Bytes pass through as sent; Content-Encoding and Content-Length stay true.
            auto_decompress=False,
            # sock_read bounds the gap between reads, so a slow first token is fine as long as
            # it arrives within read_timeout (the OpenAI SDKs default to 600 s).
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            # Corporate proxies are opt-in: HTTPS_PROXY must not silently receive the token.
            trust_env=s.trust_env,
            # No session-wide skip_auto_headers: it costs ~6 % of a request's CPU (aiohttp
            # rebuilds it per request). Accept-Encoding is always set by request_headers; the
            # headers aiohttp would invent are skipped per request, only when missing
            # (response_relay.unsent).
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamSession.start() was not awaited"
        return self._session

    def handshakes(self) -> aiohttp.ClientSession:
        """For WebSocket handshakes: the same pool and settings, with redirects refused."""
        if self._handshakes is None:
            pool = self.session
            self._handshakes = aiohttp.ClientSession(
                connector=pool.connector,
                connector_owner=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=pool.timeout,
                trust_env=pool.trust_env,
                middlewares=(_no_redirects,),
            )
        return self._handshakes

    async def aclose(self) -> None:
        if self._handshakes is not None:
            await self._handshakes.close()
        if self._session is not None:
            await self._session.close()


async def _no_redirects(
    request: aiohttp.ClientRequest, handler: ClientHandlerType
) -> aiohttp.ClientResponse:
    """Refuse a redirected handshake: ws_connect has no allow_redirects and aiohttp follows
    up to ten, which repeated the handshake, bearer token included, wherever they led."""
    response = await handler(request)
    if 300 <= response.status < 400:
        response.close()
        raise aiohttp.WSServerHandshakeError(
            response.request_info,
            (),
            status=response.status,
            message="redirect refused",
            headers=response.headers,
        )
    return response
