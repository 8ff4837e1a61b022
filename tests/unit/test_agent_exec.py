"""agent/exec.py's pure parts (options, the engine's stream demux, resize, Status shapes, channels) and
the agent API's /exec and /attach routes with a fake Streams (no engine)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.exec import (
    CLOSE,
    ERROR,
    STDIN,
    STDOUT,
    BadStreamRequest,
    Channels,
    DockerDemux,
    exit_status,
    parse_options,
    parse_resize,
)
from agent.server import AgentServer
from kube import websocket
from kube.websocket import WebSocket


def test_parse_options() -> None:
    o = parse_options("exec", {"command": ["sh", "-c", "echo hi"], "output": ["1"], "error": ["true"]})
    assert (o.command, o.stdin, o.stdout, o.stderr, o.tty) == (("sh", "-c", "echo hi"), False, True, True, False)
    o = parse_options("exec", {"command": ["sh"], "input": ["1"], "output": ["1"], "error": ["1"], "tty": ["1"]})
    assert (o.stdin, o.stdout, o.stderr, o.tty) == (True, True, False, True)  # a terminal merges stderr
    assert parse_options("attach", {"command": ["ignored"], "output": ["1"]}).command == ()
    for params, word in (({"command": ["ls"]}, "at least 1 of stdin, stdout, stderr"),
                         ({"output": ["1"]}, "needs a command"),
                         ({"command": ["ls"], "output": ["yes"]}, "not a boolean")):
        with pytest.raises(BadStreamRequest, match=word):
            parse_options("exec", params)


def test_demux_any_split() -> None:
    wire = b"".join(bytes([s, 0, 0, 0]) + struct.pack(">I", len(p)) + p
                    for s, p in ((1, b"out one\n"), (2, b"err\n"), (1, b""), (1, b"x" * 70000)))
    d = DockerDemux()
    got = [f for i in range(0, len(wire), 5) for f in d.feed(wire[i:i + 5])]
    assert got == [(1, b"out one\n"), (2, b"err\n"), (1, b""), (1, b"x" * 70000)]


def test_parse_resize() -> None:
    assert parse_resize(b'{"Width":120,"Height":40}\n') == (120, 40)
    for bad in (b"", b"{", b'{"Width":0,"Height":5}', b'{"Height":5}', b'"80x24"', b'{"Width":"a","Height":1}'):
        assert parse_resize(bad) is None


def test_status_shapes() -> None:
    assert exit_status(("true",), 0) == {"metadata": {}, "status": "Success"}
    st = exit_status(("sh", "-c", "exit 3"), 3)
    assert (st["status"], st["reason"], st["details"]) == ("Failure", "NonZeroExitCode",
                                                          {"causes": [{"reason": "ExitCode", "message": "3"}]})
    assert st["message"] == "command terminated with non-zero exit code: error executing command [sh -c exit 3], " \
                            "exit code 3"


def _pair(proto: str) -> tuple[Channels, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    return Channels(WebSocket(a, client=False, subprotocol=proto)), b


def _client_msg(data: bytes) -> bytes:
    return websocket.encode_frame(websocket.OP_BINARY, data, mask=b"wxyz")


def test_channels_v5_close_signal_and_finish() -> None:
    ch, peer = _pair("v5.channel.k8s.io")
    peer.sendall(_client_msg(b"\x00abc") + _client_msg(b"") + _client_msg(bytes([CLOSE, STDIN])))
    assert ch.recv() == (STDIN, b"abc")
    assert ch.recv() == (CLOSE, bytes([STDIN]))  # the empty message in between is skipped
    dec, frames = websocket.FrameDecoder(expect_masked=False), list[websocket.Frame]()

    def read() -> None:  # the peer reads while we send (a socketpair buffers little)
        while len(frames) < 5 and (data := peer.recv(65536)):
            frames.extend(dec.feed(data))
    reader = threading.Thread(target=read)
    reader.start()
    ch.send(STDOUT, b"y" * 70000)
    ch.finish({"metadata": {}, "status": "Success"})
    reader.join(5)
    assert [len(f.payload) for f in frames[:3]] == [32769, 32769, 70000 - 65536 + 1]  # 32 KiB per message
    assert frames[3].payload[0] == ERROR and json.loads(frames[3].payload[1:])["status"] == "Success"
    assert frames[4].opcode == websocket.OP_CLOSE and websocket.parse_close(frames[4].payload)[0] == 1000
    peer.close()


def test_channels_v4_has_no_close_signal() -> None:
    ch, peer = _pair("v4.channel.k8s.io")
    peer.sendall(_client_msg(bytes([CLOSE, STDIN])) + _client_msg(b"\x00after"))
    assert ch.recv() == (STDIN, b"after")
    peer.close()


# -- the agent API's routes ---------------------------------------------------------------


class EchoSession:
    """Echo stdin to stdout until the v5 close signal, then Success."""

    def run(self, ws: WebSocket) -> None:
        ch = Channels(ws)
        while (got := ch.recv()) is not None:
            channel, data = got
            if channel == STDIN:
                ch.send(STDOUT, data.upper())
            elif channel == CLOSE:
                ch.finish({"metadata": {}, "status": "Success"})


class FakeStreams:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str, dict[str, list[str]]]] = []

    def prepare(self, kind: str, namespace: str, pod: str, container: str, params: dict[str, list[str]]) -> Any:
        self.calls.append((kind, namespace, pod, container, params))
        if pod == "missing":
            raise KeyError(f"pod {namespace}/{pod} is not running on node n1")
        if container == "stopped":
            raise ValueError(f"container {container} in pod {namespace}/{pod} is not running")
        return EchoSession()


@pytest.fixture
def agent() -> Iterator[tuple[AgentServer, FakeStreams]]:
    streams = FakeStreams()
    srv = AgentServer("127.0.0.1:0", pods=lambda: [], logs=lambda *a, **kw: iter(()), streams=streams).start()
    yield srv, streams
    srv.stop()


def test_routes_refuse_before_the_upgrade(agent: tuple[AgentServer, FakeStreams]) -> None:
    srv, streams = agent
    base = f"http://{srv.endpoint}"
    r = httpx.get(f"{base}/exec/ns/missing/c", params={"command": "ls", "output": "1"})
    assert (r.status_code, r.text) == (404, "pod ns/missing is not running on node n1\n")
    r = httpx.get(f"{base}/exec/ns/p/stopped", params={"command": "ls", "output": "1"})
    assert (r.status_code, r.text) == (400, "container stopped in pod ns/p is not running\n")
    r = httpx.get(f"{base}/attach/ns/p/c", params={"output": "1"})
    assert (r.status_code, r.text) == (400, "Upgrade request required\n")
    assert streams.calls[-1] == ("attach", "ns", "p", "c", {"output": ["1"]})
    assert httpx.get(f"{base}/exec/ns/p").status_code == 404
    with pytest.raises(websocket.HandshakeError) as e:
        websocket.connect("127.0.0.1", srv.port, "/exec/ns/p/c?command=ls&output=1", subprotocols=["channel.k8s.io"])
    assert e.value.status == 400 and b"supports [v5.channel.k8s.io v4.channel.k8s.io]" in e.value.body
    assert AgentServer("127.0.0.1:0", pods=lambda: [], logs=lambda *a, **kw: iter(())).streams is None


def test_session_runs_on_the_upgraded_connection(agent: tuple[AgentServer, FakeStreams]) -> None:
    srv, streams = agent
    client = websocket.connect("127.0.0.1", srv.port, "/exec/ns/p/c?command=cat&command=-&input=1&output=1",
                               subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"])
    try:
        assert client.subprotocol == "v5.channel.k8s.io"
        assert streams.calls[-1][4] == {"command": ["cat", "-"], "input": ["1"], "output": ["1"]}
        client.send(b"\x00hello")
        assert client.recv() == websocket.Message(websocket.OP_BINARY, b"\x01HELLO")
        client.send(bytes([CLOSE, STDIN]))
        msg = client.recv()
        assert msg is not None and msg.data[0] == ERROR and json.loads(msg.data[1:])["status"] == "Success"
        assert client.recv() is None and client.close_code == 1000
    finally:
        client.abort()
    assert httpx.get(f"http://{srv.endpoint}/healthz").text == "ok\n"  # the server is still there
