"""The agent's own API (upstream kubelet's :10250 server): HTTPS with client certificates, or plain HTTP.

    srv = AgentServer("127.0.0.1:10250", pods=lambda: cache.pods(), logs=runtime.logs,
                      streams=DockerStreams(runtime, pods=cache.pods, node=name))
    srv.start()                 # a ThreadingHTTPServer in a daemon thread; srv.port is the bound port
    srv.stop()

Interface (used by agent/main.py; the apiserver proxies ``kubectl logs``, ``exec``, ``attach`` here):

- ``AgentServer(listen, *, pods, logs, healthy=lambda: True, metrics=None, portforward=None,
  streams=None, ssl_context=None, auth=None)``; ``listen`` is "HOST:PORT" (port 0 picks a free one:
  read ``.port`` / ``.endpoint`` after start()).
- ``ssl_context`` (agent/auth.py's ``server_ssl_context``): serve HTTPS; the TLS handshake runs on the
  connection's own thread (a slow client never holds up the accept loop), bounded by
  HANDSHAKE_TIMEOUT.  ``auth`` (agent/auth.py's ``AgentAuth``): every request, on every path and
  method, is authenticated by its client certificate and authorized before anything else (401/403
  text answers, upstream's words).  Without both the server is plain HTTP and open: only for
  clusters whose apiserver runs with --insecure-serving (agent/main.py decides).
- ``HealthzServer(listen, healthy)``: upstream's --healthz-port (127.0.0.1:10248): plain HTTP, no
  authentication, only GET /healthz.
- ``pods() -> list[dict]``: the v1 Pods the agent runs.
- ``portforward(namespace, pod, uid) -> run(transport)`` (optional): for ``kubectl port-forward``;
  raises LookupError (404) for an unknown pod and ValueError (400) for one that cannot be reached
  yet, before the WebSocket upgrade; ``run`` then serves the SPDY session (agent/portforward.py)
  on the upgraded connection until the peer goes.  ``uid`` is "" when the path has none.
- ``logs(namespace, pod, container, *, follow, tail_lines, timestamps, previous, since_seconds,
  limit_bytes) -> Iterator[bytes]``: the container's log bytes. ``tail_lines``, ``since_seconds``,
  ``limit_bytes`` are int or None. It raises LookupError (KeyError) for an unknown pod or container
  and ValueError for a container that has no log to show (e.g. "waiting to start"), either when
  called or from its first next(): the server pulls the first chunk before it answers, so it can
  still answer 404/400. With follow it yields as the container writes, and it is closed (close())
  when the client goes away.
- ``streams`` (optional): exec and attach (agent/exec.py's ``Streams``; the agent passes its
  Docker-backed ``DockerStreams``).  ``streams.prepare(kind, namespace, pod, container, params)``
  returns a session or raises LookupError (404) / ValueError (400) before the upgrade; after the
  WebSocket handshake ``session.run(ws)`` runs on the request's thread until the session ends.
  Without ``streams`` those routes answer 404.

Routes:

    GET /healthz                         "ok" (500 "unhealthy" when healthy() says no)
    GET /pods                            a v1 PodList
    GET /containerLogs/NS/POD/CONTAINER  ?follow=&tailLines=&timestamps=&previous=&sinceSeconds=&limitBytes=
                                         text/plain, chunked; 400 bad parameters, 404 unknown pod/container
    GET /portForward/NS/POD[/UID]        WebSocket upgrade, subprotocol SPDY/3.1+portforward.k8s.io (the
                                         tunnel kubectl uses); 400 not an upgrade, 404 unknown pod
    GET /exec/NS/POD/CONTAINER           ?command=ARG (repeated)&input=1&output=1&error=1&tty=1, and
    GET /attach/NS/POD/CONTAINER         Upgrade: websocket with subprotocol v5.channel.k8s.io or
                                         v4.channel.k8s.io (the kubelet's parameters and protocols);
                                         400 bad parameters, not an upgrade ("Upgrade request required")
                                         or no common subprotocol, 404 unknown pod/container

Errors are text/plain one-liners saying what was wrong.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from agent.auth import AgentAuth
from agent.exec import SUBPROTOCOLS, Streams
from kube import websocket

log = logging.getLogger("kubeling.agent.server")

LogsFn = Callable[..., Iterator[bytes]]
BOOL_TRUE = ("true", "1", "yes", "")
BOOL_FALSE = ("false", "0", "no")
HANDSHAKE_TIMEOUT = 10.0  # seconds for a client to finish the TLS handshake


class BadParameter(ValueError):
    pass


def parse_bool(params: dict[str, str], name: str) -> bool:
    if name not in params:
        return False
    v = params[name].lower()
    if v in BOOL_TRUE:
        return True
    if v in BOOL_FALSE:
        return False
    raise BadParameter(f"{name}={params[name]!r} is not a boolean: use true or false")


def parse_int(params: dict[str, str], name: str, minimum: int) -> int | None:
    raw = params.get(name, "")
    if raw == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise BadParameter(f"{name}={raw!r} is not an integer") from None
    if v < minimum:
        raise BadParameter(f"{name}={v} must be at least {minimum}")
    return v


def log_options(params: dict[str, str]) -> dict[str, Any]:
    """Query parameters -> the logs() keyword arguments; BadParameter on nonsense."""
    return {"follow": parse_bool(params, "follow"), "tail_lines": parse_int(params, "tailLines", 0),
            "timestamps": parse_bool(params, "timestamps"), "previous": parse_bool(params, "previous"),
            "since_seconds": parse_int(params, "sinceSeconds", 1), "limit_bytes": parse_int(params, "limitBytes", 1)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        # the request line without its query: an exec's command line may carry a secret
        text = (format % args).replace(self.requestline, self.requestline.split("?", 1)[0]) \
            if self.requestline else format % args
        log.debug("request %s %s", self.address_string(), text)

    def _authorized(self) -> bool:
        """Authenticate and authorize the request (AgentAuth); answer 401/403/500 and False when refused."""
        auth = self.server.owner.auth
        if auth is None:
            return True
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        decision = auth.check(cert, self.command, urlsplit(self.path).path)
        if decision.allowed:
            return True
        self.close_connection = True
        self._text(decision.code, decision.message)
        return False

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _text(self, code: int, text: str) -> None:
        self._send(code, (text.rstrip("\n") + "\n").encode())

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        path = url.path
        if not self._authorized():
            return
        try:
            if path == "/healthz":
                ok = self.server.owner.healthy()
                self._text(200 if ok else 500, "ok" if ok else "unhealthy")
            elif path == "/metrics" and self.server.owner.metrics is not None:
                self._send(200, self.server.owner.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/pods":
                body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.server.owner.pods()}
                self._send(200, json.dumps(body).encode(), "application/json")
            elif path.startswith("/portForward/") and self.server.owner.portforward is not None:
                self._portforward(path)
            elif path.startswith("/containerLogs/"):
                parts = [unquote(p) for p in path[len("/containerLogs/"):].split("/")]
                if len(parts) != 3 or not all(parts):
                    self._text(404, f"{path}: use /containerLogs/NAMESPACE/POD/CONTAINER")
                    return
                params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                self._logs(parts[0], parts[1], parts[2], params)
            elif path.startswith(("/exec/", "/attach/")):
                self._stream(path, url.query)
            else:
                self._text(404, f"{path} not found: the agent serves /healthz, /metrics, /pods, "
                                "/containerLogs/NS/POD/C, /exec/NS/POD/C, /attach/NS/POD/C and "
                                "/portForward/NS/POD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in a callable must not kill the server
            log.exception("agent API error on %s", path)
            try:
                self._text(500, f"internal error: {type(e).__name__}: {e}")
            except OSError:
                pass
            self.close_connection = True

    def do_HEAD(self) -> None:  # noqa: N802
        if self._authorized():
            self._text(405, "only GET is served")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD  # noqa: N815

    def _portforward(self, path: str) -> None:
        from agent.portforward import upgrade
        from kube.websocket import HandshakeError
        owner = self.server.owner
        assert owner.portforward is not None
        parts = [unquote(p) for p in path[len("/portForward/"):].split("/")]
        if len(parts) not in (2, 3) or not all(parts):
            self._text(404, f"{path}: use /portForward/NAMESPACE/POD[/UID]")
            return
        try:
            run = owner.portforward(parts[0], parts[1], parts[2] if len(parts) == 3 else "")
        except LookupError as e:
            self._text(404, _message(e))
            return
        except ValueError as e:
            self._text(400, str(e))
            return
        try:
            transport = upgrade(self.headers.get, self.connection, self.rfile.read1)
        except HandshakeError as e:
            self._text(400, str(e))
            return
        self.close_connection = True  # the connection is the tunnel now; it ends with the session
        run(transport)

    def _logs(self, ns: str, pod: str, container: str, params: dict[str, str]) -> None:
        try:
            opts = log_options(params)
        except BadParameter as e:
            self._text(400, str(e))
            return
        limit = opts["limit_bytes"]
        it: Iterator[bytes] | None = None
        try:
            it = iter(self.server.owner.logs(ns, pod, container, **opts))
            first = next(it, b"")
        except LookupError as e:
            self._text(404, _message(e) or f"container {container!r} of pod {ns}/{pod} not found")
            _close(it)
            return
        except ValueError as e:
            self._text(400, _message(e))
            _close(it)
            return
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            chunk = first
            while True:
                if chunk:
                    if limit is not None:
                        chunk = chunk[:limit - sent]
                    sent += len(chunk)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    if limit is not None and sent >= limit:
                        break
                nxt = next(it, None)
                if nxt is None:
                    break
                chunk = nxt
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("log stream of %s/%s/%s: the client went away", ns, pod, container)
            self.close_connection = True
        except Exception:  # the stream broke after the headers: end the connection so the client notices
            log.exception("log stream of %s/%s/%s failed", ns, pod, container)
            self.close_connection = True
        finally:
            _close(it)


    def _stream(self, path: str, query: str) -> None:
        """exec/attach: validate, prepare the session, upgrade, run it (see agent/exec.py)."""
        kind, _, rest = path[1:].partition("/")
        parts = [unquote(p) for p in rest.split("/")]
        if len(parts) != 3 or not all(parts):
            self._text(404, f"{path}: use /{kind}/NAMESPACE/POD/CONTAINER")
            return
        streams = self.server.owner.streams
        if streams is None:
            self._text(404, f"this agent does not serve {kind}")
            return
        try:
            session = streams.prepare(kind, parts[0], parts[1], parts[2], parse_qs(query, keep_blank_values=True))
        except LookupError as e:
            self._text(404, _message(e))
            return
        except ValueError as e:
            self._text(400, str(e))
            return
        header = self.headers.get
        if not websocket.is_upgrade_request(header):
            self._text(400, "Upgrade request required")
            return
        offered = header("Sec-WebSocket-Protocol")
        proto = websocket.choose_subprotocol(offered, SUBPROTOCOLS)
        if proto is None:
            self._text(400, f"requested protocol(s) are not supported: [{offered or ''}]; "
                            f"supports [{' '.join(SUBPROTOCOLS)}]")
            return
        try:
            answer = websocket.handshake_response(header, proto)
        except websocket.HandshakeError as e:
            self._text(400, str(e))
            return
        self.close_connection = True  # the connection is the session's from here on
        self.wfile.write(answer)
        ws = websocket.WebSocket(self.connection, client=False, subprotocol=proto, read=self.rfile.read1)
        try:
            session.run(ws)
        except Exception:  # a broken session must not take the server down
            log.exception("%s session %s/%s/%s failed", kind, *parts)
        finally:
            ws.abort()


def _message(e: BaseException) -> str:
    # KeyError's str() is the repr of its argument
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a finished stream must not fail the request
            log.debug("closing a log stream failed", exc_info=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: AgentServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's thread: the TLS handshake first (when serving HTTPS), then the handler."""
        ctx = self.owner.ssl_context
        if ctx is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: a bad or untrusted certificate, a timeout
            log.debug("TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            tls.close()


class AgentServer:
    """The agent API (see the module docstring)."""

    def __init__(self, listen: str = "127.0.0.1:10250", *, pods: Callable[[], list[dict[str, Any]]],
                 logs: LogsFn, healthy: Callable[[], bool] = lambda: True,
                 metrics: Callable[[], bytes] | None = None,
                 portforward: Callable[[str, str, str], Callable[[Any], None]] | None = None,
                 streams: Streams | None = None, ssl_context: ssl.SSLContext | None = None,
                 auth: AgentAuth | None = None) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"the agent API listen address must be HOST:PORT, got {listen!r}")
        self.host = host.strip("[]") or "127.0.0.1"
        self.requested_port = int(port)
        self.pods = pods
        self.logs = logs
        self.healthy = healthy
        self.metrics = metrics  # the Prometheus text of GET /metrics
        self.portforward = portforward
        self.streams = streams  # exec and attach sessions (None: not served)
        self.ssl_context = ssl_context  # HTTPS (None: plain HTTP)
        self.auth = auth  # who may call (None: anyone)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """HOST:PORT as bound (for the Node's kubeling.io/agent-endpoint annotation)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> AgentServer:
        if self._server is not None:
            raise RuntimeError("the agent API is already started")
        cls = _Server
        if ":" in self.host:
            import socket

            class _Server6(_Server):
                address_family = socket.AF_INET6
            cls = _Server6
        srv = cls((self.host, self.requested_port), _Handler)
        srv.owner = self
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="agent-api", daemon=True)
        self._thread.start()
        log.info("agent API listening on %s://%s authentication=%s", "https" if self.ssl_context else "http",
                 self.endpoint, "client-certificates" if self.auth else "none")
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        port = int(srv.server_address[1])
        srv.shutdown()
        srv.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.requested_port = port


class _HealthzHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HealthzHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("healthz request %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if urlsplit(self.path).path != "/healthz":
            code, text = 404, "only /healthz is served here"
        else:
            ok = self.server.healthy()
            code, text = (200, "ok") if ok else (500, "unhealthy")
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HealthzHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    healthy: Callable[[], bool]


class HealthzServer:
    """Upstream's healthz endpoint (--healthz-bind-address:--healthz-port, 127.0.0.1:10248): plain HTTP,
    unauthenticated, GET /healthz only. start() raises OSError when the address cannot be bound."""

    def __init__(self, listen: str, healthy: Callable[[], bool]) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"the healthz address must be HOST:PORT, got {listen!r}")
        self.host = host.strip("[]") or "127.0.0.1"
        self.requested_port = int(port)
        self.healthy = healthy
        self._server: _HealthzHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.requested_port if self._server is None else int(self._server.server_address[1])

    def start(self) -> HealthzServer:
        cls = _HealthzHTTPServer
        if ":" in self.host:
            class _Healthz6(_HealthzHTTPServer):
                address_family = socket.AF_INET6
            cls = _Healthz6
        srv = cls((self.host, self.requested_port), _HealthzHandler)
        srv.healthy = self.healthy
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-healthz", daemon=True)
        self._thread.start()
        log.info("healthz listening on http://%s:%d/healthz", self.host, self.port)
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
