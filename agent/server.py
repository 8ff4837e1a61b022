"""The agent's own HTTP API (upstream kubelet's :10250 server), plain HTTP for now.

    srv = AgentServer("127.0.0.1:10250", pods=lambda: cache.pods(), logs=runtime.logs)
    srv.start()                 # a ThreadingHTTPServer in a daemon thread; srv.port is the bound port
    srv.stop()

Interface (used by agent/agent.py, and by the apiserver for ``kubectl logs``):

- ``AgentServer(listen, *, pods, logs, healthy=lambda: True)``; ``listen`` is "HOST:PORT" (port 0
  picks a free one: read ``.port`` / ``.endpoint`` after start()).
- ``pods() -> list[dict]``: the v1 Pods the agent runs.
- ``logs(namespace, pod, container, *, follow, tail_lines, timestamps, previous, since_seconds,
  limit_bytes) -> Iterator[bytes]``: the container's log bytes. ``tail_lines``, ``since_seconds``,
  ``limit_bytes`` are int or None. It raises LookupError (KeyError) for an unknown pod or container
  and ValueError for a container that has no log to show (e.g. "waiting to start"), either when
  called or from its first next(): the server pulls the first chunk before it answers, so it can
  still answer 404/400. With follow it yields as the container writes, and it is closed (close())
  when the client goes away.

Routes:

    GET /healthz                         "ok" (500 "unhealthy" when healthy() says no)
    GET /pods                            a v1 PodList
    GET /containerLogs/NS/POD/CONTAINER  ?follow=&tailLines=&timestamps=&previous=&sinceSeconds=&limitBytes=
                                         text/plain, chunked; 400 bad parameters, 404 unknown pod/container

Errors are text/plain one-liners saying what was wrong.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("kubeling.agent.server")

LogsFn = Callable[..., Iterator[bytes]]
BOOL_TRUE = ("true", "1", "yes", "")
BOOL_FALSE = ("false", "0", "no")


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
        log.debug("request %s %s", self.address_string(), format % args)

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
        try:
            if path == "/healthz":
                ok = self.server.owner.healthy()
                self._text(200 if ok else 500, "ok" if ok else "unhealthy")
            elif path == "/metrics" and self.server.owner.metrics is not None:
                self._send(200, self.server.owner.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/pods":
                body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.server.owner.pods()}
                self._send(200, json.dumps(body).encode(), "application/json")
            elif path.startswith("/containerLogs/"):
                parts = [unquote(p) for p in path[len("/containerLogs/"):].split("/")]
                if len(parts) != 3 or not all(parts):
                    self._text(404, f"{path}: use /containerLogs/NAMESPACE/POD/CONTAINER")
                    return
                params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                self._logs(parts[0], parts[1], parts[2], params)
            else:
                self._text(404, f"{path} not found: the agent serves /healthz, /metrics, /pods and /containerLogs/NS/POD/C")
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
        self._text(405, "only GET is served")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD  # noqa: N815

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


class AgentServer:
    """The agent API (see the module docstring)."""

    def __init__(self, listen: str = "127.0.0.1:10250", *, pods: Callable[[], list[dict[str, Any]]],
                 logs: LogsFn, healthy: Callable[[], bool] = lambda: True,
                 metrics: Callable[[], bytes] | None = None) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"the agent API listen address must be HOST:PORT, got {listen!r}")
        self.host = host.strip("[]") or "127.0.0.1"
        self.requested_port = int(port)
        self.pods = pods
        self.logs = logs
        self.healthy = healthy
        self.metrics = metrics  # the Prometheus text of GET /metrics
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
        log.info("agent API listening on http://%s", self.endpoint)
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
