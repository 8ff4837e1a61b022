"""kube/websocket.py: RFC 6455 frames (the RFC's own examples), the checks, fragmentation, control
frames, the closing handshake and both opening handshakes, over socketpairs and a loopback server."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from kube import websocket as ws
from kube.websocket import Frame, FrameDecoder, HandshakeError, Message, ProtocolError, WebSocket


def test_rfc_examples_decode() -> None:
    """RFC 6455 section 5.7, byte for byte."""
    client = FrameDecoder(expect_masked=False)
    assert client.feed(bytes([0x81, 0x05]) + b"Hello") == [Frame(True, ws.OP_TEXT, b"Hello")]
    server = FrameDecoder(expect_masked=True)
    masked = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert server.feed(masked) == [Frame(True, ws.OP_TEXT, b"Hello")]
    fragments = bytes([0x01, 0x03]) + b"Hel" + bytes([0x80, 0x02]) + b"lo"
    assert client.feed(fragments) == [Frame(False, ws.OP_TEXT, b"Hel"), Frame(True, ws.OP_CONTINUATION, b"lo")]
    assert client.feed(bytes([0x8A, 0x05]) + b"Hello") == [Frame(True, ws.OP_PONG, b"Hello")]
    big = bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(256)
    assert client.feed(big) == [Frame(True, ws.OP_BINARY, bytes(256))]
    huge = bytes([0x82, 0x7F]) + struct.pack("!Q", 65536) + bytes(65536)
    assert client.feed(huge) == [Frame(True, ws.OP_BINARY, bytes(65536))]


def test_rfc_examples_encode() -> None:
    assert ws.encode_frame(ws.OP_TEXT, b"Hello") == bytes([0x81, 0x05]) + b"Hello"
    assert ws.encode_frame(ws.OP_TEXT, b"Hello", mask=bytes([0x37, 0xFA, 0x21, 0x3D])) == bytes(
        [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert ws.encode_frame(ws.OP_BINARY, bytes(256))[:4] == bytes([0x82, 0x7E, 0x01, 0x00])
    assert ws.encode_frame(ws.OP_BINARY, bytes(65536))[:10] == bytes([0x82, 0x7F]) + struct.pack("!Q", 65536)
    assert ws.encode_frame(ws.OP_TEXT, b"Hel", fin=False)[0] == 0x01
    with pytest.raises(ValueError):
        ws.encode_frame(ws.OP_PING, bytes(126))


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
def test_roundtrip_any_split(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    wire = ws.encode_frame(ws.OP_BINARY, payload, mask=b"\x01\x02\x03\x04") * 2
    dec = FrameDecoder(expect_masked=True)
    frames: list[Frame] = []
    step = max(1, len(wire) // 37)
    for i in range(0, len(wire), step):  # partial headers and payloads wait for the rest
        frames += dec.feed(wire[i:i + step])
    assert frames == [Frame(True, ws.OP_BINARY, payload)] * 2


@pytest.mark.parametrize("wire, expect_masked, code", [
    (ws.encode_frame(ws.OP_BINARY, b"x"), True, 1002),                       # a server gets an unmasked frame
    (ws.encode_frame(ws.OP_BINARY, b"x", mask=b"abcd"), False, 1002),        # a client gets a masked one
    (bytes([0xC2, 0x00]), False, 1002),                                      # RSV1 without an extension
    (bytes([0x83, 0x00]), False, 1002),                                      # opcode 3 is reserved
    (bytes([0x09, 0x00]), False, 1002),                                      # a fragmented ping
    (bytes([0x89, 0x7E, 0x00, 0x80]) + bytes(128), False, 1002),             # a ping of 128 bytes
    (bytes([0x82, 0x7F]) + struct.pack("!Q", 1 << 63), False, 1002),         # top bit of a 64-bit length
    (bytes([0x82, 0x7F]) + struct.pack("!Q", 1 << 30), False, 1009),         # over max_frame
])
def test_decoder_rejects(wire: bytes, expect_masked: bool, code: int) -> None:
    with pytest.raises(ProtocolError) as e:
        FrameDecoder(expect_masked=expect_masked, max_frame=1 << 20).feed(wire)
    assert e.value.code == code


def test_close_payloads() -> None:
    assert ws.parse_close(ws.close_payload(1000, "bye")) == (1000, "bye")
    assert ws.parse_close(b"") == (1005, "")
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 2000)):
        with pytest.raises(ProtocolError):
            ws.parse_close(bad)


# -- connections over a socketpair ----------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[WebSocket, socket.socket]]:
    """A server-side WebSocket and the raw client end of its socket."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield WebSocket(a, client=False, subprotocol="v5.channel.k8s.io"), b
    a.close()
    b.close()


def _client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return ws.encode_frame(opcode, payload, fin=fin, mask=b"\x0f\x1e\x2d\x3c")


def _read_frames(sock: socket.socket, n: int) -> list[Frame]:
    dec, frames = FrameDecoder(expect_masked=False), list[Frame]()
    while len(frames) < n:
        data = sock.recv(65536)
        assert data, f"the connection ended after {frames}"
        frames += dec.feed(data)
    return frames


def test_fragmented_message_with_a_ping_in_between(pair: tuple[WebSocket, socket.socket]) -> None:
    server, peer = pair
    peer.sendall(_client_frame(ws.OP_BINARY, b"\x00ab", fin=False) + _client_frame(ws.OP_PING, b"are you there")
                 + _client_frame(ws.OP_CONTINUATION, b"cd", fin=False) + _client_frame(ws.OP_CONTINUATION, b"ef"))
    assert server.recv() == Message(ws.OP_BINARY, b"\x00abcdef")
    assert _read_frames(peer, 1) == [Frame(True, ws.OP_PONG, b"are you there")]  # answered while reassembling


def test_send_is_unmasked_and_text_is_utf8(pair: tuple[WebSocket, socket.socket]) -> None:
    server, peer = pair
    server.send(b"\x01out")
    server.send("héllo")
    assert _read_frames(peer, 2) == [Frame(True, ws.OP_BINARY, b"\x01out"), Frame(True, ws.OP_TEXT, "héllo".encode())]


def test_closing_handshake_from_the_peer(pair: tuple[WebSocket, socket.socket]) -> None:
    server, peer = pair
    peer.sendall(_client_frame(ws.OP_CLOSE, ws.close_payload(1001, "going")))
    assert server.recv() is None
    assert (server.close_code, server.close_reason, server.closed) == (1001, "going", True)
    assert _read_frames(peer, 1) == [Frame(True, ws.OP_CLOSE, ws.close_payload(1001))]  # echoed
    with pytest.raises(ConnectionError):
        server.send(b"too late")


def test_our_close_then_the_peers_answer(pair: tuple[WebSocket, socket.socket]) -> None:
    server, peer = pair
    server.close(1000, "done")
    assert _read_frames(peer, 1) == [Frame(True, ws.OP_CLOSE, ws.close_payload(1000, "done"))]
    peer.sendall(_client_frame(ws.OP_BINARY, b"in flight") + _client_frame(ws.OP_CLOSE, ws.close_payload(1000)))
    assert server.recv() == Message(ws.OP_BINARY, b"in flight")  # what was sent before the answer still counts
    assert server.recv() is None and server.close_code == 1000


def test_eof_without_close_is_1006(pair: tuple[WebSocket, socket.socket]) -> None:
    server, peer = pair
    peer.sendall(_client_frame(ws.OP_BINARY, b"half")[:4])
    peer.shutdown(socket.SHUT_WR)
    assert server.recv() is None and server.close_code == 1006


@pytest.mark.parametrize("wire, code", [
    (_client_frame(ws.OP_CONTINUATION, b"x"), 1002),                                            # nothing to continue
    (_client_frame(ws.OP_TEXT, b"a", fin=False) + _client_frame(ws.OP_TEXT, b"b"), 1002),       # interleaved
    (_client_frame(ws.OP_TEXT, b"\xff\xfe"), 1007),                                             # not UTF-8
    (ws.encode_frame(ws.OP_BINARY, b"unmasked"), 1002),
])
def test_protocol_errors_close_with_the_rfc_code(pair: tuple[WebSocket, socket.socket], wire: bytes,
                                                 code: int) -> None:
    server, peer = pair
    peer.sendall(wire)
    assert server.recv() is None and server.close_code == code
    frame = _read_frames(peer, 1)[0]
    assert frame.opcode == ws.OP_CLOSE and ws.parse_close(frame.payload)[0] == code


def test_message_size_limit() -> None:
    a, b = socket.socketpair()
    try:
        server = WebSocket(a, client=False, max_message=10)
        b.sendall(_client_frame(ws.OP_BINARY, b"123456", fin=False) + _client_frame(ws.OP_CONTINUATION, b"789012"))
        assert server.recv() is None and server.close_code == 1009
    finally:
        a.close()
        b.close()


def test_abort_unblocks_a_reader(pair: tuple[WebSocket, socket.socket]) -> None:
    server, _ = pair
    server.sock.settimeout(None)
    got: list[Message | None] = []
    t = threading.Thread(target=lambda: got.append(server.recv()))
    t.start()
    server.abort()
    t.join(5)
    assert not t.is_alive() and got == [None]


# -- handshakes -----------------------------------------------------------------------------


def _headers(**kw: str) -> dict[str, str]:
    h = {"upgrade": "websocket", "connection": "keep-alive, Upgrade", "sec-websocket-version": "13",
         "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-protocol": "v5.channel.k8s.io"}
    h.update({k.replace("_", "-"): v for k, v in kw.items()})
    return h


def test_accept_key_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_server_handshake() -> None:
    h = _headers()
    get = lambda name: h.get(name.lower())  # noqa: E731 - header lookups are case-insensitive
    assert ws.is_upgrade_request(get)
    answer = ws.handshake_response(get, "v5.channel.k8s.io").decode()
    assert answer.startswith("HTTP/1.1 101 Switching Protocols\r\n") and answer.endswith("\r\n\r\n")
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n" in answer
    for bad in (_headers(sec_websocket_version="8"), _headers(sec_websocket_key="short"),
                _headers(upgrade="h2c")):
        with pytest.raises(HandshakeError):
            ws.handshake_response(lambda name, b=bad: b.get(name.lower()), None)  # type: ignore[misc]


def test_choose_subprotocol_follows_the_clients_order() -> None:
    ours = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    assert ws.choose_subprotocol("v4.channel.k8s.io, v5.channel.k8s.io", ours) == "v4.channel.k8s.io"
    assert ws.choose_subprotocol("base64.channel.k8s.io,v5.channel.k8s.io", ours) == "v5.channel.k8s.io"
    assert ws.choose_subprotocol("channel.k8s.io", ours) is None
    assert ws.choose_subprotocol(None, ours) is None


def _serve_once(answer: bytes | None) -> tuple[int, threading.Thread, list[bytes]]:
    """A loopback server for one connection: it answers the handshake (or with `answer`), then echoes."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    seen: list[bytes] = []

    def run() -> None:
        conn, _ = lsock.accept()
        lsock.close()
        with conn:
            rfile = conn.makefile("rb")
            headers: dict[str, str] = {}
            rfile.readline()
            while (line := rfile.readline().decode().strip()):
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if answer is not None:
                conn.sendall(answer)
                return
            proto = ws.choose_subprotocol(headers.get("sec-websocket-protocol"), ["v4.channel.k8s.io"])
            conn.sendall(ws.handshake_response(lambda n: headers.get(n.lower()), proto))
            server = WebSocket(conn, client=False, subprotocol=proto or "", read=rfile.read1)
            while (msg := server.recv()) is not None:
                seen.append(msg.data)
                server.send(msg.data[::-1])
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t, seen


def test_client_connect_roundtrip() -> None:
    port, t, seen = _serve_once(None)
    client = ws.connect("127.0.0.1", port, "/exec/ns/p/c?command=ls", subprotocols=["v5.channel.k8s.io",
                                                                                   "v4.channel.k8s.io"])
    try:
        assert client.subprotocol == "v4.channel.k8s.io"
        client.send(b"\x00abc")
        assert client.recv() == Message(ws.OP_BINARY, b"cba\x00")
        client.close()
        assert client.recv() is None and client.close_code == 1000
    finally:
        client.abort()
    t.join(5)
    assert seen == [b"\x00abc"]


def test_client_connect_refused_carries_status_and_body() -> None:
    body = b'{"kind":"Status","code":404}'
    port, t, _ = _serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(HandshakeError) as e:
        ws.connect("127.0.0.1", port, "/", subprotocols=["v5.channel.k8s.io"])
    assert (e.value.status, e.value.body) == (404, body)
    t.join(5)
