"""kube.spdy (frames, header blocks, the dictionary) and agent.portforward's session, scripted.

The session tests play kubectl with the same codec: a queue-backed transport, a loopback echo
server standing in for the pod (dial() connects to it), and the stream choreography of
client-go's tools/portforward (error stream, data stream, FIN, RST)."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest
from polling import wait_for

from agent.portforward import PortForwardSession
from kube import spdy

# -- the codec ------------------------------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    # size and Adler-32 as every SPDY/3 peer has them (kubectl's zlib header carries the checksum)
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == spdy.DICTIONARY_ADLER32
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


ALL_FRAMES: list[spdy.Frame] = [
    spdy.SynStream(1, {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}),
    spdy.SynStream(3, {"x": ["a", "b"]}, spdy.FLAG_FIN, associated_id=1, priority=7, slot=2),
    spdy.SynReply(1, {}),
    spdy.SynReply(5, {"status": ["200"]}, spdy.FLAG_FIN),
    spdy.RstStream(7, spdy.CANCEL),
    spdy.Settings([(0, spdy.SETTINGS_INITIAL_WINDOW_SIZE, 65536),
                   (1, spdy.SETTINGS_MAX_CONCURRENT_STREAMS, 100)]),
    spdy.Ping(1),
    spdy.GoAway(9, spdy.GOAWAY_PROTOCOL_ERROR),
    spdy.HeadersFrame(3, {"k": ["v"]}),
    spdy.WindowUpdate(3, 4096),
    spdy.Data(3, b"hello", 0),
    spdy.Data(3, b"", spdy.FLAG_FIN),
    spdy.UnknownControl(10, 0, b"\x00\x01"),
]


def test_every_frame_round_trips_in_one_stream() -> None:
    w, p = spdy.FrameWriter(), spdy.FrameParser()
    wire = b"".join(w.encode(f) for f in ALL_FRAMES)
    assert p.feed(wire) == ALL_FRAMES
    assert p.buffered == 0


def test_parser_takes_any_split() -> None:
    """kubectl writes one frame as several WebSocket messages (4-byte pieces and the rest)."""
    w, p = spdy.FrameWriter(), spdy.FrameParser()
    wire = b"".join(w.encode(f) for f in ALL_FRAMES)
    got: list[spdy.Frame] = []
    for i in range(len(wire)):
        got += p.feed(wire[i:i + 1])
    assert got == ALL_FRAMES


def test_wire_layout() -> None:
    w = spdy.FrameWriter()
    assert w.encode(spdy.Ping(5)) == bytes.fromhex("80030006 00000004 00000005")
    assert w.encode(spdy.Data(3, b"ab", spdy.FLAG_FIN)) == bytes.fromhex("00000003 01000002") + b"ab"
    rst = bytes.fromhex("80030003 00000008 00000001 00000003")
    assert w.encode(spdy.RstStream(1, spdy.REFUSED_STREAM)) == rst
    assert w.encode(spdy.WindowUpdate(1, 10)) == bytes.fromhex("80030009 00000008 00000001 0000000a")
    reply = w.encode(spdy.SynReply(1))
    assert reply[:4] == bytes.fromhex("80030002") and reply[8:12] == b"\x00\x00\x00\x01"
    # the header block is zlib with the SPDY dictionary: its id is in the zlib header
    assert struct.unpack(">I", reply[14:18])[0] == spdy.DICTIONARY_ADLER32


def test_header_block_codec() -> None:
    h = {"streamtype": ["data"], "multi": ["one", "two"], "empty": [""]}
    assert spdy.decode_header_block(spdy.encode_header_block(h)) == h
    assert spdy.decode_header_block(spdy.encode_header_block({"StreamType": ["x"]})) == {"streamtype": ["x"]}
    assert spdy.header({"port": ["80", "81"]}, "Port") == "80"
    assert spdy.header({}, "port") == ""
    for bad in (b"", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01\x00\x00\x00\x09abc",
                spdy.encode_header_block({"a": ["b"]}) + b"junk",
                b"\x00\x00\x00\x02" + spdy.encode_header_block({"a": ["b"]})[4:] * 2):
        with pytest.raises(spdy.SpdyError):
            spdy.decode_header_block(bad, 3)


def test_header_compression_is_one_stream_per_direction() -> None:
    """Frame n+1's block refers back into frame n's: a fresh decompressor cannot read it."""
    c = spdy.HeaderCompressor()
    h = {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}
    first, second = c.compress(h), c.compress(h)
    assert len(second) < len(first)
    d = spdy.HeaderDecompressor()
    assert d.decompress(first, 1) == h and d.decompress(second, 3) == h
    with pytest.raises(spdy.SpdyError):
        spdy.HeaderDecompressor().decompress(second, 3)


def test_a_go_style_compressor_is_understood() -> None:
    """client-go compresses with zlib.BestCompression and the dictionary: any level must decode."""
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    h = {"streamtype": ["data"], "port": ["80"], "requestid": ["12"]}
    block = z.compress(spdy.encode_header_block(h)) + z.flush(zlib.Z_SYNC_FLUSH)
    head = struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, 10 + len(block))
    frame = head + struct.pack(">IIBB", 5, 0, 0, 0) + block
    assert spdy.FrameParser().feed(frame) == [spdy.SynStream(5, h)]


@pytest.mark.parametrize("wire, status", [
    (bytes.fromhex("80020006 00000004 00000001"), spdy.UNSUPPORTED_VERSION),  # SPDY/2
    (bytes.fromhex("00000000 00000000"), spdy.PROTOCOL_ERROR),  # data on stream 0
    (bytes.fromhex("80030003 00000004 00000001"), spdy.PROTOCOL_ERROR),  # short RST_STREAM
    (bytes.fromhex("80030003 00000008 00000001 00000000"), spdy.PROTOCOL_ERROR),  # status 0
    (bytes.fromhex("80030001 0000000e 00000001 00000000 0000") + b"nozl", spdy.PROTOCOL_ERROR),  # not zlib
    (bytes.fromhex("80030004 00000008 00000002 00000000"), spdy.PROTOCOL_ERROR),  # SETTINGS count lies
    (bytes.fromhex("00000001 00ffffff"), spdy.FRAME_TOO_LARGE),
])
def test_malformed_input_is_a_spdy_error(wire: bytes, status: int) -> None:
    with pytest.raises(spdy.SpdyError) as e:
        spdy.FrameParser().feed(wire)
    assert e.value.status == status


def test_writer_refuses_nonsense() -> None:
    w = spdy.FrameWriter()
    with pytest.raises(ValueError):
        w.encode(spdy.Data(0, b"x"))
    with pytest.raises(ValueError):
        w.encode(spdy.RstStream(1 << 31, spdy.CANCEL))


# -- the session, scripted -----------------------------------------------------------


class QueueTransport:
    """The tunnel: what the test sends arrives at recv(); what the session sends is parsed."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.outbox: queue.Queue[bytes] = queue.Queue()
        self.closed = threading.Event()

    def recv(self) -> bytes | None:
        return None if self.closed.is_set() else self.inbox.get()

    def send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("closed")
        self.outbox.put(data)

    def close(self) -> None:
        self.closed.set()
        self.inbox.put(None)


class Kubectl:
    """client-go's side of the choreography, frame by frame."""

    def __init__(self, transport: QueueTransport) -> None:
        self.t = transport
        self.w = spdy.FrameWriter()
        self.p = spdy.FrameParser()
        self.next_sid = 1
        self.next_rid = 0
        self.frames: list[spdy.Frame] = []
        self._seen = 0

    def send(self, *frames: spdy.Frame, split: bool = False) -> None:
        wire = b"".join(self.w.encode(f) for f in frames)
        if split:  # as the tunnel does: 4-byte words, then the rest
            while wire:
                self.t.inbox.put(wire[:4])
                wire = wire[4:]
        else:
            self.t.inbox.put(wire)

    def next(self, timeout: float = 5.0) -> spdy.Frame:
        while self._seen >= len(self.frames):
            self.frames += self.p.feed(self.t.outbox.get(timeout=timeout))
        self._seen += 1
        return self.frames[self._seen - 1]

    def open_pair(self, port: int, rid: str | None = None) -> tuple[int, int]:
        rid = rid if rid is not None else str(self.next_rid)
        self.next_rid += 1
        esid, dsid = self.next_sid, self.next_sid + 2
        self.next_sid += 4
        base = {"port": [str(port)], "requestid": [rid]}
        self.send(spdy.SynStream(esid, {"streamtype": ["error"], **base}), split=True)
        self.send(spdy.Data(esid, b"", spdy.FLAG_FIN))  # kubectl closes its side of the error stream at once
        self.send(spdy.SynStream(dsid, {"streamtype": ["data"], **base}))
        return esid, dsid

    def collect(self, *sids: int) -> dict[int, bytes]:
        """Data of several streams, until each has its FIN."""
        got = {sid: b"" for sid in sids}
        open_ = set(sids)
        while open_:
            f = self.next()
            if isinstance(f, spdy.Data) and f.stream_id in got:
                got[f.stream_id] += f.data
                if f.fin:
                    open_.discard(f.stream_id)
        return got

    def until_fin(self, sid: int) -> bytes:
        """Data of stream sid up to its FIN (frames of other streams are skipped)."""
        got = b""
        while True:
            f = self.next()
            if isinstance(f, spdy.Data) and f.stream_id == sid:
                got += f.data
                if f.fin:
                    return got
            elif isinstance(f, spdy.RstStream) and f.stream_id == sid:
                raise AssertionError(f"stream {sid} was reset: {f}")


@pytest.fixture
def echo_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback server standing in for the pod: echoes, then closes when the peer half-closes."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(65536):
                c.sendall(data.upper())

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[1], conns
    finally:
        srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_dial(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.settimeout(None)  # as netns_dialer hands them over: blocking
    return s


def start_session(**kw: object) -> tuple[PortForwardSession, Kubectl, threading.Thread]:
    t = QueueTransport()
    s = PortForwardSession(t, loopback_dial, pod="default/web", uid="u-1", **kw)  # type: ignore[arg-type]
    th = threading.Thread(target=s.run, daemon=True)
    th.start()
    return s, Kubectl(t), th


def test_session_forwards_a_connection(echo_server: tuple[int, list[socket.socket]]) -> None:
    port, _ = echo_server
    s, k, th = start_session()
    esid, dsid = k.open_pair(port)
    assert k.next() == spdy.SynReply(esid) and k.next() == spdy.SynReply(dsid)
    k.send(spdy.Data(dsid, b"hello "), spdy.Data(dsid, b"pod", spdy.FLAG_FIN))
    assert k.until_fin(dsid) == b"HELLO POD"  # the pod closed after our FIN: FIN on data...
    assert k.until_fin(esid) == b""  # ...then an empty error stream: no error
    k.send(spdy.RstStream(dsid, spdy.CANCEL))  # kubectl resets the data stream when done
    wait_for(lambda: s.threads == 0, what="the connection thread to end")
    assert s.connections == 1 and s.failed == 0
    k.t.close()
    th.join(5)
    assert not th.is_alive()


def test_refused_port_reports_on_the_error_stream_and_the_session_goes_on(
        echo_server: tuple[int, list[socket.socket]]) -> None:
    port, _ = echo_server
    s, k, th = start_session()
    closed = free_port()
    esid, dsid = k.open_pair(closed)
    k.next(), k.next()
    got = k.collect(dsid, esid)
    data, err = got[dsid], got[esid]
    assert data == b""
    assert err.decode().startswith(f"error forwarding port {closed} to pod default/web, uid u-1: ")
    assert "refused" in err.decode().lower()
    esid, dsid = k.open_pair(port)  # the next connection of the same session works
    k.next(), k.next()
    k.send(spdy.Data(dsid, b"again", spdy.FLAG_FIN))
    assert k.until_fin(dsid) == b"AGAIN"
    assert k.until_fin(esid) == b""
    assert (s.connections, s.failed) == (2, 1)
    k.t.close()
    th.join(5)
    assert not th.is_alive()


def test_two_connections_in_parallel_and_early_data(echo_server: tuple[int, list[socket.socket]]) -> None:
    port, _ = echo_server
    s, k, th = start_session()
    a, b = k.open_pair(port), k.open_pair(port)
    # data sent right behind the SYN_STREAM (before the pod connection exists) is kept, in order
    k.send(spdy.Data(a[1], b"a1 "), spdy.Data(b[1], b"b1 "), spdy.Data(a[1], b"a2"), spdy.Data(b[1], b"b2"))
    k.send(spdy.Data(b[1], b"", spdy.FLAG_FIN), spdy.Data(a[1], b"", spdy.FLAG_FIN))
    got = k.collect(a[1], b[1])
    assert got == {a[1]: b"A1 A2", b[1]: b"B1 B2"}
    wait_for(lambda: s.threads == 0, what="both connection threads to end")
    k.t.close()
    th.join(5)


def test_peer_reset_closes_the_pod_connection(echo_server: tuple[int, list[socket.socket]]) -> None:
    port, conns = echo_server
    s, k, th = start_session()
    esid, dsid = k.open_pair(port)
    k.next(), k.next()
    k.send(spdy.Data(dsid, b"x"))
    assert isinstance(f := k.next(), spdy.Data) and f.data == b"X"
    k.send(spdy.RstStream(dsid, spdy.CANCEL))
    wait_for(lambda: s.threads == 0, what="the reset connection to end")
    assert k.until_fin(esid) == b""  # the error stream still ends cleanly
    wait_for(lambda: conns and conns[0].fileno() == -1, what="the pod side to see the close")
    k.t.close()
    th.join(5)


def test_bad_streams_are_refused_and_pings_answered() -> None:
    s, k, th = start_session()
    k.send(spdy.SynStream(1, {"streamtype": ["data"]}))  # no port
    assert k.next() == spdy.RstStream(1, spdy.REFUSED_STREAM)
    k.send(spdy.SynStream(3, {"streamtype": ["video"], "port": ["80"]}))
    assert k.next() == spdy.RstStream(3, spdy.REFUSED_STREAM)
    k.send(spdy.SynStream(5, {"streamtype": ["data"], "port": ["99999"]}))
    assert k.next() == spdy.RstStream(5, spdy.REFUSED_STREAM)
    k.send(spdy.SynStream(4, {"streamtype": ["data"], "port": ["80"]}))  # even id: a server's
    assert k.next() == spdy.RstStream(4, spdy.PROTOCOL_ERROR)
    k.send(spdy.Ping(7), spdy.Settings([(0, 7, 1 << 20)]), spdy.WindowUpdate(0, 100))
    assert k.next() == spdy.Ping(7)
    k.send(spdy.Ping(8))  # an even ping would be an answer to ours: not echoed
    k.send(spdy.Ping(9))
    assert k.next() == spdy.Ping(9)
    assert s.connections == 0
    k.t.close()
    th.join(5)


def test_duplicate_stream_type_and_lonely_stream_timeout() -> None:
    s, k, th = start_session(stream_timeout=0.0)
    k.send(spdy.SynStream(1, {"streamtype": ["error"], "port": ["80"], "requestid": ["7"]}))
    assert k.next() == spdy.SynReply(1)
    # no data stream comes: at the next frame the pair has waited longer than stream_timeout
    k.send(spdy.Ping(1))
    frames = [k.next(), k.next()]
    assert spdy.Ping(1) in frames
    msg = next(f for f in frames if isinstance(f, spdy.Data))
    assert msg.stream_id == 1 and msg.fin and b"timed out waiting for streams" in msg.data
    k.t.close()
    th.join(5)
    s2, k2, th2 = start_session()
    for sid in (1, 3):
        k2.send(spdy.SynStream(sid, {"streamtype": ["error"], "port": ["80"], "requestid": ["0"]}))
    assert k2.next() == spdy.SynReply(1) and k2.next() == spdy.SynReply(3)
    f = k2.next()
    assert isinstance(f, spdy.Data) and f.stream_id == 1 and b"error stream already assigned" in f.data
    assert k2.next() == spdy.RstStream(3, spdy.CANCEL)
    k2.t.close()
    th2.join(5)


def test_protocol_error_ends_the_session_with_goaway() -> None:
    s, k, th = start_session()
    k.t.inbox.put(bytes.fromhex("80020006 00000004 00000001"))
    assert k.next() == spdy.GoAway(0, spdy.GOAWAY_PROTOCOL_ERROR)
    th.join(5)
    assert not th.is_alive() and k.t.closed.is_set()


def test_goaway_lets_open_connections_finish(echo_server: tuple[int, list[socket.socket]]) -> None:
    port, _ = echo_server
    s, k, th = start_session()
    esid, dsid = k.open_pair(port)
    k.next(), k.next()
    k.send(spdy.GoAway(0))
    k.send(spdy.SynStream(9, {"streamtype": ["error"], "port": [str(port)], "requestid": ["9"]}))
    assert k.next() == spdy.RstStream(9, spdy.REFUSED_STREAM)  # nothing new after GOAWAY
    k.send(spdy.Data(dsid, b"last", spdy.FLAG_FIN))
    assert k.until_fin(dsid) == b"LAST"
    th.join(5)  # the last connection ended: the session closes the tunnel itself
    assert not th.is_alive() and k.t.closed.is_set() and s.threads == 0


def test_tunnel_loss_ends_everything(echo_server: tuple[int, list[socket.socket]]) -> None:
    port, conns = echo_server
    s, k, th = start_session()
    for _ in range(3):
        k.open_pair(port)
    wait_for(lambda: len(conns) == 3, what="three pod connections")
    k.t.close()  # kubectl killed: no FIN, no RST
    th.join(5)
    assert not th.is_alive() and s.threads == 0
    wait_for(lambda: all(c.fileno() == -1 for c in conns), what="the pod connections to close")
