"""RFC 6455 WebSockets over a blocking socket: the frame codec (pure), both opening handshakes and
a small connection object.  The agent serves ``kubectl exec``/``attach`` with it; tests use it as a
client.  No extensions (no permessage-deflate): we never offer or accept any.

Server side, inside an HTTP handler that has read the request line and headers::

    if is_upgrade_request(headers.get):
        proto = choose_subprotocol(headers.get("Sec-WebSocket-Protocol"), ["v5.channel.k8s.io"])
        sock.sendall(handshake_response(headers.get, proto))    # HandshakeError -> answer 400 instead
        ws = WebSocket(sock, client=False, subprotocol=proto, read=rfile.read1)

Client side::

    ws = connect("127.0.0.1", 10250, "/exec/ns/pod/c?command=ls&output=1", subprotocols=["v5.channel.k8s.io"])
    ws.send(b"\\x00hello")           # one binary message (str -> a text message)
    msg = ws.recv()                 # Message(opcode, data); None once the peer closed (ws.close_code)
    ws.close()                      # the closing handshake; ws.abort() drops the connection

``WebSocket.recv`` reassembles fragmented messages, answers pings with pongs and a peer's close
with a close; one thread may read while others send (sends are serialised by a lock).  Protocol
violations by the peer (an unmasked client frame, a bad opcode, an oversized message, invalid
UTF-8 in a text message, ...) close the connection with the RFC's status code and make recv()
return None; they never raise out of recv().
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # never sent: "the close frame had no code"
CLOSE_ABNORMAL = 1006  # never sent: "the connection dropped without a close frame"
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close status to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(Exception):
    """An opening handshake that cannot succeed.  Server side: answer HTTP 400 with the message.
    Client side: ``status`` and ``body`` are the server's non-101 answer (0 and b"" if it sent none)."""

    def __init__(self, message: str, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# -- frames (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


@dataclass(frozen=True)
class Message:
    opcode: int  # OP_TEXT or OP_BINARY
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()


def mask_bytes(key: bytes, data: bytes) -> bytes:
    """XOR data with the 4-byte masking key (masking and unmasking are the same operation)."""
    if not data:
        return data
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame on the wire.  Clients must mask (pass a 4-byte key), servers must not."""
    if opcode in CONTROL_OPCODES and (len(payload) > 125 or not fin):
        raise ValueError("a control frame carries at most 125 bytes and cannot be fragmented")
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if mask is None:
        return bytes(head) + payload
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    return bytes(head) + mask + mask_bytes(mask, payload)


class FrameDecoder:
    """Bytes in any split -> complete frames, with the RFC's checks.

    expect_masked: True on a server (every client frame must be masked), False on a client
    (server frames must not be).  max_frame bounds one frame's payload (ProtocolError 1009).
    """

    def __init__(self, *, expect_masked: bool, max_frame: int = DEFAULT_MAX_MESSAGE) -> None:
        self.expect_masked = expect_masked
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        masked, n = bool(b1 & 0x80), b1 & 0x7F
        if rsv:
            raise ProtocolError("reserved bits set, but no extension was negotiated")
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        if opcode in CONTROL_OPCODES and (not fin or n > 125):
            raise ProtocolError("a control frame must be final and carry at most 125 bytes")
        if masked != self.expect_masked:
            raise ProtocolError("client frames must be masked" if self.expect_masked
                                else "server frames must not be masked")
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from("!Q", buf, 2)[0]
            if n >> 63:
                raise ProtocolError("a 64-bit payload length must have its top bit clear")
            pos = 10
        if n > self.max_frame:
            raise ProtocolError(f"a frame of {n} bytes is larger than the limit of {self.max_frame}", CLOSE_TOO_BIG)
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        return Frame(fin, opcode, mask_bytes(key, payload) if masked else payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


def parse_close(payload: bytes) -> tuple[int, str]:
    """A close frame's (code, reason); (1005, "") when it has none."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError("a close frame's payload is either empty or at least 2 bytes")
    code = struct.unpack("!H", payload[:2])[0]
    if not (code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
            or 3000 <= code <= 4999):
        raise ProtocolError(f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError("the close reason is not UTF-8", CLOSE_INVALID_DATA) from None
    return code, reason


# -- handshakes ---------------------------------------------------------------------------------

HeaderGetter = Callable[[str], "str | None"]


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _tokens(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def is_upgrade_request(header: HeaderGetter) -> bool:
    """Upgrade: websocket and Connection: ..., upgrade (header names are case-insensitive)."""
    return ((header("Upgrade") or "").strip().lower() == "websocket"
            and "upgrade" in (t.lower() for t in _tokens(header("Connection"))))


def choose_subprotocol(offered: str | None, supported: Iterable[str]) -> str | None:
    """The first subprotocol the client offered that we support (the client's preference wins)."""
    ours = list(supported)
    return next((p for p in _tokens(offered) if p in ours), None)


def handshake_response(header: HeaderGetter, subprotocol: str | None) -> bytes:
    """The server's 101 answer to a WebSocket upgrade request; HandshakeError when it is not one."""
    if not is_upgrade_request(header):
        raise HandshakeError("not a WebSocket upgrade: send Upgrade: websocket and Connection: Upgrade")
    if (header("Sec-WebSocket-Version") or "").strip() != "13":
        raise HandshakeError("unsupported Sec-WebSocket-Version: use 13")
    key = (header("Sec-WebSocket-Key") or "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError("Sec-WebSocket-Key must be 16 bytes in base64") from None
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(host: str, port: int, path: str, *, subprotocols: Iterable[str] = (),
            headers: dict[str, str] | None = None, timeout: float = 10.0,
            max_message: int = DEFAULT_MAX_MESSAGE, ssl_context: ssl.SSLContext | None = None) -> WebSocket:
    """Open a client WebSocket to ws://HOST:PORT/PATH (wss:// with ssl_context).  HandshakeError carries a
    refusal's status and body.  ``timeout`` bounds the connect and the handshake; the connection itself
    then blocks without one."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"GET {path} HTTP/1.1", f"Host: {hostport}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        protos = list(subprotocols)
        if protos:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protos)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        status_line = reader.readline(65537).decode("latin-1").strip()
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HandshakeError(f"not an HTTP answer: {status_line[:100]!r}")
        status = int(parts[1])
        got: dict[str, str] = {}
        while (line := reader.readline(65537).decode("latin-1").strip()):
            name, _, value = line.partition(":")
            got[name.strip().lower()] = value.strip()
        if status != 101:
            length = int(got.get("content-length", "0") or 0)
            body = reader.read(min(length, 1 << 20)) if length else b""
            raise HandshakeError(f"the server answered {status_line!r}", status, body)
        if got.get("sec-websocket-accept") != accept_key(key):
            raise HandshakeError("the server's Sec-WebSocket-Accept does not match our key", status)
        proto = got.get("sec-websocket-protocol", "")
        if proto and proto not in protos:
            raise HandshakeError(f"the server chose subprotocol {proto!r}, which we did not offer", status)
        sock.settimeout(None)
        return WebSocket(sock, client=True, subprotocol=proto, read=reader.read1, max_message=max_message)
    except BaseException:
        sock.close()
        raise


# -- the connection -----------------------------------------------------------------------------


class WebSocket:
    """One WebSocket connection (after the handshake) over a connected, blocking socket.

    read: where bytes come from (default sock.recv); pass the HTTP layer's buffered reader's
    read1 so that bytes it read past the handshake are not lost.
    """

    def __init__(self, sock: socket.socket, *, client: bool, subprotocol: str = "",
                 read: Callable[[int], bytes] | None = None, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.sock = sock
        self.client = client
        self.subprotocol = subprotocol
        self.max_message = max_message
        self.close_code: int | None = None  # the peer's close code (1006: it dropped without one)
        self.close_reason = ""
        self._read = read or sock.recv
        self._decoder = FrameDecoder(expect_masked=not client, max_frame=max_message)
        self._pending: list[Frame] = []
        self._send_lock = threading.Lock()
        self._close_sent = False
        self._closed = False  # no more reading: the peer closed or the connection broke

    # -- sending --

    def _send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        frame = encode_frame(opcode, payload, fin=fin, mask=os.urandom(4) if self.client else None)
        with self._send_lock:
            if self._close_sent:
                raise ConnectionError("the WebSocket is closing: no more messages may be sent")
            if opcode == OP_CLOSE:
                self._close_sent = True
            self.sock.sendall(frame)

    def send(self, data: bytes | str) -> None:
        """One message: bytes -> binary, str -> text.  OSError/ConnectionError once the connection is gone."""
        if isinstance(data, str):
            self._send_frame(OP_TEXT, data.encode())
        else:
            self._send_frame(OP_BINARY, bytes(data))

    def ping(self, data: bytes = b"") -> None:
        self._send_frame(OP_PING, data)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start (or finish) the closing handshake; a no-op once a close was sent or the socket is gone."""
        try:
            self._send_frame(OP_CLOSE, close_payload(code, reason))
        except (OSError, ConnectionError):
            pass

    def abort(self) -> None:
        """Drop the connection now (unblocks a recv() in another thread)."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- receiving --

    def _frame(self) -> Frame | None:
        while not self._pending:
            try:
                data = self._read(65536)
            except OSError:
                data = b""
            if not data:
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def recv(self) -> Message | None:
        """The next text or binary message; None when the connection is over (see close_code)."""
        if self._closed:
            return None
        try:
            return self._recv()
        except ProtocolError as e:
            self.close_code = e.code
            self.close_reason = str(e)
            self.close(e.code, str(e))
            self._closed = True
            return None

    def _recv(self) -> Message | None:
        opcode, parts, size = -1, [], 0
        while True:
            frame = self._frame()
            if frame is None:
                self._closed = True
                if self.close_code is None:
                    self.close_code = CLOSE_ABNORMAL
                return None
            if frame.opcode == OP_PING:
                try:
                    self._send_frame(OP_PONG, frame.payload)
                except (OSError, ConnectionError):
                    pass
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode == OP_CLOSE:
                self.close_code, self.close_reason = parse_close(frame.payload)
                self._closed = True
                echo = CLOSE_NORMAL if self.close_code == CLOSE_NO_STATUS else self.close_code
                self.close(echo)
                return None
            if frame.opcode == OP_CONTINUATION:
                if opcode < 0:
                    raise ProtocolError("a continuation frame without a message to continue")
            elif opcode >= 0:
                raise ProtocolError("a new message started before the fragmented one ended")
            else:
                opcode = frame.opcode
            size += len(frame.payload)
            if size > self.max_message:
                raise ProtocolError(f"a message larger than {self.max_message} bytes", CLOSE_TOO_BIG)
            parts.append(frame.payload)
            if frame.fin:
                data = b"".join(parts)
                if opcode == OP_TEXT:
                    try:
                        data.decode()
                    except UnicodeDecodeError:
                        raise ProtocolError("a text message that is not UTF-8", CLOSE_INVALID_DATA) from None
                return Message(opcode, data)
