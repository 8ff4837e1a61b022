#!/usr/bin/env python3
"""Benchmark of the kubeling apiserver over HTTP, with a raw SQLite baseline.

Starts `kubeling apiserver` as a subprocess on a free 127.0.0.1 port with a data
dir in a fresh temp dir, drives it with httpx clients from this process, and
prints a table of figures, each next to its target (OK/MISS):

  1. creates/s and create latency p50/p99: 1 sequential keep-alive client, and
     N concurrent clients (threads, one httpx.Client each);
  2. mutating latency at a paced 20 writes/s (creates and updates alternating);
  3. watch delivery latency: send->seen and response->seen, per event;
  4. list latency for a namespace of 10,000 pods: full JSON, as a
     meta.k8s.io Table (what `kubectl get` asks for), and paginated (limit=500);
  5. the baseline: raw sqlite3 durable inserts (WAL, synchronous=FULL, one
     transaction per insert) of a stored pod's bytes, in the same temp dir;
     ratios apiserver creates/s / raw inserts/s.

Latencies include the client (httpx in this process, sharing the machine's
cores with the server). Server CPU seconds per phase come from /proc/PID/stat.

    .venv/bin/python bench/apiserver.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

try:
    from bench._util import Figure, fmt_number, format_table, percentile, progress
except ImportError:  # run as a script: bench/ itself is on sys.path
    from _util import Figure, fmt_number, format_table, percentile, progress  # type: ignore[no-redef]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_CT = {"Content-Type": "application/json"}
TABLE_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
                "application/json")
WRITE_TIMEOUT = httpx.Timeout(10.0)
LIST_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

# targets
PACED_P99_MS = 50.0
WATCH_P99_MS = 20.0
LIST_FULL_S = 1.0
RATIO_MIN = 0.3


@dataclass
class Sizes:
    single: int
    single_s: float
    concurrent: int
    concurrent_s: float
    paced_s: float
    watch_s: float
    list_pods: int
    list_fill_s: float
    list_reps: int
    page_reps: int
    baseline: int
    baseline_s: float


FULL = Sizes(single=3000, single_s=15, concurrent=5000, concurrent_s=15, paced_s=10, watch_s=10, list_pods=10_000,
             list_fill_s=100, list_reps=10, page_reps=3, baseline=5000, baseline_s=10)
QUICK = Sizes(single=1000, single_s=4, concurrent=2000, concurrent_s=4, paced_s=4, watch_s=4, list_pods=2000,
              list_fill_s=15, list_reps=5, page_reps=2, baseline=2000, baseline_s=3)


class BenchError(Exception):
    """The benchmark could not go on; the message says why."""


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def configmap(name: str, value: str = "v") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}}


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- the server process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_server_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "kubeling")
    if os.access(exe, os.X_OK):
        return [exe]
    found = shutil.which("kubeling")
    if found:
        return [found]
    raise BenchError("no `kubeling` command next to this python or on PATH: install the project "
                     "(pip install -e .) or pass --server-cmd")


class Server:
    def __init__(self, cmd: list[str], data_dir: str, log_path: str, store: str = "") -> None:
        self.cmd, self.data_dir, self.log_path = cmd, data_dir, log_path
        self.store = store  # --store URL for the apiserver ("" = its default SQLite)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self._log = open(self.log_path, "ab")  # closed in stop()
            # plain HTTP: these figures are the store and HTTP stack's, without TLS and authentication
            argv = [*self.cmd, "apiserver", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
                    "--insecure-serving"]
            if self.store:
                argv += ["--store", self.store]
            progress(f"starting {' '.join(shlex.quote(a) for a in argv)}")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                         cwd=REPO)
            if self._wait_ready(timeout):
                progress(f"apiserver ready pid={self.proc.pid} port={self.port}")
                return
            rc = self.proc.poll()
            tail = self.log_tail()
            self.stop()
            if rc is not None and "already in use" in tail and attempt < 2:
                continue
            why = f"exited with code {rc} before it was ready" if rc is not None else \
                f"was not ready after {timeout:.0f}s"
            raise BenchError(f"the apiserver {why}; the end of its log:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=httpx.Timeout(2.0)) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if c.get(f"{self.base}/readyz").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        return False

    def cpu_seconds(self) -> float:
        """user+system CPU time of the server process so far (nan if unknown)."""
        if self.proc is None:
            return float("nan")
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to our child's PID: graceful shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


FLOOR_APP = """
import sys, uvicorn
BODY = b'{"kind":"Pod","pad":"' + b"a" * 880 + b'"}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    code = 201 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": code, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, lifespan="off",
            loop="uvloop", http="httptools")
"""


class FloorServer(Server):
    """A no-op ASGI app on the apiserver's HTTP stack (uvicorn, httptools, uvloop): the HTTP + client floor."""

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(self.port)], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, cwd=REPO)
        if not self._wait_ready(timeout):
            tail = self.log_tail()
            self.stop()
            raise BenchError(f"the no-op floor server did not start; its log:\n{tail}")


# -- load generators -------------------------------------------------------------------


@dataclass
class RunResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    wall: float = 0.0
    errors: int = 0
    first_error: str = ""
    bodies: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall > 0 else float("nan")


def _post_create(c: httpx.Client, path: str, body: bytes, res: RunResult, keep_body: bool = False) -> None:
    t0 = time.perf_counter()
    try:
        r = c.post(path, content=body, headers=JSON_CT)
    except httpx.HTTPError as e:
        res.errors += 1
        res.first_error = res.first_error or f"{type(e).__name__}: {e}"
        return
    dt = time.perf_counter() - t0
    if r.status_code == 201:
        res.latencies.append(dt)
        if keep_body:
            res.bodies.append(r.content)
    else:
        res.errors += 1
        res.first_error = res.first_error or f"HTTP {r.status_code}: {r.text[:300]}"


def create_sequential(base: str, ns: str, prefix: str, n: int, max_s: float) -> RunResult:
    res = RunResult()
    path = f"/api/v1/namespaces/{ns}/pods"
    with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
        t_start = time.perf_counter()
        deadline = t_start + max_s
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            _post_create(c, path, orjson.dumps(pod(f"{prefix}-{i}")), res)
            if res.errors > 20 and not res.ok:
                break
        res.wall = time.perf_counter() - t_start
    return res


def create_concurrent(base: str, ns: str, prefix: str, n: int, clients: int, max_s: float,
                      label: str = "") -> RunResult:
    """n creates spread over `clients` threads, each with its own keep-alive httpx.Client."""
    path = f"/api/v1/namespaces/{ns}/pods"
    counter = itertools.count()
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    results = [RunResult() for _ in range(clients)]
    stop = threading.Event()
    t_bounds: list[float] = []

    def worker(res: RunResult) -> None:
        with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
            c.get("/readyz")  # open the connection before the clock starts
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                return
            while not stop.is_set():
                with lock:
                    i = next(counter)
                if i >= n:
                    break
                _post_create(c, path, orjson.dumps(pod(f"{prefix}-{i}")), res)
                if res.errors > 20 and not res.ok:
                    stop.set()
            with lock:
                t_bounds.append(time.perf_counter())

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in results]
    for t in threads:
        t.start()
    try:
        barrier.wait(30)
    except threading.BrokenBarrierError:
        stop.set()
        raise BenchError("the client threads did not get ready in 30s") from None
    t_start = time.perf_counter()
    deadline = t_start + max_s
    next_report = t_start + 2.0
    while any(t.is_alive() for t in threads):
        now = time.perf_counter()
        if now > deadline:
            stop.set()
        if now > deadline + 15:
            break  # a thread is stuck in a request; its timeout will end it
        if label and now >= next_report:
            done = sum(r.ok for r in results)
            progress(f"  {label}: {done}/{n} created ({done / (now - t_start):.0f}/s)")
            next_report = now + 2.0
        time.sleep(0.05)
    stop.set()
    end = max(t_bounds) if t_bounds else time.perf_counter()
    out = RunResult(wall=end - t_start)
    for r in results:
        out.latencies.extend(r.latencies)
        out.errors += r.errors
        out.first_error = out.first_error or r.first_error
    return out


def create_namespace(c: httpx.Client, name: str) -> None:
    r = c.post("/api/v1/namespaces", content=orjson.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}), headers=JSON_CT)
    if r.status_code not in (201, 409):
        raise BenchError(f"cannot create namespace {name}: HTTP {r.status_code}: {r.text[:300]}")


@dataclass
class PacedResult:
    create: list[float] = field(default_factory=list)
    update: list[float] = field(default_factory=list)
    late: int = 0  # writes sent more than 5 ms after their slot
    errors: int = 0
    first_error: str = ""


def paced_writes(base: str, ns: str, rate: float, seconds: float) -> PacedResult:
    """Alternate create of cm-K and update (PUT, with resourceVersion) of cm-K, one every 1/rate s."""
    res = PacedResult()
    interval = 1.0 / rate
    n = int(rate * seconds)
    last_obj: dict[str, Any] | None = None
    with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
        c.get("/readyz")
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            slot = t0 + i * interval
            delay = slot - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.005:
                res.late += 1
            if i % 2 == 0 or last_obj is None:
                name = f"cm-{i}"
                method, path, body, sink = "POST", f"/api/v1/namespaces/{ns}/configmaps", configmap(name), res.create
            else:
                name = last_obj["metadata"]["name"]
                body = last_obj
                body["data"] = {"k": f"v{i}"}
                method, path, sink = "PUT", f"/api/v1/namespaces/{ns}/configmaps/{name}", res.update
            t1 = time.perf_counter()
            try:
                r = c.request(method, path, content=orjson.dumps(body), headers=JSON_CT)
            except httpx.HTTPError as e:
                res.errors += 1
                res.first_error = res.first_error or f"{type(e).__name__}: {e}"
                last_obj = None
                continue
            dt = time.perf_counter() - t1
            if r.status_code in (200, 201):
                sink.append(dt)
                last_obj = r.json() if method == "POST" else None
            else:
                res.errors += 1
                res.first_error = res.first_error or f"{method} HTTP {r.status_code}: {r.text[:300]}"
                last_obj = None
    return res


# -- watch -------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Streams a watch and records when each ADDED object's name was first parsed."""

    def __init__(self, base: str, ns: str, rv: str, timeout_s: float) -> None:
        super().__init__(daemon=True, name="watcher")
        self.url = f"{base}/api/v1/namespaces/{ns}/configmaps"
        self.params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": str(int(timeout_s))}
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.expected: int | None = None  # set by the writer when it is done
        self.error = ""
        self.finished = False

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10.0, read=5.0)) as c, \
                    c.stream("GET", self.url, params=self.params) as r:
                if r.status_code != 200:
                    self.error = f"watch: HTTP {r.status_code}: {r.read()[:300]!r}"
                    return
                self.ready.set()
                for line in r.iter_lines():
                    t = time.perf_counter()
                    if not line:
                        continue
                    ev = orjson.loads(line)
                    if ev.get("type") == "ERROR":
                        self.error = f"watch: ERROR event {ev.get('object')}"
                        return
                    if ev.get("type") == "ADDED":
                        self.seen.setdefault(ev["object"]["metadata"]["name"], t)
                    if self.expected is not None and len(self.seen) >= self.expected:
                        return
        except httpx.ReadTimeout:
            if self.expected is None:
                self.error = "watch: no data for 5s while the writer was still writing"
        except Exception as e:  # reported in the figures, never lost
            self.error = f"watch: {type(e).__name__}: {e}"
        finally:
            self.finished = True
            self.ready.set()


@dataclass
class WatchResult:
    send_to_seen: list[float] = field(default_factory=list)
    resp_to_seen: list[float] = field(default_factory=list)
    written: int = 0
    missing: int = 0
    error: str = ""


def watch_latency(base: str, ns: str, rate: float, seconds: float) -> WatchResult:
    out = WatchResult()
    with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
        create_namespace(c, ns)
        r = c.get(f"/api/v1/namespaces/{ns}/configmaps")
        if r.status_code != 200:
            raise BenchError(f"list configmaps in {ns}: HTTP {r.status_code}: {r.text[:300]}")
        rv = r.json()["metadata"]["resourceVersion"]
        w = Watcher(base, ns, rv, timeout_s=seconds + 60)
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # the watcher thread should not wait 5 ms for this thread's GIL slice
        try:
            w.start()
            if not w.ready.wait(10) or w.error:
                raise BenchError(w.error or "the watch did not start in 10s")
            # warm-up: one object, seen end to end, before the clock runs
            warm = c.post(f"/api/v1/namespaces/{ns}/configmaps", content=orjson.dumps(configmap("warm")),
                          headers=JSON_CT)
            if warm.status_code != 201:
                raise BenchError(f"create configmap: HTTP {warm.status_code}: {warm.text[:300]}")
            deadline = time.monotonic() + 5
            while "warm" not in w.seen and time.monotonic() < deadline and not w.finished:
                time.sleep(0.005)
            if "warm" not in w.seen:
                raise BenchError(w.error or "the watcher did not see the warm-up object in 5s")
            sends: dict[str, tuple[float, float]] = {}
            interval = 1.0 / rate
            n = int(rate * seconds)
            t0 = time.perf_counter() + 0.02
            for i in range(n):
                delay = t0 + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                name = f"w-{i}"
                t_send = time.perf_counter()
                try:
                    r = c.post(f"/api/v1/namespaces/{ns}/configmaps", content=orjson.dumps(configmap(name)),
                               headers=JSON_CT)
                except httpx.HTTPError as e:
                    out.error = out.error or f"create: {type(e).__name__}: {e}"
                    continue
                t_resp = time.perf_counter()
                if r.status_code == 201:
                    sends[name] = (t_send, t_resp)
                else:
                    out.error = out.error or f"create: HTTP {r.status_code}: {r.text[:300]}"
            out.written = len(sends)
            w.expected = len(sends) + 2  # + warm + end
            # one more object wakes a watcher blocked in its read, so it can see it is done
            c.post(f"/api/v1/namespaces/{ns}/configmaps", content=orjson.dumps(configmap("end")), headers=JSON_CT)
            deadline = time.monotonic() + 5
            while not w.finished and time.monotonic() < deadline and not all(k in w.seen for k in sends):
                time.sleep(0.01)
        finally:
            sys.setswitchinterval(old_switch)
        w.join(8)
        seen = dict(w.seen)
        for name, (t_send, t_resp) in sends.items():
            t_seen = seen.get(name)
            if t_seen is None:
                out.missing += 1
                continue
            out.send_to_seen.append(t_seen - t_send)
            out.resp_to_seen.append(t_seen - t_resp)
        out.error = out.error or w.error
    return out


# -- list --------------------------------------------------------------------------------


@dataclass
class ListResult:
    times: list[float] = field(default_factory=list)
    nbytes: int = 0
    items: int = 0
    pages: int = 0


def time_list(base: str, ns: str, reps: int, accept: str | None = None) -> ListResult:
    out = ListResult()
    headers = {"Accept": accept} if accept else {}
    with httpx.Client(base_url=base, timeout=LIST_TIMEOUT) as c:
        c.get("/readyz")
        for _ in range(reps):
            t0 = time.perf_counter()
            r = c.get(f"/api/v1/namespaces/{ns}/pods", headers=headers)
            body = r.content
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                raise BenchError(f"list pods: HTTP {r.status_code}: {r.text[:300]}")
            out.times.append(dt)
            out.nbytes = len(body)
            doc = orjson.loads(body)
            out.items = len(doc.get("rows" if doc.get("kind") == "Table" else "items") or [])
            out.pages = 1
    return out


def time_paginated(base: str, ns: str, reps: int, limit: int, expect: int) -> ListResult:
    out = ListResult()
    max_pages = expect // limit + 5
    with httpx.Client(base_url=base, timeout=LIST_TIMEOUT) as c:
        c.get("/readyz")
        for _ in range(reps):
            items = pages = nbytes = 0
            cont = ""
            t0 = time.perf_counter()
            while pages < max_pages:
                params = {"limit": str(limit)}
                if cont:
                    params["continue"] = cont
                r = c.get(f"/api/v1/namespaces/{ns}/pods", params=params)
                if r.status_code != 200:
                    raise BenchError(f"list pods (page {pages + 1}): HTTP {r.status_code}: {r.text[:300]}")
                doc = orjson.loads(r.content)
                pages += 1
                nbytes += len(r.content)
                items += len(doc.get("items") or [])
                cont = (doc.get("metadata") or {}).get("continue") or ""
                if not cont:
                    break
            out.times.append(time.perf_counter() - t0)
            out.items, out.pages, out.nbytes = items, pages, nbytes
    return out


# -- baseline ----------------------------------------------------------------------------


def raw_sqlite_inserts(path: str, blob: bytes, n: int, max_s: float, like_store: bool = False) -> tuple[int, float]:
    """Durable inserts, one transaction each, committed one by one: (count, seconds).

    like_store also does what the store's writer does per write besides the
    insert: look the key up, insert an event row, bump the revision."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, "
                     "mod_rev INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE TABLE events (rev INTEGER PRIMARY KEY, key TEXT NOT NULL, type TEXT NOT NULL, "
                     "value BLOB NOT NULL)")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('revision', 0)")
        t0 = time.perf_counter()
        deadline = t0 + max_s
        done = 0
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            key = f"/registry/pods/default/raw-{i}"
            rev = i + 1
            conn.execute("BEGIN IMMEDIATE")
            if like_store:
                conn.execute("SELECT value, create_rev, mod_rev FROM kv WHERE key=?", (key,)).fetchone()
            conn.execute("INSERT INTO kv VALUES (?,?,?,?)", (key, blob, rev, rev))
            if like_store:
                conn.execute("INSERT INTO events VALUES (?,?,?,?)", (rev, key, "ADDED", blob))
                conn.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
            conn.execute("COMMIT")
            done += 1
        return done, time.perf_counter() - t0
    finally:
        conn.close()


def etcd_put_rates(url: str, blob: bytes, n: int, max_s: float, inflight: int) -> dict[str, tuple[int, float]]:
    """Durable creates on the etcd at `url`, from this process, `inflight` at a time:
    "raw": a bare Put per key through aetcd's generated stubs on one grpc.aio channel (the
    etcdctl-style put loop from the same client library); "store": EtcdStore.create (a txn:
    create_revision == 0 -> put). Each under its own key prefix. {what: (count, seconds)}."""
    import asyncio

    import grpc
    from aetcd import rpc

    sys.path.insert(0, REPO)
    from apiserver.store.etcd import EtcdStore, parse_etcd_url

    opts = parse_etcd_url(url)
    if opts.tls or opts.extra.get("tls"):
        raise BenchError("the etcd baseline speaks plain gRPC only; the store URL asks for TLS")
    host, port = opts.endpoints[0]
    run_id = f"{os.getpid()}-{int(time.time())}"

    async def loop(put: Any) -> tuple[int, float]:
        counter = itertools.count()
        t0 = time.perf_counter()
        deadline = t0 + max_s
        done = 0

        async def worker() -> None:
            nonlocal done
            while (i := next(counter)) < n and time.perf_counter() < deadline:
                await put(i)
                done += 1

        for i in range(20):  # warm-up: the connection and the code paths, off the clock
            await put(-1 - i)
        t0 = time.perf_counter()
        deadline = t0 + max_s
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return done, time.perf_counter() - t0

    async def main() -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        channel = grpc.aio.insecure_channel(f"{host}:{port}")
        try:
            kv = rpc.KVStub(channel)
            raw_prefix = f"/kubeling-bench-raw/{run_id}/"

            async def raw_put(i: int) -> None:
                await kv.Put(rpc.PutRequest(key=f"{raw_prefix}{i}".encode(), value=blob), timeout=10)

            out["raw"] = await loop(raw_put)
        finally:
            await channel.close()
        store = EtcdStore(parse_etcd_url(f"etcd://{host}:{port}?prefix=/kubeling-bench-store/{run_id}"))
        try:
            await store.connect()

            async def store_put(i: int) -> None:
                await store.create(f"/registry/pods/default/raw-{i}", blob)

            out["store"] = await loop(store_put)
        finally:
            await store.close()
        return out

    return asyncio.run(main())


# -- the run -----------------------------------------------------------------------------


class Bench:
    def __init__(self, server: Server, sizes: Sizes, clients: int, tmp: str, floor: bool = True,
                 etcd_url: str = "") -> None:
        self.server, self.sizes, self.clients, self.tmp, self.floor = server, sizes, clients, tmp, floor
        self.etcd_url = etcd_url  # the store is this etcd: measure the etcd baseline on it too
        self.figures: list[Figure] = []
        self.notes: list[str] = []

    def fig(self, section: str, name: str, value: float, unit: str = "", op: str = "", target: float | None = None,
            note: str = "") -> None:
        self.figures.append(Figure(section, name, value, unit, op, target, note))

    def latency_figs(self, section: str, what: str, lat: list[float], target_p99_ms: float | None = None) -> None:
        self.fig(section, f"{what} p50", ms(percentile(lat, 50)), "ms")
        self.fig(section, f"{what} p99", ms(percentile(lat, 99)), "ms", "<=" if target_p99_ms else "",
                 target_p99_ms)
        self.fig(section, f"{what} max", ms(max(lat)) if lat else float("nan"), "ms")

    def cpu_fig(self, section: str, cpu0: float, count: int, what: str = "request") -> None:
        used = self.server.cpu_seconds() - cpu0
        if count:
            self.fig(section, f"server CPU per {what}", ms(used / count), "ms")

    def client_cpu_fig(self, section: str, cpu0: float, count: int) -> None:
        if count:
            self.fig(section, "client CPU per create", ms((time.process_time() - cpu0) / count), "ms",
                     note="httpx in this process")

    def check(self, res: RunResult, what: str) -> None:
        if res.errors:
            self.notes.append(f"{what}: {res.errors} failed requests; first: {res.first_error}")
        if not res.ok:
            raise BenchError(f"{what}: no request succeeded; first error: {res.first_error}")

    def run(self) -> None:
        s, base = self.sizes, self.server.base
        # warm-up: code paths, connections, and the bytes of a stored pod for the baseline
        progress("warm-up: 20 creates")
        warm = RunResult()
        with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
            for i in range(20):
                _post_create(c, "/api/v1/namespaces/default/pods", orjson.dumps(pod(f"warm-{i}")), warm,
                             keep_body=True)
        self.check(warm, "warm-up creates")
        stored = orjson.loads(warm.bodies[-1])
        stored["metadata"].pop("resourceVersion", None)
        blob = orjson.dumps(stored)

        # 5. baseline first, while the server is idle
        progress(f"baseline: raw sqlite3 durable inserts of a {len(blob)}-byte pod (up to {s.baseline})")
        raw_n, raw_t = raw_sqlite_inserts(os.path.join(self.tmp, "baseline.db"), blob, s.baseline, s.baseline_s)
        raw_rate = raw_n / raw_t
        progress(f"  {raw_rate:.0f} inserts/s; now with the store's statements per write")
        like_n, like_t = raw_sqlite_inserts(os.path.join(self.tmp, "baseline-like-store.db"), blob, s.baseline,
                                            s.baseline_s, like_store=True)
        like_rate = like_n / like_t
        etcd_rates: dict[int, dict[str, tuple[int, float]]] = {}
        if self.etcd_url:
            for inflight in (1, self.clients):
                progress(f"baseline: etcd puts of the same bytes, {inflight} in flight: raw aetcd stubs, then "
                         f"EtcdStore.create (up to {s.baseline} each)")
                try:
                    etcd_rates[inflight] = etcd_put_rates(self.etcd_url, blob, s.baseline, s.baseline_s, inflight)
                except Exception as e:  # reported, the rest of the run goes on
                    self.notes.append(f"etcd baseline: {type(e).__name__}: {e}")
                    break

        # 1. creates
        progress(f"creates, 1 client: up to {s.single} pods or {s.single_s:.0f}s")
        cpu0, ccpu0 = self.server.cpu_seconds(), time.process_time()
        single = create_sequential(base, "default", "s1", s.single, s.single_s)
        self.check(single, "creates, 1 client")
        sec = "create 1 client"
        self.fig(sec, "creates/s", single.rate, "/s", note=f"{single.ok} pods in {single.wall:.1f}s")
        self.latency_figs(sec, "latency", single.latencies)
        self.cpu_fig(sec, cpu0, single.ok, "create")
        self.client_cpu_fig(sec, ccpu0, single.ok)

        progress(f"creates, {self.clients} clients: up to {s.concurrent} pods or {s.concurrent_s:.0f}s")
        cpu0, ccpu0 = self.server.cpu_seconds(), time.process_time()
        conc = create_concurrent(base, "default", f"c{self.clients}", s.concurrent, self.clients, s.concurrent_s,
                                 label=f"{self.clients} clients")
        self.check(conc, f"creates, {self.clients} clients")
        sec = f"create {self.clients} clients"
        self.fig(sec, "creates/s", conc.rate, "/s", note=f"{conc.ok} pods in {conc.wall:.1f}s")
        self.latency_figs(sec, "latency", conc.latencies)
        self.cpu_fig(sec, cpu0, conc.ok, "create")
        self.client_cpu_fig(sec, ccpu0, conc.ok)

        floor = self.http_floor()

        sec = "baseline"
        self.fig(sec, "raw sqlite inserts/s", raw_rate, "/s",
                 note=f"{raw_n} x {len(blob)} B, WAL, synchronous=FULL, 1 txn each")
        self.fig(sec, "raw sqlite, store's statements/s", like_rate, "/s",
                 note="select + insert kv + insert event + update meta, 1 txn each")
        self.fig(sec, "ratio 1-client creates / raw", single.rate / raw_rate, "",
                 note="one request in flight: bounded by the HTTP round trip (see the floor)")
        # the target is against the store's own backend: raw sqlite for SQLite, the raw put loop for etcd
        self.fig(sec, f"ratio {self.clients}-client creates / raw", conc.rate / raw_rate, "",
                 "" if self.etcd_url else ">=", None if self.etcd_url else RATIO_MIN)
        for inflight, rates in etcd_rates.items():
            (raw_en, raw_et), (st_n, st_t) = rates["raw"], rates["store"]
            raw_e, store_e = raw_en / raw_et, st_n / st_t
            apiserver = single if inflight == 1 else conc
            self.fig(sec, f"raw etcd puts/s, {inflight} in flight", raw_e, "/s",
                     note=f"{raw_en} x {len(blob)} B, aetcd's KVStub.Put, this process")
            self.fig(sec, f"EtcdStore creates/s, {inflight} in flight", store_e, "/s",
                     note="txn create_revision==0 -> put, same channel kind, this process")
            self.fig(sec, f"ratio EtcdStore / raw etcd, {inflight} in flight", store_e / raw_e, "",
                     note="our store's overhead over a bare put loop")
            self.fig(sec, f"ratio {inflight}-client creates / raw etcd", apiserver.rate / raw_e, "",
                     ">=" if inflight > 1 else "", RATIO_MIN if inflight > 1 else None, note="the whole apiserver over HTTP vs the bare put loop")
        if floor is not None:
            self.fig(sec, "HTTP floor, 1 client req/s", floor.rate, "/s",
                     note="no-op ASGI app on uvicorn+httptools, same httpx client")
            self.fig(sec, "ratio floor / raw", floor.rate / raw_rate, "",
                     note="the best 1-client ratio this client and HTTP stack allow")

        # 2. paced mutations
        progress(f"paced writes: 20/s for {s.paced_s:.0f}s (create and update alternating)")
        with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
            create_namespace(c, "bench-p")
        paced = paced_writes(base, "bench-p", 20.0, s.paced_s)
        if paced.errors:
            self.notes.append(f"paced writes: {paced.errors} failed; first: {paced.first_error}")
        sec = "paced 20 writes/s"
        both = paced.create + paced.update
        self.latency_figs(sec, "write latency", both, PACED_P99_MS)
        self.fig(sec, "create p99", ms(percentile(paced.create, 99)), "ms", note=f"{len(paced.create)} creates")
        self.fig(sec, "update p99", ms(percentile(paced.update, 99)), "ms", note=f"{len(paced.update)} updates")
        if paced.late:
            self.notes.append(f"paced writes: {paced.late} writes left more than 5 ms after their slot")

        # 3. watch
        progress(f"watch: 20 creates/s for {s.watch_s:.0f}s, one watcher on bench-w")
        wres = watch_latency(base, "bench-w", 20.0, s.watch_s)
        sec = "watch delivery"
        if wres.error:
            self.notes.append(f"watch: {wres.error}")
        self.latency_figs(sec, "send->seen", wres.send_to_seen, WATCH_P99_MS)
        self.fig(sec, "response->seen p50", ms(percentile(wres.resp_to_seen, 50)), "ms",
                 note="negative: the event came before the create's response")
        self.fig(sec, "response->seen p99", ms(percentile(wres.resp_to_seen, 99)), "ms")
        self.fig(sec, "events missing", float(wres.missing), "", "<=", 0, note=f"of {wres.written} written")

        # 4. list
        n = s.list_pods
        progress(f"list: filling namespace bench-list with {n} pods ({self.clients} clients)")
        with httpx.Client(base_url=base, timeout=WRITE_TIMEOUT) as c:
            create_namespace(c, "bench-list")
        fill = create_concurrent(base, "bench-list", "lp", n, self.clients, s.list_fill_s, label="fill")
        self.check(fill, "list fill")
        sec = f"list {n} pods"
        if fill.ok < n:
            self.notes.append(f"list fill: only {fill.ok} of {n} pods created in {s.list_fill_s:.0f}s")
        self.fig(sec, "fill creates/s", fill.rate, "/s", note=f"{fill.ok} pods in {fill.wall:.1f}s")

        progress(f"list: full JSON list x{s.list_reps}")
        cpu0 = self.server.cpu_seconds()
        full = time_list(base, "bench-list", s.list_reps)
        self.cpu_fig(sec, cpu0, len(full.times), "full list")
        self.fig(sec, "full JSON p50", ms(percentile(full.times, 50)), "ms", "<=", LIST_FULL_S * 1000,
                 note=f"{full.items} items, {full.nbytes / 1e6:.2f} MB")
        self.fig(sec, "full JSON p99", ms(percentile(full.times, 99)), "ms", "<=", LIST_FULL_S * 1000)

        progress(f"list: as Table (kubectl get) x{s.list_reps}")
        table = time_list(base, "bench-list", s.list_reps, TABLE_ACCEPT)
        self.fig(sec, "Table p50", ms(percentile(table.times, 50)), "ms",
                 note=f"{table.items} rows, {table.nbytes / 1e6:.2f} MB")
        self.fig(sec, "Table p99", ms(percentile(table.times, 99)), "ms")

        progress(f"list: paginated limit=500 x{s.page_reps}")
        paged = time_paginated(base, "bench-list", s.page_reps, 500, fill.ok)
        self.fig(sec, "paginated 500, all pages p50", ms(percentile(paged.times, 50)), "ms",
                 note=f"{paged.pages} pages, {paged.items} items, {paged.nbytes / 1e6:.2f} MB")
        self.fig(sec, "paginated 500, all pages max", ms(max(paged.times)), "ms")
        if paged.items != fill.ok:
            self.notes.append(f"paginated list returned {paged.items} items, expected {fill.ok}")

        if not self.server.alive():
            self.notes.append("the apiserver exited during the run; its log:\n" + self.server.log_tail())


    def http_floor(self) -> RunResult | None:
        if not self.floor:
            return None
        progress("HTTP floor: a no-op ASGI app, 1 client")
        fs = FloorServer([], "", os.path.join(self.tmp, "floor.log"))
        try:
            fs.start()
            create_sequential(fs.base, "default", "warm", 200, 2)
            res = create_sequential(fs.base, "default", "f", self.sizes.single, min(self.sizes.single_s, 4))
        except BenchError as e:
            self.notes.append(f"HTTP floor: {e}")
            return None
        finally:
            fs.stop()
        return res if res.ok else None


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/apiserver.py",
        description="Benchmark the kubeling apiserver (creates, paced writes, watch delivery, big lists) against "
                    "a raw SQLite durable-insert baseline on the same disk. Progress on stderr, a table of "
                    "figures with targets on stdout.")
    p.add_argument("--quick", action="store_true", help="smaller counts (~40 s instead of ~3 min)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default %(default)s)")
    p.add_argument("--list-pods", type=int, metavar="N", help="pods in the listed namespace "
                   f"(default {FULL.list_pods}, --quick {QUICK.list_pods})")
    p.add_argument("--tmpdir", metavar="DIR", help="where the temp dir for the data dir and the baseline goes "
                   "(default: the system temp dir); both always share one filesystem")
    p.add_argument("--server-cmd", metavar="CMD", help="the kubeling command to run, split like a shell would "
                   "(default: the kubeling next to this python)")
    p.add_argument("--no-floor", action="store_true", help="skip the HTTP floor (a no-op ASGI server, 1 client)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data dir, baseline db, server log)")
    p.add_argument("--store", default="", metavar="URL|etcd",
                   help="the apiserver's --store URL (default: SQLite in the data dir); 'etcd' starts a "
                        "throwaway etcd on free 127.0.0.1 ports for the run")
    p.add_argument("--stores", metavar="LIST", help="run the whole benchmark once per store, one after the "
                   "other, and print the second / the first for every figure, e.g. sqlite,etcd "
                   "(each 'sqlite', 'etcd' or a URL; overrides --store)")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error("--clients must be at least 1")
    sizes = QUICK if args.quick else FULL
    if args.list_pods is not None:
        if args.list_pods < 1:
            p.error("--list-pods must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "list_pods": args.list_pods})

    try:
        cmd = shlex.split(args.server_cmd) if args.server_cmd else default_server_cmd()
    except BenchError as e:
        print(f"bench/apiserver.py: {e}", file=sys.stderr)
        return 2
    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)  # clean up (server, temp dir) on SIGTERM as on Ctrl-C
    stores = [x.strip() for x in args.stores.split(",") if x.strip()] if args.stores else [args.store]
    runs: list[tuple[str, Bench]] = []
    docs: list[dict[str, Any]] = []
    failed_any = False
    for store in stores:
        label, bench, meta, failed = run_one(args, cmd, sizes, store)
        runs.append((label, bench))
        failed_any = failed_any or bool(failed)
        print(f"kubeling apiserver benchmark ({meta['mode']}, store {label}, git {meta['git'] or '?'}, "
              f"python {meta['python']}, {meta['cpus']} cpus, temp dir in {meta['tmpdir']}, {meta['seconds']:.0f}s, "
              f"load {meta['loadavg_before']} -> {meta['loadavg_after']})")
        print(format_table(bench.figures))
        for note in bench.notes:
            print(f"note: {note}")
        misses = [f"{f.section}: {f.name}" for f in bench.figures if f.status == "MISS"]
        print(f"targets: {sum(f.status == 'OK' for f in bench.figures)} OK, {len(misses)} MISS"
              + (f" ({'; '.join(misses)})" if misses else ""))
        print(flush=True)
        if failed:
            print(f"bench/apiserver.py: store {label}: stopped early: {failed}", file=sys.stderr)
        docs.append({"meta": meta, "figures": [f.as_dict() for f in bench.figures], "notes": bench.notes,
                     "error": failed or None})
        if failed == "interrupted":
            break
    comparison: list[dict[str, Any]] = []
    if len(runs) >= 2:
        (base_label, base), (other_label, other) = runs[0], runs[1]
        comparison = compare(base.figures, other.figures)
        print(f"{other_label} / {base_label}, figure by figure (creates/s: above 1 is faster; latency, CPU: "
              f"above 1 is slower)")
        print(format_comparison(comparison, base_label, other_label))
    if args.json:
        doc: dict[str, Any] = docs[0] if len(docs) == 1 else {"runs": docs, "comparison": comparison}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 1 if failed_any else 0


def run_one(args: argparse.Namespace, cmd: list[str], sizes: Sizes,
            store: str) -> tuple[str, Bench, dict[str, Any], str]:
    """One full benchmark on one store ("", "sqlite", "etcd" or a URL): (label, bench, meta, error)."""
    etcd: Any = None
    store_url = "" if store in ("", "sqlite") else store
    label = "sqlite" if not store_url else "etcd" if store_url == "etcd" else store_url
    tmp = tempfile.mkdtemp(prefix="kubeling-bench-", dir=args.tmpdir)
    server = Server(cmd, os.path.join(tmp, "data"), os.path.join(tmp, "apiserver.log"), "")
    bench = Bench(server, sizes, args.clients, tmp, floor=not args.no_floor)
    t_start = time.monotonic()
    load_before = loadavg()
    failed = ""
    try:
        if store_url == "etcd":
            sys.path.insert(0, os.path.join(REPO, "tests"))
            from etcd_proc import EtcdServer  # the tests' throwaway etcd (killed by PID, data dir removed)

            etcd = EtcdServer()
            try:
                etcd.start()
            except RuntimeError as e:
                raise BenchError(str(e)) from None
            store_url = etcd.store_url
        server.store = store_url
        bench.etcd_url = store_url if store_url.startswith("etcd") else ""
        server.start()
        bench.run()
    except BenchError as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        if etcd is not None:
            etcd.cleanup()
        if args.keep:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - t_start
    meta = {"mode": "quick" if args.quick else "full", "store": label, "git": git_describe(),
            "python": platform.python_version(), "cpus": os.cpu_count(), "tmpdir": os.path.dirname(tmp),
            "clients": args.clients, "list_pods": sizes.list_pods, "seconds": round(elapsed, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_before": load_before, "loadavg_after": loadavg()}
    return label, bench, meta, failed


def compare(base: list[Figure], other: list[Figure]) -> list[dict[str, Any]]:
    """The figures both runs have, in the first run's order, with other/base."""
    theirs = {(f.section, f.name): f for f in other}
    rows = []
    for f in base:
        g = theirs.get((f.section, f.name))
        if g is None:
            continue
        ratio = g.value / f.value if f.value and not math.isnan(f.value) and not math.isnan(g.value) else math.nan
        rows.append({"section": f.section, "name": f.name, "unit": f.unit, "base": f.value, "other": g.value,
                     "ratio": None if math.isnan(ratio) else ratio})
    return rows


def format_comparison(rows: list[dict[str, Any]], base_label: str, other_label: str) -> str:
    table = [("section", "figure", base_label, other_label, f"{other_label}/{base_label}")]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        table.append((r["section"], r["name"], fmt_number(r["base"]) + unit, fmt_number(r["other"]) + unit,
                      fmt_number(r["ratio"] if r["ratio"] is not None else math.nan)))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    out = []
    for i, t in enumerate(table):
        out.append("  ".join([t[0].ljust(widths[0]), t[1].ljust(widths[1]),
                              *(c.rjust(w) for c, w in zip(t[2:], widths[2:], strict=True))]).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)

if __name__ == "__main__":
    sys.exit(main())
