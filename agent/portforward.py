"""``kubectl port-forward``, the node's end: a SPDY/3.1 server session over a byte transport.

    session = PortForwardSession(transport, netns_dialer("/var/run/netns/<pod netns>"),
                                 pod="default/web", uid="...")
    session.run()          # blocks until the peer goes away; closes everything it opened

kubectl (client-go's tools/portforward) opens, per local connection it accepts, two streams with
the headers ``streamtype: error|data``, ``port: N`` and ``requestid: K``.  The session answers
each SYN_STREAM with a SYN_REPLY, pairs the two streams by requestID, and then, in one thread per
forwarded connection, connects to 127.0.0.1:N (then [::1]:N) *inside the pod's network
namespace* and pumps bytes: DATA on the data stream -> the pod's socket (from the reader thread),
the pod's socket -> DATA frames (from the connection's thread).  The peer's FIN on the data
stream half-closes the pod socket; the pod closing its side ends with a FIN on the data stream,
then on the error stream.  A connection that cannot be made gets the kubelet's message
("error forwarding port 8080 to pod NS/NAME, uid UID: ...") on its error stream, which kubectl
prints; the session goes on serving the next one.

Transport (the WebSocket tunnel, or a socket in tests): ``recv() -> bytes | None`` (None: closed),
``send(bytes)`` (thread-safe use is serialised here), ``close()`` (callable from any thread; a
blocked recv() then returns None).  Message boundaries carry no meaning: kubectl splits one
frame over several WebSocket messages.

Connections in the pod's namespace come from cni.nsfd: a short-lived forked child enters the
namespace, makes the sockets and passes them back; the agent never calls setns() (house rule 6).

Flow control: none is enforced, as in spdystream (kubectl and kubelet): WINDOW_UPDATE is read and
ignored.  Backpressure comes from the sockets: a pod that does not read blocks the reader thread
once its socket buffer is full, and the tunnel behind it; after WRITE_TIMEOUT without progress
that connection is dropped.
"""

from __future__ import annotations

import _socket  # the forked helper makes its sockets with the C type (no Python-level wrapper code)
import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kube import spdy

log = logging.getLogger("kubeling.agent.portforward")

SUBPROTOCOL = "portforward.k8s.io"
WEBSOCKET_SUBPROTOCOL = "SPDY/3.1+portforward.k8s.io"  # client-go's tunnel: SPDY inside WebSocket
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default: both streams of a pair within this
CONNECT_TIMEOUT = 5.0
READ_CHUNK = 32 * 1024
WRITE_TIMEOUT = 60.0  # a write to the pod that cannot progress this long drops the connection
JOIN_TIMEOUT = 5.0


class Transport(Protocol):
    def recv(self) -> bytes | None: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...


Dial = Callable[[int], socket.socket]


# -- connecting inside the pod ------------------------------------------------------


def netns_dialer(netns_path: str, timeout: float = CONNECT_TIMEOUT) -> Dial:
    """dial(port): a TCP socket connected to localhost:port in the network namespace at netns_path.

    One forked helper per connection makes an IPv4 and an IPv6 socket in the namespace
    (cni.nsfd.in_netns); connect() then happens here, the sockets keep their namespace.  Tries
    127.0.0.1 then [::1], as containerd does; OSError with both reasons when neither answers.
    """
    from cni.nsfd import in_netns

    def dial(port: int) -> socket.socket:
        keep: list[_socket.socket] = []  # open in the child until its fds are sent

        def make() -> tuple[bytes, list[int]]:
            keep.append(_socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0))
            try:
                keep.append(_socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 0))
            except OSError:  # IPv6 disabled in the namespace
                pass
            return b"", [s.fileno() for s in keep]
        _, fds = in_netns(netns_path, make)
        socks = [socket.socket(fileno=fd) for fd in fds]
        reasons = []
        targets = (("IPv4", "127.0.0.1", f"127.0.0.1:{port}"), ("IPv6", "::1", f"[::1]:{port}"))
        for i, (s, (family, addr, shown)) in enumerate(zip(socks, targets, strict=False)):
            s.settimeout(timeout)
            try:
                s.connect((addr, port))
            except OSError as e:
                s.close()
                reasons.append(f"{family}: connect to {shown}: {e.strerror or e}")
                continue
            for other in socks[i + 1:]:
                other.close()
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        if len(socks) == 1:
            reasons.append("IPv6: not available in the namespace")
        raise OSError(errno.ECONNREFUSED, f"failed to connect to localhost:{port} inside the pod's network "
                                          f"namespace, {'; '.join(reasons)}")
    return dial


# -- the session ---------------------------------------------------------------------


@dataclass
class _Pair:
    """The error and data streams of one forwarded connection (one requestID)."""
    request_id: str
    port: int
    created: float
    error_sid: int = 0
    data_sid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: socket.socket | None = None  # set once connected and the early data is flushed
    pending: list[bytes] = field(default_factory=list)  # peer data that came before the connection
    peer_fin: bool = False  # the peer finished sending on the data stream
    data_reset: bool = False  # the peer reset the data stream: send nothing more on it
    error_reset: bool = False
    started: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.error_sid and self.data_sid)


class PortForwardSession:
    """One SPDY/3.1 connection from kubectl (see the module docstring)."""

    def __init__(self, transport: Transport, dial: Dial, *, pod: str, uid: str = "",
                 stream_timeout: float = STREAM_CREATION_TIMEOUT) -> None:
        self.transport = transport
        self.dial = dial
        self.pod = pod
        self.uid = uid
        self.stream_timeout = stream_timeout
        self._parser = spdy.FrameParser()
        self._writer = spdy.FrameWriter()
        self._wlock = threading.Lock()  # compress + send happen in wire order
        self._lock = threading.Lock()  # _streams, _pairs, _threads
        self._streams: dict[int, tuple[str, _Pair]] = {}  # stream id -> (streamtype, pair)
        self._pairs: dict[str, _Pair] = {}
        self._threads: set[threading.Thread] = set()
        self._last_peer_sid = 0
        self._dead = False  # the transport failed or was closed
        self._going_away = False
        self.connections = 0  # forwarded connections started (for tests and logs)
        self.failed = 0  # of which the pod end could not be reached

    # -- public --

    def run(self) -> None:
        log.debug("port-forward session started pod=%s", self.pod)
        try:
            while not self._dead:
                chunk = self.transport.recv()
                if chunk is None:
                    break
                try:
                    frames = self._parser.feed(chunk)
                except spdy.SpdyError as e:
                    log.info("port-forward pod=%s: protocol error, ending the session: %s", self.pod, e)
                    self._send(spdy.GoAway(self._last_peer_sid, spdy.GOAWAY_PROTOCOL_ERROR))
                    break
                for f in frames:
                    self._handle(f)
                self._expire_pairs()
                if self._going_away and not self._active():
                    break
        finally:
            self._shutdown()
        log.debug("port-forward session ended pod=%s connections=%d", self.pod, self.connections)

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    # -- frames in --

    def _handle(self, f: spdy.Frame) -> None:
        if isinstance(f, spdy.SynStream):
            self._on_syn_stream(f)
        elif isinstance(f, spdy.Data):
            self._on_data(f)
        elif isinstance(f, spdy.RstStream):
            self._on_reset(f)
        elif isinstance(f, spdy.Ping):
            if f.ping_id % 2 == 1:  # the peer's ping (a server's ids are even): echo it
                self._send(f)
        elif isinstance(f, spdy.GoAway):
            log.debug("port-forward pod=%s: peer sent GOAWAY", self.pod)
            self._going_away = True
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY, unknown control frames: nothing to do

    def _on_syn_stream(self, f: spdy.SynStream) -> None:
        sid = f.stream_id
        if sid % 2 == 0 or sid <= self._last_peer_sid:
            self._send(spdy.RstStream(sid, spdy.PROTOCOL_ERROR))
            return
        self._last_peer_sid = sid
        if self._going_away:
            self._send(spdy.RstStream(sid, spdy.REFUSED_STREAM))
            return
        try:
            stype, port, rid = self._stream_headers(f)
        except ValueError as e:
            log.info("port-forward pod=%s: stream %d rejected: %s", self.pod, sid, e)
            self._send(spdy.RstStream(sid, spdy.REFUSED_STREAM))
            return
        self._send(spdy.SynReply(sid))
        start = None
        with self._lock:
            pair = self._pairs.get(rid)
            if pair is None:
                pair = self._pairs[rid] = _Pair(rid, port, time.monotonic())
            taken = pair.error_sid if stype == "error" else pair.data_sid
            if not taken:
                if stype == "error":
                    pair.error_sid = sid
                else:
                    pair.data_sid = sid
                    pair.port = port  # the kubelet forwards to the data stream's port
                    pair.peer_fin = f.fin
                self._streams[sid] = (stype, pair)
                if pair.complete and not pair.started:
                    pair.started = True
                    start = pair
        if taken:
            msg = f"error processing stream for request {rid}: {stype} stream already assigned"
            log.info("port-forward pod=%s: %s", self.pod, msg)
            if pair.error_sid and not pair.error_reset:
                self._send(spdy.Data(pair.error_sid, msg.encode()))
            self._send(spdy.RstStream(sid, spdy.CANCEL))
        elif start is not None:
            self._start(start)

    @staticmethod
    def _stream_headers(f: spdy.SynStream) -> tuple[str, int, str]:
        h = f.headers
        raw_port = spdy.header(h, "port")
        if not raw_port:
            raise ValueError('"port" header is required')
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"unable to parse {raw_port!r} as a port") from None
        if not 0 < port < 65536:
            raise ValueError(f"port {raw_port!r} must be > 0 and < 65536")
        stype = spdy.header(h, "streamtype")
        if not stype:
            raise ValueError('"streamType" header is required')
        if stype not in ("error", "data"):
            raise ValueError(f"invalid stream type {stype!r}")
        rid = spdy.header(h, "requestid")
        if not rid:  # very old clients: consecutive stream ids, error first (as the kubelet guesses)
            rid = str(f.stream_id if stype == "error" else f.stream_id - 2)
        return stype, port, rid

    def _on_data(self, f: spdy.Data) -> None:
        with self._lock:
            entry = self._streams.get(f.stream_id)
        if entry is None:
            return  # a stream already finished or reset: late data is dropped, as spdystream does
        stype, pair = entry
        if stype == "error":
            return  # kubectl only half-closes its error stream
        # under the pair's lock: the connection's thread closes the socket only under it too (a
        # write to a closed descriptor number could hit whatever socket got the number next)
        with pair.lock:
            sock = pair.sock
            if sock is None:
                if f.data:
                    pair.pending.append(f.data)
                pair.peer_fin = pair.peer_fin or f.fin
                return
            try:
                if f.data:
                    sock.sendall(f.data)
                if f.fin:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as e:  # the pod closed or reset: its reading side ends the pump
                log.debug("port-forward pod=%s port=%d: write to the pod failed: %s", self.pod, pair.port, e)
                _shutdown(sock)

    def _on_reset(self, f: spdy.RstStream) -> None:
        with self._lock:
            entry = self._streams.pop(f.stream_id, None)
        if entry is None:
            return
        stype, pair = entry
        with pair.lock:
            if stype == "data":
                pair.data_reset = True
                if pair.sock is not None:
                    _shutdown(pair.sock)  # the pump's recv() returns and the connection ends
            else:
                pair.error_reset = True

    def _expire_pairs(self) -> None:
        """A pair still missing a stream after stream_timeout gets the kubelet's error and goes."""
        now = time.monotonic()
        with self._lock:
            stale = [p for p in self._pairs.values()
                     if not p.complete and now - p.created > self.stream_timeout]
            for p in stale:
                del self._pairs[p.request_id]
                for sid in (p.error_sid, p.data_sid):
                    self._streams.pop(sid, None)
        for p in stale:
            msg = f"timed out waiting for streams of request {p.request_id}"
            log.info("port-forward pod=%s: %s", self.pod, msg)
            if p.error_sid:
                self._send(spdy.Data(p.error_sid, msg.encode(), spdy.FLAG_FIN))
            if p.data_sid:
                self._send(spdy.RstStream(p.data_sid, spdy.CANCEL))

    # -- one forwarded connection --

    def _start(self, pair: _Pair) -> None:
        t = threading.Thread(target=self._forward, args=(pair,), daemon=True,
                             name=f"portforward-{pair.port}-{pair.request_id}")
        with self._lock:
            self._threads.add(t)
            self.connections += 1
        t.start()

    def _forward(self, pair: _Pair) -> None:
        try:
            try:
                sock = self.dial(pair.port)
            except OSError as e:
                with self._lock:
                    self.failed += 1
                msg = (f"error forwarding port {pair.port} to pod {self.pod}, uid {self.uid}: "
                       f"{e.strerror or e}")
                log.info("port-forward %s", msg)
                if not pair.error_reset:
                    self._send(spdy.Data(pair.error_sid, msg.encode()))
                return
            try:
                self._connected(pair, sock)
            finally:
                with pair.lock:
                    pair.sock = None
                    sock.close()
        except Exception:  # a bug must not take the session (or the agent) down
            log.exception("port-forward pod=%s port=%d failed", self.pod, pair.port)
        finally:
            self._finish(pair)
            with self._lock:
                self._threads.discard(threading.current_thread())
                wake = self._going_away and not self._threads
            if wake:
                self.transport.close()  # the reader is waiting in recv(): GOAWAY and nothing left

    def _connected(self, pair: _Pair, sock: socket.socket) -> None:
        # a pod that stops reading blocks writes to it (backpressure); one that stalls for
        # WRITE_TIMEOUT has its connection dropped rather than holding the session forever
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(WRITE_TIMEOUT), 0))
        # hand the socket to the reader thread only once what came early is written, in order
        while True:
            with pair.lock:
                chunks, pair.pending = pair.pending, []
                if not chunks:
                    pair.sock = sock
                    peer_fin, reset = pair.peer_fin, pair.data_reset
                    break
            try:
                for c in chunks:
                    sock.sendall(c)
            except OSError:
                _shutdown(sock)
        if reset:
            return
        if peer_fin:
            _shutdown(sock, socket.SHUT_WR)
        log.debug("port-forward pod=%s port=%d request=%s connected", self.pod, pair.port, pair.request_id)
        while True:
            try:
                data = sock.recv(READ_CHUNK)
            except OSError:
                data = b""
            if not data or pair.data_reset or self._dead:
                break
            self._send(spdy.Data(pair.data_sid, data))

    def _finish(self, pair: _Pair) -> None:
        """FIN both streams (unless reset) and forget the pair."""
        with pair.lock:
            data_open, error_open = not pair.data_reset, not pair.error_reset
            pair.data_reset = pair.error_reset = True
        frames: list[spdy.Frame] = []
        if data_open:
            frames.append(spdy.Data(pair.data_sid, b"", spdy.FLAG_FIN))
        if error_open:
            frames.append(spdy.Data(pair.error_sid, b"", spdy.FLAG_FIN))
        self._send(*frames)
        with self._lock:
            self._pairs.pop(pair.request_id, None)
            self._streams.pop(pair.data_sid, None)
            self._streams.pop(pair.error_sid, None)

    # -- frames out, shutdown --

    def _send(self, *frames: spdy.Frame) -> None:
        if not frames:
            return
        with self._wlock:
            if self._dead:
                return
            try:
                self.transport.send(b"".join(self._writer.encode(f) for f in frames))
            except Exception as e:  # noqa: BLE001 - any transport failure ends the session the same way
                log.debug("port-forward pod=%s: the tunnel broke: %s", self.pod, e)
                self._dead = True

    def _active(self) -> bool:
        with self._lock:
            return bool(self._threads or self._pairs)

    def _shutdown(self) -> None:
        self._going_away = True
        with self._lock:
            pairs = list(self._pairs.values())
            threads = list(self._threads)
        for p in pairs:
            with p.lock:
                p.data_reset = True
                if p.sock is not None:
                    _shutdown(p.sock)
        for t in threads:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.warning("port-forward pod=%s: connection thread %s did not end", self.pod, t.name)
        self._dead = True
        try:
            self.transport.close()
        except Exception as e:  # noqa: BLE001
            log.debug("closing the port-forward tunnel failed: %s", e)


def _shutdown(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


# -- the WebSocket tunnel (the agent API's GET /portForward/...) ----------------------


class WebSocketTransport:
    """A kube.websocket.WebSocket as the session's transport: binary messages carry the SPDY bytes."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def recv(self) -> bytes | None:
        from kube.websocket import CLOSE_PROTOCOL_ERROR, OP_BINARY
        msg = self.ws.recv()
        if msg is None:
            return None
        if msg.opcode != OP_BINARY:
            log.info("port-forward: a text message on the SPDY tunnel; closing")
            self.ws.close(CLOSE_PROTOCOL_ERROR, "the port-forward tunnel carries binary messages only")
            return None
        return bytes(msg.data)

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def close(self) -> None:
        self.ws.close()
        self.ws.abort()  # also wakes a recv() blocked in another thread


def upgrade(header: Callable[[str], str | None], sock: socket.socket,
            read: Callable[[int], bytes]) -> WebSocketTransport:
    """Answer an HTTP handler's WebSocket upgrade for port-forward (101 with our subprotocol) and
    return the tunnel.  kube.websocket.HandshakeError (answer 400 with it) when the request is not
    one, or does not offer SPDY/3.1+portforward.k8s.io."""
    from kube.websocket import HandshakeError, WebSocket, choose_subprotocol, handshake_response
    offered = header("Sec-WebSocket-Protocol")
    proto = choose_subprotocol(offered, [WEBSOCKET_SUBPROTOCOL])
    if proto is None:
        raise HandshakeError(f"port-forward needs the WebSocket subprotocol {WEBSOCKET_SUBPROTOCOL}, "
                             f"the client offered {offered or 'none'}")
    sock.sendall(handshake_response(header, proto))
    return WebSocketTransport(WebSocket(sock, client=False, subprotocol=proto, read=read))
