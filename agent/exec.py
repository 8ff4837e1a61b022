"""exec and attach sessions: a Kubernetes channel WebSocket on one side, the Docker engine on the other.

The agent API (agent/server.py) validates the request, asks ``Streams.prepare()`` for a session
(before the upgrade, so that errors are still HTTP answers: LookupError -> 404, ValueError -> 400)
and, after the WebSocket handshake, calls ``session.run(ws)`` on the request's thread.

Parameters (the kubelet's names, as the apiserver sends them): ``command`` (repeated, exec only),
``input``, ``output``, ``error``, ``tty`` ("1"/"true" or "0"/"false").  With tty, stderr is merged
into stdout (upstream ignores error=1 then); at least one of input/output/error is required.

Channel protocols (subprotocols v5.channel.k8s.io and v4.channel.k8s.io; every message is binary,
its first byte the channel):

    0 stdin  (client -> agent)             3 error: one v1 Status JSON, then the agent closes (1000)
    1 stdout (agent -> client)             4 resize (client -> agent): {"Width": 80, "Height": 24}
    2 stderr (agent -> client)           255 v5 only: [255, N] = the client closed channel N (stdin EOF)

Exec: the engine creates an exec instance (docker SDK ``exec_create``), we start it on a hijacked
connection of our own (``POST /exec/ID/start`` with ``Upgrade: tcp``: the bytes after the 101 are
the streams, and reading the answer ourselves loses none of those that arrive with the headers),
demultiplex the engine's stream (without tty: 8-byte headers [stream, 0, 0, 0, size32]) into
channels 1 and 2, copy channel 0 into the exec's stdin and half-close it on the v5 close signal,
apply resizes with ``exec_resize``, and at the end send the Status: Success, or Failure with reason
NonZeroExitCode and the cause {reason: ExitCode, message: "3"} (kubectl exits with that code), or
InternalError "error executing command in container: ..." when the engine could not start the
command at all (not found, not executable).  Attach is the same against the container's own stdio
(``POST /containers/ID/attach``, ``resize``), and ends with Success when the container's streams end.

A client that goes away ends the session: the engine connection is closed, which gives the
command EOF on stdin (the command itself is not killed, as upstream).  Nothing here blocks forever:
every wait is on a socket that the other side's end shuts down.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from agent import runtime as rt
from kube.websocket import OP_BINARY, WebSocket

log = logging.getLogger("kubeling.agent.exec")

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
SUBPROTOCOLS = (V5, V4)  # what the agent speaks; the client's order of preference decides

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHUNK = 32 * 1024  # client-go reads messages into 32 KiB buffers
CLOSE_TIMEOUT = 5.0  # after our close, how long the client may take to answer it
ENGINE_TIMEOUT = 10.0  # connecting to the engine and reading its 101


class BadStreamRequest(ValueError):
    """The request's parameters make no session (HTTP 400)."""


@dataclass(frozen=True)
class StreamOptions:
    command: tuple[str, ...] = ()
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    tty: bool = False


def _flag(params: dict[str, list[str]], name: str) -> bool:
    raw = (params.get(name) or [""])[-1]
    v = raw.lower()
    if v in ("1", "true"):
        return True
    if v in ("", "0", "false"):
        return False
    raise BadStreamRequest(f"{name}={raw!r} is not a boolean: use 1 or 0")


def parse_options(kind: str, params: dict[str, list[str]]) -> StreamOptions:
    """The kubelet's query parameters -> StreamOptions; BadStreamRequest on nonsense."""
    tty = _flag(params, "tty")
    stdin, stdout, stderr = _flag(params, "input"), _flag(params, "output"), _flag(params, "error")
    if tty:
        stderr = False  # one terminal carries both, as upstream
    if not (stdin or stdout or stderr):
        raise BadStreamRequest("you must specify at least 1 of stdin, stdout, stderr")
    command = tuple(params.get("command") or ()) if kind == "exec" else ()
    if kind == "exec" and not command:
        raise BadStreamRequest("exec needs a command: pass command=ARG once per argument")
    return StreamOptions(command, stdin, stdout, stderr, tty)


# -- the Status on channel 3 -------------------------------------------------------------------


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(command: tuple[str, ...], code: int) -> dict[str, Any]:
    """What the kubelet sends for a command that ran: Success, or NonZeroExitCode with an ExitCode cause."""
    if code == 0:
        return success_status()
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"[{' '.join(command)}], exit code {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error_status(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
            "message": f"Internal error occurred: {message}", "details": {"causes": [{"message": message}]}}


# -- framing: channels over the WebSocket, the engine's multiplexed stream ----------------------


class Channels:
    """The channel protocol over one WebSocket (v5 or v4; see the module docstring)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.v5 = ws.subprotocol == V5

    def send(self, channel: int, data: bytes) -> None:
        """Data on a channel, in messages of at most CHUNK bytes (empty data: one empty message)."""
        for i in range(0, max(len(data), 1), CHUNK):
            self.ws.send(bytes([channel]) + data[i:i + CHUNK])

    def recv(self) -> tuple[int, bytes] | None:
        """The next (channel, data); (CLOSE, bytes([N])) for v5's close signal; None at the end."""
        while (msg := self.ws.recv()) is not None:
            if msg.opcode != OP_BINARY or not msg.data:
                continue  # every channel protocol message is binary and starts with its channel
            channel = msg.data[0]
            if channel == CLOSE and not self.v5:
                continue
            return channel, msg.data[1:]
        return None

    def finish(self, status: dict[str, Any]) -> None:
        """The Status on the error channel, then the closing handshake."""
        try:
            self.send(ERROR, json.dumps(status).encode())
        except (OSError, ConnectionError):
            pass
        self.ws.close()


class DockerDemux:
    """The engine's stream of a container without a tty -> (stream, payload): 1 stdout, 2 stderr."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            stream, size = self._buf[0], struct.unpack_from(">I", self._buf, 4)[0]
            if len(self._buf) < 8 + size:
                break
            out.append((stream, bytes(self._buf[8:8 + size])))
            del self._buf[:8 + size]
        return out


def parse_resize(data: bytes) -> tuple[int, int] | None:
    """A resize message -> (width, height); None when it is not one."""
    try:
        size = json.loads(data)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, TypeError, KeyError):
        return None
    return (width, height) if 0 < width < 65536 and 0 < height < 65536 else None


# -- the engine connection ----------------------------------------------------------------------


class EngineError(Exception):
    """The engine refused a request (its message)."""


def hijack(docker_host: str, path: str, body: dict[str, Any] | None = None) -> tuple[socket.socket, bytes]:
    """POST path with Upgrade: tcp on a connection of our own; (the socket, bytes read past the 101)."""
    u = urlsplit(docker_host)
    if u.scheme in ("unix", ""):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(ENGINE_TIMEOUT)
        try:
            sock.connect(u.path or "/var/run/docker.sock")
        except OSError:
            sock.close()
            raise
    elif u.scheme in ("tcp", "http"):
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 2375), timeout=ENGINE_TIMEOUT)
    else:
        raise EngineError(f"cannot hijack a connection to {docker_host!r}: use unix:// or tcp://")
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"POST /v{rt.API_VERSION}{path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
                f"Upgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        sock.sendall(head.encode() + payload)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise EngineError("the engine closed the connection before answering")
            buf += chunk
            if len(buf) > 1 << 20:
                raise EngineError("the engine's answer has no end of headers")
        head_bytes, _, rest = buf.partition(b"\r\n\r\n")
        status_line = head_bytes.split(b"\r\n", 1)[0].decode("latin-1")
        code = status_line.split(" ", 2)[1] if status_line.count(" ") >= 1 else ""
        if code not in ("101", "200"):  # 101 UPGRADED (200 from engines that stream without the upgrade)
            raise EngineError(_engine_message(status_line, rest))
        sock.settimeout(None)
        return sock, rest
    except BaseException:
        sock.close()
        raise


def _engine_message(status_line: str, body: bytes) -> str:
    try:
        return str(json.loads(body.decode(errors="replace").strip().splitlines()[-1])["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"the engine answered {status_line}"


# -- sessions ----------------------------------------------------------------------------------


class Session(Protocol):
    def run(self, ws: WebSocket) -> None: ...


class Streams(Protocol):
    """What AgentServer(streams=...) needs: a session for a request, or LookupError/ValueError."""

    def prepare(self, kind: str, namespace: str, pod: str, container: str,
                params: dict[str, list[str]]) -> Session: ...


class DockerSession:
    """One exec or attach against the engine (see the module docstring)."""

    def __init__(self, streams: DockerStreams, kind: str, cid: str, opts: StreamOptions, tty: bool,
                 what: str) -> None:
        self.streams = streams
        self.kind = kind
        self.cid = cid
        self.opts = opts
        self.tty = tty  # the engine's stream is raw (a terminal) rather than multiplexed
        self.what = what  # "exec NS/POD/CONTAINER" for the logs
        self.exec_id = ""
        self._client_gone = threading.Event()
        self._finished = threading.Event()
        self._start_error = b""
        self._closer: threading.Timer | None = None  # drops a client that does not answer our close

    @property
    def api(self) -> Any:
        return self.streams.api

    def _start(self) -> tuple[socket.socket, bytes]:
        o = self.opts
        if self.kind == "exec":
            ex = self.api.exec_create(self.cid, list(o.command), stdin=o.stdin, stdout=o.stdout, stderr=o.stderr,
                                      tty=o.tty)
            self.exec_id = str(ex["Id"])
            return hijack(self.streams.docker_host, f"/exec/{self.exec_id}/start", {"Detach": False, "Tty": o.tty})
        q = "&".join(f"{k}={int(v)}" for k, v in (("stdin", o.stdin), ("stdout", o.stdout), ("stderr", o.stderr)))
        return hijack(self.streams.docker_host, f"/containers/{quote(self.cid)}/attach?stream=1&{q}")

    def run(self, ws: WebSocket) -> None:
        ch = Channels(ws)
        try:
            sock, early = self._start()
        except Exception as e:  # noqa: BLE001 - the engine's refusal becomes the session's Status
            msg = getattr(e, "explanation", None) or str(e) or type(e).__name__
            log.info("%s could not start: %s", self.what, msg)
            ch.finish(internal_error_status(f"error executing command in container: {msg}" if self.kind == "exec"
                                            else f"error attaching to container: {msg}"))
            return
        log.debug("%s started protocol=%s tty=%s", self.what, ws.subprotocol, self.opts.tty)
        # the kubelet's "connection established": an empty message on the lowest writable channel
        first = STDOUT if self.opts.stdout else STDERR if self.opts.stderr else ERROR
        pump = threading.Thread(target=self._pump, args=(sock, early, ch), name=f"{self.kind}-pump", daemon=True)
        try:
            if first != ERROR:
                ch.send(first, b"")
            pump.start()
            self._from_client(ch, sock)
        except (OSError, ConnectionError):
            pass
        finally:
            if not self._finished.is_set():
                self._client_gone.set()
            try:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks the pump
            except OSError:
                pass
            if pump.is_alive():
                pump.join(CLOSE_TIMEOUT + ENGINE_TIMEOUT)
            sock.close()
            if self._closer is not None:
                self._closer.cancel()
            log.debug("%s ended client_gone=%s", self.what, self._client_gone.is_set())

    def _from_client(self, ch: Channels, sock: socket.socket) -> None:
        stdin_open = self.opts.stdin
        resized = False
        while (got := ch.recv()) is not None:
            channel, data = got
            if channel == STDIN and stdin_open:
                try:
                    sock.sendall(data)
                except OSError:
                    stdin_open = False  # the command is gone; its output and status still follow
            elif channel == RESIZE:
                size = parse_resize(data)
                if size is not None:
                    self._resize(*size, retry=not resized)
                    resized = True
            elif channel == CLOSE and data[:1] == bytes([STDIN]) and stdin_open:
                stdin_open = False
                try:
                    sock.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
                except OSError:
                    pass

    def _resize(self, width: int, height: int, retry: bool) -> None:
        # The first size arrives as the command starts: the engine refuses to resize a process that
        # is not running yet, so that one is retried briefly (as the docker CLI does).
        for attempt in range(10 if retry else 1):
            try:
                if self.kind == "exec":
                    self.api.exec_resize(self.exec_id, height=height, width=width)
                else:
                    self.api.resize(self.cid, height=height, width=width)
                return
            except Exception as e:  # noqa: BLE001 - a failed resize must not end the session
                if attempt == (9 if retry else 0):
                    log.debug("%s: resize to %dx%d failed: %s", self.what, width, height, e)
                    return
                time.sleep(0.01 * (attempt + 1))

    def _pump(self, sock: socket.socket, early: bytes, ch: Channels) -> None:
        """Engine -> client until the engine's stream ends; then the Status and our close."""
        demux = None if self.tty else DockerDemux()
        # exec: the first bytes may be the engine's own error ("executable file not found"); they
        # are held back until the engine says whether the command started
        hold, checked = self.kind == "exec", False
        data = early
        try:
            while True:
                if data:
                    if hold and not checked:
                        hold, checked = not self._started(), True
                    for stream, payload in demux.feed(data) if demux is not None else [(STDOUT, data)]:
                        if hold:
                            self._start_error += payload
                        elif stream in (STDOUT, STDERR):
                            ch.send(stream, payload)
                data = sock.recv(CHUNK)
                if not data:
                    break
        except (OSError, ConnectionError):
            pass
        if self._client_gone.is_set():
            return
        self._finished.set()
        try:
            status = self._status()
        except Exception as e:  # noqa: BLE001 - the engine went away: say so rather than hang
            status = internal_error_status(f"error reading the exit status: {e}")
        ch.finish(status)
        # the client answers our close, which ends _from_client(); one that never does is dropped
        self._closer = threading.Timer(CLOSE_TIMEOUT, ch.ws.abort)
        self._closer.daemon = True
        self._closer.start()

    def _started(self) -> bool:
        """False when the engine says the command never started (its output is then the engine's error)."""
        try:
            info = self.api.exec_inspect(self.exec_id)
        except Exception:  # noqa: BLE001
            return True
        return bool(info.get("Running")) or int(info.get("Pid") or 0) != 0

    def _status(self) -> dict[str, Any]:
        if self.kind != "exec":
            return success_status()
        info: dict[str, Any] = {}
        for _ in range(100):  # the engine records the exit a moment after the streams end
            info = self.api.exec_inspect(self.exec_id)
            if not info.get("Running"):
                break
            time.sleep(0.02)
        code = info.get("ExitCode")
        never_started = int(info.get("Pid") or 0) == 0 and code in (126, 127)
        if never_started or self._start_error:
            text = self._start_error.decode(errors="replace").strip()
            return internal_error_status(f"error executing command in container: "
                                         f"{text or f'the command could not be started (exit code {code})'}")
        if code is None:
            return internal_error_status("error executing command in container: no exit code")
        return exit_status(self.opts.command, int(code))


class DockerStreams:
    """exec/attach for the containers of this node's pods, on the Docker engine.

    runtime: the agent's DockerRuntime (its ``api`` is docker-py's APIClient); pods: the pods the
    agent runs (Agent.pod_list); docker_host: the engine's address, for the hijacked connections.
    """

    def __init__(self, runtime: Any, pods: Callable[[], list[dict[str, Any]]], node: str,
                 docker_host: str = "unix:///var/run/docker.sock") -> None:
        self.runtime = runtime
        self.pods = pods
        self.node = node
        self.docker_host = docker_host

    @property
    def api(self) -> Any:
        return self.runtime.api

    def prepare(self, kind: str, namespace: str, pod: str, container: str,
                params: dict[str, list[str]]) -> DockerSession:
        if kind not in ("exec", "attach"):
            raise KeyError(f"unknown stream kind {kind!r}")
        opts = parse_options(kind, params)
        p = next((p for p in self.pods() if (p.get("metadata") or {}).get("name") == pod
                  and (p.get("metadata") or {}).get("namespace") == namespace), None)
        if p is None:
            raise KeyError(f"pod {namespace}/{pod} is not running on node {self.node}")
        spec = p.get("spec") or {}
        names = [c.get("name") for key in ("initContainers", "containers") for c in spec.get(key) or []]
        if container not in names:
            raise KeyError(f"container {container} is not valid for pod {pod}")
        running = [c for c in self.runtime.containers({rt.L_NODE: self.node,
                                                       rt.L_POD_UID: (p.get("metadata") or {}).get("uid", "")})
                   if c.labels.get(rt.L_CONTAINER) == container and c.labels.get(rt.L_KIND) != "sandbox"
                   and c.state == "running"]
        if not running:
            raise ValueError(f"container {container} in pod {namespace}/{pod} is not running")
        target = max(running, key=lambda c: c.restart_count)
        tty = opts.tty
        if kind == "attach":
            cfg = self.api.inspect_container(target.id).get("Config") or {}
            tty = bool(cfg.get("Tty"))  # the container's own streams: a terminal or multiplexed
            if opts.stdin and not cfg.get("OpenStdin"):
                raise ValueError(f"container {container} in pod {namespace}/{pod} does not take stdin: "
                                 "set stdin: true in its spec to attach with -i")
        return DockerSession(self, kind, target.id, opts, tty, f"{kind} {namespace}/{pod}/{container}")
