"""Liveness, readiness and startup probes: one scheduler thread for all of them.

run_probe() runs one probe once: exec (through the caller's exec_fn), httpGet
and tcpSocket (from the node's network namespace when `node_netns` is given:
the socket is made there by cni.nsfd.netns_socket, no thread of ours ever
enters it), grpc (unsupported: always a failure that says so).

ProbeManager keeps every probe of the node in one heap of due times, served by
one scheduler thread; the probes themselves run on a small thread pool so a
slow one (up to its timeoutSeconds) does not delay the others.  The counting
is upstream's (pkg/kubelet/prober/worker.go):

* results start as: readiness False, liveness True, startup "unknown"
  (result() says False until it succeeds);
* nothing runs before initialDelaySeconds after the container started;
* liveness and readiness wait until the container's startup probe succeeded;
  a succeeded startup probe is not run again;
* a result needs successThreshold consecutive successes or failureThreshold
  consecutive failures before it flips; on_change(pod_uid, container, kind,
  new_result) is called on a flip (from a pool thread);
* after a liveness or startup failure the probe holds until the caller
  removes and re-adds it (the container is restarted: a new container).

Periods and delays may be fractions of a second (the API only allows whole
seconds; tests use fractions).
"""

from __future__ import annotations

import copy
import heapq
import http.client
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent.errors import ProbeError

__all__ = ["ProbeResult", "ProbeManager", "run_probe", "resolve_named_ports", "KINDS"]

log = logging.getLogger(__name__)

ExecFn = Callable[[list[str], float], tuple[int, str]]
KINDS = ("liveness", "readiness", "startup")
USER_AGENT = "kube-probe/1.32"
_MAX_BODY = 10 * 1024


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    message: str = ""


# ---------------------------------------------------------------- one probe


def resolve_named_ports(probe: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """A copy of `probe` whose httpGet/tcpSocket/grpc port names are the container's port numbers."""
    out = copy.deepcopy(probe)
    for handler in ("httpGet", "tcpSocket"):
        h = out.get(handler)
        if isinstance(h, dict) and isinstance(h.get("port"), str) and not h["port"].isdigit():
            for p in container.get("ports") or []:
                if isinstance(p, dict) and p.get("name") == h["port"]:
                    h["port"] = int(p.get("containerPort") or 0)
                    break
            else:
                raise ProbeError(f"couldn't find port: {h['port']} in {container.get('name')}")
    return out


def _port(handler: dict[str, Any]) -> int:
    raw = handler.get("port")
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not str(raw).isdigit():
        raise ProbeError(f"port {raw!r} must be a number (named ports are resolved by the caller)")
    port = int(raw)
    if not 0 < port < 65536:
        raise ProbeError(f"invalid port number: {port}")
    return port


def _connect(host: str, port: int, timeout: float, node_netns: str | None) -> socket.socket:
    """A TCP connection to host:port, made from `node_netns` when given."""
    if node_netns is None:
        return socket.create_connection((host, port), timeout=timeout)
    from cni.nsfd import netns_socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    path = node_netns if "/" in node_netns else f"/var/run/netns/{node_netns}"  # a name, as `ip netns` makes
    raw = netns_socket(path, family, socket.SOCK_STREAM, 0)
    sock = socket.socket(family, socket.SOCK_STREAM, 0, fileno=raw.detach())
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, node_netns: str | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self._node_netns = node_netns

    def connect(self) -> None:
        self.sock = _connect(self.host, self.port, float(self.timeout or 1), self._node_netns)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS without certificate verification, as upstream's prober (InsecureSkipVerify)."""

    def __init__(self, host: str, port: int, timeout: float, node_netns: str | None) -> None:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._node_netns = node_netns
        self._ctx = ctx

    def connect(self) -> None:
        sock = _connect(self.host, self.port, float(self.timeout or 1), self._node_netns)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def _dial_error(host: str, port: int, e: OSError) -> str:
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"dial tcp {addr}: i/o timeout"
    return f"dial tcp {addr}: connect: {(e.strerror or str(e)).lower()}"


def _http_probe(h: dict[str, Any], pod_ip: str, node_netns: str | None, timeout: float) -> ProbeResult:
    host = str(h.get("host") or pod_ip)
    port = _port(h)
    scheme = str(h.get("scheme") or "HTTP").upper()
    path = str(h.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    url_host = f"[{host}]" if ":" in host else host
    url = f"{scheme.lower()}://{url_host}:{port}{path}"
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
    for hdr in h.get("httpHeaders") or []:
        if isinstance(hdr, dict) and hdr.get("name"):
            headers[str(hdr["name"])] = str(hdr.get("value") or "")
    if scheme not in ("HTTP", "HTTPS"):
        return ProbeResult(False, f"unsupported scheme {scheme!r}")
    conn_type = _HTTPSConnection if scheme == "HTTPS" else _HTTPConnection
    conn = conn_type(host, port, timeout, node_netns)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(_MAX_BODY).decode("utf-8", errors="replace")
    except OSError as e:
        detail = _dial_error(host, port, e) if conn.sock is None else str(e) or type(e).__name__
        return ProbeResult(False, f'Get "{url}": {detail}')
    except http.client.HTTPException as e:
        return ProbeResult(False, f'Get "{url}": {type(e).__name__}: {e}')
    finally:
        conn.close()
    if 200 <= resp.status < 400:
        return ProbeResult(True, body if resp.status < 300 else f"Probe terminated redirects, Response body: {body}")
    return ProbeResult(False, f"HTTP probe failed with statuscode: {resp.status}")


def _tcp_probe(t: dict[str, Any], pod_ip: str, node_netns: str | None, timeout: float) -> ProbeResult:
    host = str(t.get("host") or pod_ip)
    port = _port(t)
    try:
        _connect(host, port, timeout, node_netns).close()
    except OSError as e:
        return ProbeResult(False, _dial_error(host, port, e))
    return ProbeResult(True, "")


def run_probe(probe: dict[str, Any], *, pod_ip: str, node_netns: str | None, exec_fn: ExecFn) -> ProbeResult:
    """Run `probe` (a container's livenessProbe/readinessProbe/startupProbe) once."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if isinstance(probe.get("exec"), dict):
            cmd = [str(a) for a in probe["exec"].get("command") or []]
            if not cmd:
                return ProbeResult(False, "exec probe has no command")
            try:
                code, output = exec_fn(cmd, timeout)
            except TimeoutError:
                return ProbeResult(False, f"command {cmd!r} timed out after {timeout:g}s")
            return ProbeResult(code == 0, output if code == 0 else (output or f"command exited with {code}"))
        if isinstance(probe.get("httpGet"), dict):
            return _http_probe(probe["httpGet"], pod_ip, node_netns, timeout)
        if isinstance(probe.get("tcpSocket"), dict):
            return _tcp_probe(probe["tcpSocket"], pod_ip, node_netns, timeout)
        if isinstance(probe.get("grpc"), dict):
            return ProbeResult(False, "grpc probes are not supported by kubeling (use exec, httpGet or tcpSocket)")
    except ProbeError as e:
        return ProbeResult(False, str(e))
    except OSError as e:  # e.g. the node namespace is gone
        return ProbeResult(False, f"probe error: {e}")
    return ProbeResult(False, "probe has no handler (exec, httpGet, tcpSocket)")


# ---------------------------------------------------------------- the manager


@dataclass
class ProbeState:
    """One probe's counters: the pure part of upstream's worker (record() is doProbe's tail)."""

    kind: str
    success_threshold: int = 1
    failure_threshold: int = 3
    result: bool | None = None  # None: unknown (startup before its first decision)
    last: bool | None = None
    run: int = 0
    on_hold: bool = False
    message: str = ""

    def __post_init__(self) -> None:
        if self.result is None:
            self.result = {"liveness": True, "readiness": False}.get(self.kind)

    def record(self, success: bool) -> bool | None:
        """Count one result; the new result when it flipped, else None."""
        if self.last == success:
            self.run += 1
        else:
            self.last, self.run = success, 1
        if (not success and self.run < self.failure_threshold) or (success and self.run < self.success_threshold):
            return None
        changed = self.result != success
        self.result = success
        if not success and self.kind in ("liveness", "startup"):
            self.on_hold, self.run = True, 0  # wait for the restart (remove + add)
        return success if changed else None

    @property
    def done(self) -> bool:
        """Nothing more to run: held after a failure, or a startup probe that succeeded."""
        return self.on_hold or (self.kind == "startup" and self.result is True)


@dataclass(eq=False)
class _Worker:
    key: tuple[str, str, str]
    probe: dict[str, Any]
    pod_ip: str
    node_netns: str | None
    exec_fn: ExecFn
    period: float
    state: ProbeState
    token: int = 0
    running: bool = False
    removed: bool = False
    not_before: float = 0.0  # monotonic time initialDelaySeconds ends


def _num(v: Any, default: float, minimum: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return max(f, minimum)


def _ignore(pod_uid: str, container: str, kind: str, result: bool) -> None:
    pass


class ProbeManager:
    """All probes of the node: one scheduler thread, a heap of due probes, a small pool running them."""

    def __init__(self, run: Callable[..., ProbeResult] = run_probe,
                 on_change: Callable[[str, str, str, bool], None] = _ignore, *, workers: int = 4) -> None:
        self._run = run
        self._on_change = on_change
        self._workers: dict[tuple[str, str, str], _Worker] = {}
        self._heap: list[tuple[float, int, int, _Worker]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")

    # -- public

    def add(self, pod_uid: str, container_name: str, kind: str, probe: dict[str, Any], *, pod_ip: str,
            node_netns: str | None, exec_fn: ExecFn, started_at: float) -> None:
        """Start probing (replacing any probe of that kind); `started_at` is the container's start (time.time())."""
        if kind not in KINDS:
            raise ValueError(f"probe kind must be one of {KINDS}, not {kind!r}")
        state = ProbeState(kind, success_threshold=int(_num(probe.get("successThreshold"), 1, 1)),
                           failure_threshold=int(_num(probe.get("failureThreshold"), 3, 1)))
        w = _Worker((pod_uid, container_name, kind), probe, pod_ip, node_netns, exec_fn,
                    _num(probe.get("periodSeconds"), 10, 0.001), state)
        delay = started_at + _num(probe.get("initialDelaySeconds"), 0, 0) - time.time()
        with self._cond:
            if self._closed:
                raise RuntimeError("ProbeManager is closed")
            old = self._workers.pop(w.key, None)
            if old is not None:
                old.removed = True
            self._workers[w.key] = w
            w.not_before = time.monotonic() + max(delay, 0.0)
            self._push(w, w.not_before)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="probe-scheduler", daemon=True)
                self._thread.start()

    def remove(self, pod_uid: str, container_name: str | None = None) -> None:
        """Stop the probes of a container (or of every container of the pod)."""
        with self._cond:
            for key in [k for k in self._workers if k[0] == pod_uid and container_name in (None, k[1])]:
                self._workers.pop(key).removed = True
            self._cond.notify()

    def result(self, pod_uid: str, container_name: str, kind: str) -> bool | None:
        """The current result; None when no such probe is registered."""
        with self._cond:
            w = self._workers.get((pod_uid, container_name, kind))
            return None if w is None else bool(w.state.result)

    def message(self, pod_uid: str, container_name: str, kind: str) -> str:
        """The message of the probe's last run ("" if none), for events like "Liveness probe failed: ..."."""
        with self._cond:
            w = self._workers.get((pod_uid, container_name, kind))
            return "" if w is None else w.state.message

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._workers.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- scheduling

    def _push(self, w: _Worker, due: float) -> None:
        """Schedule w at `due` (caller holds the lock); older heap entries of w become stale."""
        w.token += 1
        heapq.heappush(self._heap, (due, next(self._seq), w.token, w))
        self._cond.notify()

    def _gated(self, w: _Worker) -> bool:
        """Liveness/readiness wait for the container's startup probe (if any) to succeed."""
        if w.state.kind == "startup":
            return False
        startup = self._workers.get((w.key[0], w.key[1], "startup"))
        return startup is not None and startup.state.result is not True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                _due, _seq, token, w = heapq.heappop(self._heap)
                if w.removed or token != w.token or w.running or w.state.done:
                    continue
                if self._gated(w):
                    self._push(w, now + w.period)
                    continue
                w.running = True
            try:
                self._pool.submit(self._probe_once, w)
            except RuntimeError:  # pool shut down by close()
                return

    def _probe_once(self, w: _Worker) -> None:
        started = time.monotonic()
        try:
            res = self._run(w.probe, pod_ip=w.pod_ip, node_netns=w.node_netns, exec_fn=w.exec_fn)
        except Exception as e:  # a broken runner must not stop the probes of the node
            log.exception("probe %s failed to run", w.key)
            res = ProbeResult(False, f"probe error: {e}")
        with self._cond:
            w.running = False
            if w.removed:
                return
            w.state.message = res.message
            flipped = w.state.record(res.success)
            if not w.state.done:
                self._push(w, max(started + w.period, time.monotonic()))
            if w.state.kind == "startup" and w.state.result is True:
                for kind in ("liveness", "readiness"):  # ungate them now rather than a period later
                    sibling = self._workers.get((w.key[0], w.key[1], kind))
                    if sibling is not None and not sibling.running:
                        self._push(sibling, max(time.monotonic(), sibling.not_before))
        if flipped is not None:
            try:
                self._on_change(*w.key, flipped)
            except Exception:
                log.exception("probe on_change callback failed for %s", w.key)
