"""uvicorn's HTTP and WebSocket protocols, plus the TLS peer in the ASGI scope.

uvicorn verifies a client certificate during the handshake (the ssl context asks for one and checks
it against the client CA) but does not tell the app who the peer is. These subclasses put it into
every request's scope:

    scope["extensions"]["tls"] = {
        "client_cert": {...} | None,      # ssl.SSLObject.getpeercert(): verified subject, SANs, dates
        "client_cert_der": bytes | None,  # the same certificate, DER
        "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
    }

Nothing is added on plain-HTTP connections. The HTTP protocol also bounds what a slow or greedy
client can hold (LimitedHttpToolsProtocol: header size, header/body/idle timeouts, a connection cap). Pass the classes to uvicorn.Config(http=HttpProtocol,
ws=WebSocketProtocol); WebSocketProtocol is None when neither `websockets` nor `wsproto` is installed
(uvicorn then refuses upgrades, as with ws="none").
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
from dataclasses import dataclass
from typing import Any, cast

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("kubeling.apiserver.http")


def tls_info(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The TLS facts of a connection (after its handshake), or None for plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return {
        "client_cert": ssl_object.getpeercert() or None,
        "client_cert_der": ssl_object.getpeercert(binary_form=True),
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
    }


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost (upstream's http.Server: MaxHeaderBytes 1 MiB, ReadHeaderTimeout 32 s,
    IdleTimeout 90 s; the body timeout is upstream's request timeout, 60 s). Set as
    uvicorn.Config(...).connection_limits; HttpProtocol reads it there."""

    max_header_bytes: int = 1 << 20  # request line + headers of one request
    header_timeout: float = 32.0  # first byte of a request -> end of its headers
    body_timeout: float = 60.0  # end of the headers -> end of the body
    idle_timeout: float = 90.0  # a connection with no request in progress (new, or kept alive)
    max_connections: int = 4096  # open HTTP connections; beyond, the longest-waiting one is closed


def _status_bytes(code: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": message, "reason": reason, "code": code})
    phrase = http.HTTPStatus(code).phrase
    return (f"HTTP/1.1 {code} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol with the limits a public server needs against slow or greedy clients.

    A connection is, at any time, *waiting* (for the next request's headers, or for the body of the
    current one) or *serving* (the app has the whole request; watches stream here for minutes).
    Waiting is bounded: the headers of a request must be complete header_timeout seconds after its
    first byte and within max_header_bytes (else 431), its body body_timeout seconds after its
    headers, and a connection without a request in progress is closed after idle_timeout (uvicorn
    only times out connections that have had a response; a new one that sends nothing would stay).
    Past max_connections, the connection that has been waiting longest is closed to make room, so
    200 connections trickling headers cannot lock out a client that sends a whole request.

    A response that completes before its request's body was read (413, 429) ends the connection, as
    Go's server does: the rest of the body is read and dropped for a moment so the client sees the
    answer rather than a reset, and never parsed."""

    limits = ConnectionLimits()

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = getattr(config, "connection_limits", None) or ConnectionLimits()
        self._waiting = True  # for headers (or idle): bytes that arrive count against max_header_bytes
        self._serving = False  # the app has a whole request and has not finished its response
        self._waiting_since = 0.0
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._discarding = False

    # -- timers
    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        if seconds > 0:
            self._timer = self.loop.call_later(seconds, self._expire, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, why: str) -> None:
        self._timer = None
        if not self.transport.is_closing():
            log.debug("closing connection client=%s reason=%s", self._peer(), why)
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    # -- connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._arm(self.limits.idle_timeout, "idle")
        if len(self.connections) > _connection_cap(self.limits.max_connections):
            self._make_room()

    def _make_room(self) -> None:
        """Close the connection that has waited longest for its client (maybe this new one)."""
        waiting = [c for c in self.connections if isinstance(c, LimitedHttpToolsProtocol) and c._is_waiting()]
        victim = min(waiting, key=lambda c: c._waiting_since, default=self)
        log.debug("too many connections, closing one client=%s open=%d", victim._peer(), len(self.connections))
        victim._disarm()
        victim.transport.close()

    def _is_waiting(self) -> bool:
        return not self._serving and not self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._waiting:
            if self._header_bytes == 0:  # the first byte of a request
                self._waiting_since = self.loop.time()
                self._arm(self.limits.header_timeout, "request headers too slow")
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes + 4096:  # one read's slack, as Go allows
                log.debug("request headers too large client=%s bytes=%d", self._peer(), self._header_bytes)
                self.transport.write(_status_bytes(
                    431, "RequestHeaderFieldsTooLarge",
                    f"the request line and headers are larger than the limit of {self.limits.max_header_bytes} bytes"))
                self._linger_and_close()
                return
        super().data_received(data)

    # -- parser callbacks
    def on_headers_complete(self) -> None:
        self._waiting = False
        self._header_bytes = 0
        self._waiting_since = self.loop.time()
        self._arm(self.limits.body_timeout, "request body too slow")
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a new request (not an upgrade)
            cycle.send = self._closing_send(cycle)  # type: ignore[method-assign]

    @staticmethod
    def _closing_send(cycle: Any) -> Any:
        """The cycle's send, which tells the client "Connection: close" when the app answers before the
        request body is all in (the connection ends then: see on_response_complete) so that it does not
        send its next request on it; uvicorn itself would close at once, so its keep-alive stays on."""
        send = cycle.send

        async def closing_send(message: Any) -> None:
            if message["type"] == "http.response.start" and cycle.more_body:
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
                await send(message)
                cycle.keep_alive = True  # the header went out; the protocol lingers, then closes
                return
            await send(message)

        return closing_send

    def on_message_complete(self) -> None:
        self._disarm()  # the app has the whole request: serving, however long (watches)
        self._serving = self.cycle is not None and not self.cycle.response_complete
        super().on_message_complete()
        self._waiting = True  # what comes next belongs to the next request

    def on_response_complete(self) -> None:
        self._serving = False
        self._waiting_since = self.loop.time()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._linger_and_close()  # answered before the body was read (413, 429)
            return
        super().on_response_complete()  # arms uvicorn's keep-alive timer: timeout_keep_alive = idle_timeout

    def _linger_and_close(self) -> None:
        """Send what is written, then drop what the client still sends for half a second, then close:
        closing at once with unread data would reset the connection before the client read the answer."""
        self._discarding = True
        self._disarm()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(0.5, self.transport.close)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes over the connection
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to unparsable HTTP, as a Status."""
        self.transport.write(_status_bytes(400, "BadRequest", msg))
        self._linger_and_close()


def _connection_cap(configured: int) -> int:
    """The configured cap, but below the process's file descriptor limit (store, logs and watches need some)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - 128))


class HttpProtocol(LimitedHttpToolsProtocol):
    """httptools' HTTP/1.1 protocol; each request's scope carries the connection's TLS facts."""

    tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.tls = tls_info(transport)  # once per connection: the handshake is done by now

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.tls is not None:
            cast(dict[str, Any], self.scope)["extensions"] = {"tls": self.tls}


def _websocket_protocol() -> type[asyncio.Protocol] | None:
    base: Any
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as base
    except ImportError:
        try:
            from uvicorn.protocols.websockets.wsproto_impl import WSProtocol as base
        except ImportError:
            return None

    class WebSocketProtocol(base):  # type: ignore[valid-type,misc]
        """uvicorn's WebSocket protocol; the scope carries the TLS facts as for HTTP."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            conn = getattr(self, "conn", None)
            if conn is not None and hasattr(conn, "process_subprotocol"):
                # kubectl port-forward offers "SPDY/3.1+portforward.k8s.io", which the websockets library's
                # strict token parser refuses ('/' is no token character). The app picks the subprotocol in
                # its accept message (uvicorn adds the header then), so the offer need not be parsed here.
                conn.process_subprotocol = lambda headers: None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            # the scope is built and the app task created but not yet run: it sees this
            tls = tls_info(self.transport)
            if tls is not None:
                self.scope.setdefault("extensions", {})["tls"] = tls

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message.get("type") == "websocket.http.response.body" and not message.get("more_body", False):
                # an HTTP answer instead of the handshake (a 401, say) is a complete reply; without this
                # uvicorn logs "ASGI callable returned without completing handshake" for every refusal
                self.handshake_complete = True

    return WebSocketProtocol


WebSocketProtocol = _websocket_protocol()
