"""The container runtime adapter: Docker behind a small interface, and an in-memory fake.

Only what the agent needs: create/start/stop/remove containers, list ours by label, inspect,
logs, exec, images.  Every call that cannot reach the engine raises RuntimeUnavailable;
"not found" on stop/remove is success (house rule 4).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("kubeling.agent.runtime")

# Labels on every container the agent creates (the pause container too).
L_POD_UID = "io.kubeling.pod-uid"
L_POD_NS = "io.kubeling.pod-namespace"
L_POD_NAME = "io.kubeling.pod-name"
L_CONTAINER = "io.kubeling.container-name"
L_RESTARTS = "io.kubeling.restart-count"
L_NODE = "io.kubeling.node"
L_GRACE = "io.kubeling.grace-period"
L_KIND = "io.kubeling.kind"  # "sandbox" | "init" | "app"


API_VERSION = "1.41"  # docker 20.10


class RuntimeUnavailable(Exception):
    """The container engine could not be reached (or answered with a server error)."""


class ImageNotFound(Exception):
    """The image is not present and could not be pulled."""


class CreateError(Exception):
    """The engine refused to create or start a container (bad config, bad command...)."""


class NameConflict(Exception):
    """A container of that name exists already (HTTP 409 from the engine)."""

    status_code = 409


@dataclass
class ContainerInfo:
    id: str
    name: str
    labels: dict[str, str]
    state: str  # created | running | paused | restarting | exited | dead
    exit_code: int = 0
    started_at: float = 0.0  # epoch seconds, 0 = never
    finished_at: float = 0.0
    oom_killed: bool = False
    error: str = ""
    image: str = ""
    image_id: str = ""
    pid: int = 0
    network_mode: str = ""  # "container:<pause id>" for a pod's app and init containers

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    @property
    def sandbox_id(self) -> str:
        """The ID of the pause container whose network namespace this container joined ("" = none)."""
        return self.network_mode.removeprefix("container:") if self.network_mode.startswith("container:") else ""

    @property
    def restart_count(self) -> int:
        try:
            return int(self.labels.get(L_RESTARTS, "0"))
        except ValueError:
            return 0


@dataclass
class CreateSpec:
    name: str
    image: str
    labels: dict[str, str]
    entrypoint: list[str] | None = None
    command: list[str] | None = None
    env: list[str] = field(default_factory=list)
    working_dir: str | None = None
    hostname: str | None = None
    network_mode: str = "none"
    ipc_mode: str | None = None
    binds: list[str] = field(default_factory=list)
    tty: bool = False
    stdin_open: bool = False
    host_options: dict[str, Any] = field(default_factory=dict)  # extra docker HostConfig kwargs


class Runtime(Protocol):
    def version(self) -> dict[str, Any]: ...
    def image_id(self, ref: str) -> str | None: ...
    def pull(self, ref: str) -> str: ...
    def create(self, spec: CreateSpec) -> str: ...
    def start(self, cid: str) -> None: ...
    def stop(self, cid: str, timeout: float) -> None: ...
    def remove(self, cid: str) -> None: ...
    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]: ...
    def list_ids(self, labels: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]: ...
    def inspect(self, cid: str) -> ContainerInfo | None: ...
    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None,
             timestamps: bool = False) -> Iterator[bytes]: ...
    def exec(self, cid: str, cmd: list[str], timeout: float) -> tuple[int, str]: ...
    def stop_signal(self, cid: str) -> str: ...


def _epoch(ts: str | None) -> float:
    """Docker's RFC 3339 nanosecond timestamps -> epoch seconds (0 for the zero time)."""
    if not ts or ts.startswith("0001-"):
        return 0.0
    from datetime import datetime
    main, _, frac = ts.rstrip("Z").partition(".")
    t = datetime.fromisoformat(main + "+00:00").timestamp()
    if frac:
        digits = "".join(c for c in frac if c.isdigit())[:6]
        t += int(digits.ljust(6, "0")) / 1e6
    return t


def _label_filter(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" if v else k for k, v in labels.items()]


class DockerRuntime:
    """The Docker engine through docker-py's low-level APIClient (one per process, thread-safe)."""

    def __init__(self, base_url: str = "unix:///var/run/docker.sock", timeout: float = 60.0) -> None:
        import docker
        import docker.errors
        import requests.exceptions

        self._errors = docker.errors
        self._conn_errors: tuple[type[BaseException], ...] = (requests.exceptions.ConnectionError,
                                                              requests.exceptions.Timeout)
        # A fixed API version: constructing the client never touches the engine (it may be down).
        self.api = docker.APIClient(base_url=base_url, timeout=int(timeout), version=API_VERSION)

    def _api(self) -> Any:
        return self.api

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._conn_errors as e:
            raise RuntimeUnavailable(f"{what}: Docker engine unreachable: {e}") from None
        except self._errors.APIError as e:
            if e.status_code is not None and e.status_code >= 500 and "No such" not in str(e.explanation):
                if e.status_code in (502, 503, 504):
                    raise RuntimeUnavailable(f"{what}: {e.explanation}") from None
            raise

    # -- engine / images --

    def version(self) -> dict[str, Any]:
        return dict(self._call("version", self._api().version))

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self._call("inspect image", self._api().inspect_image, ref)["Id"])
        except self._errors.NotFound:
            return None

    def pull(self, ref: str) -> str:
        repo, tag = (ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest"))
        try:
            self._call("pull", self._api().pull, repo, tag=tag)
        except self._errors.APIError as e:
            raise ImageNotFound(f"failed to pull image \"{ref}\": {e.explanation}") from None
        got = self.image_id(ref)
        if got is None:
            raise ImageNotFound(f"failed to pull image \"{ref}\": not present after pull")
        return got

    # -- containers --

    def create(self, spec: CreateSpec) -> str:
        api = self._api()
        hc = api.create_host_config(network_mode=spec.network_mode, ipc_mode=spec.ipc_mode,
                                    binds=spec.binds or None, **spec.host_options)
        kw: dict[str, Any] = dict(image=spec.image, name=spec.name, labels=spec.labels, environment=spec.env or None,
                                  working_dir=spec.working_dir or None, hostname=spec.hostname, tty=spec.tty,
                                  stdin_open=spec.stdin_open, host_config=hc, entrypoint=spec.entrypoint,
                                  command=spec.command)
        if spec.entrypoint is not None and spec.command is None:
            kw["command"] = []  # Kubernetes: `command` without `args` drops the image's CMD
        try:
            return str(self._call("create", api.create_container, **kw)["Id"])
        except self._errors.ImageNotFound as e:
            raise ImageNotFound(str(e.explanation)) from None
        except self._errors.APIError as e:
            if e.status_code == 409:
                raise NameConflict(str(e.explanation or e)) from None
            raise CreateError(str(e.explanation or e)) from None

    def start(self, cid: str) -> None:
        try:
            self._call("start", self._api().start, cid)
        except self._errors.APIError as e:
            raise CreateError(str(e.explanation or e)) from None

    def stop(self, cid: str, timeout: float) -> None:
        """STOPSIGNAL (SIGTERM by default), wait `timeout` seconds, SIGKILL."""
        try:
            self._call("stop", self._api().stop, cid, timeout=max(0, int(round(timeout))))
        except self._errors.NotFound:
            pass
        except self._errors.APIError as e:
            if "is not running" not in str(e.explanation):
                raise

    def remove(self, cid: str) -> None:
        try:
            self._call("remove", self._api().remove_container, cid, force=True, v=True)
        except self._errors.NotFound:
            pass
        except self._errors.APIError as e:
            if "already in progress" not in str(e.explanation):
                raise

    def list_ids(self, labels: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
        """Cheap listing (one call): id -> (state, labels)."""
        rows = self._call("list", self._api().containers, all=True, filters={"label": _label_filter(labels)})
        return {r["Id"]: (str(r.get("State", "")), dict(r.get("Labels") or {})) for r in rows}

    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        out = []
        for cid in self.list_ids(labels):
            info = self.inspect(cid)
            if info is not None:
                out.append(info)
        return out

    def inspect(self, cid: str) -> ContainerInfo | None:
        try:
            d = self._call("inspect", self._api().inspect_container, cid)
        except self._errors.NotFound:
            return None
        st = d.get("State") or {}
        cfg = d.get("Config") or {}
        return ContainerInfo(
            id=d["Id"], name=str(d.get("Name", "")).lstrip("/"), labels=dict(cfg.get("Labels") or {}),
            state=str(st.get("Status", "")), exit_code=int(st.get("ExitCode") or 0),
            started_at=_epoch(st.get("StartedAt")), finished_at=_epoch(st.get("FinishedAt")),
            oom_killed=bool(st.get("OOMKilled")), error=str(st.get("Error") or ""), image=str(cfg.get("Image", "")),
            image_id=str(d.get("Image", "")), pid=int(st.get("Pid") or 0),
            network_mode=str((d.get("HostConfig") or {}).get("NetworkMode") or ""))

    def stop_signal(self, cid: str) -> str:
        try:
            d = self._call("inspect", self._api().inspect_container, cid)
        except self._errors.NotFound:
            return "SIGTERM"
        return str((d.get("Config") or {}).get("StopSignal") or "SIGTERM")

    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None,
             timestamps: bool = False) -> Iterator[bytes]:
        gen = self._call("logs", self._api().logs, cid, stream=True, follow=follow, timestamps=timestamps,
                         tail="all" if tail is None else tail)
        yield from gen

    def exec(self, cid: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        """Run cmd in the container; (exit code, combined output).  timeout is enforced by `timeout`
        inside the container when the image has it, else by the HTTP timeout."""
        api = self._api()
        ex = self._call("exec", api.exec_create, cid, cmd, stdout=True, stderr=True)
        out = self._call("exec", api.exec_start, ex["Id"])
        code = self._call("exec", api.exec_inspect, ex["Id"]).get("ExitCode")
        return (int(code) if code is not None else -1), out.decode(errors="replace")

    def events(self, labels: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Container die/oom/start events of our containers (blocks; ends when the engine goes)."""
        gen = self._call("events", self._api().events, decode=True,
                         filters={"type": "container", "event": ["die", "oom", "start", "destroy"],
                                  "label": _label_filter(labels)})
        yield from gen


# -- the fake -------------------------------------------------------------------------------------


class FakeRuntime:
    """In-memory runtime for unit tests.  Containers "run" until a test calls exit(); `store` holds them by ID."""

    def __init__(self, images: dict[str, str] | None = None) -> None:
        self.images = dict(images or {"kubeling/pause:1": "sha256:pause", "kubeling/test:1": "sha256:test"})
        self.store: dict[str, ContainerInfo] = {}
        self.specs: dict[str, CreateSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.available = True
        self.fail_start: dict[str, str] = {}  # image -> error for start
        self.clock = time.time
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _check(self) -> None:
        if not self.available:
            raise RuntimeUnavailable("fake engine down")

    def version(self) -> dict[str, Any]:
        self._check()
        return {"Version": "fake", "ApiVersion": "1.41"}

    def image_id(self, ref: str) -> str | None:
        self._check()
        return self.images.get(ref)

    def pull(self, ref: str) -> str:
        self._check()
        if ref not in self.images:
            raise ImageNotFound(f"failed to pull image \"{ref}\": pull access denied")
        return self.images[ref]

    def create(self, spec: CreateSpec) -> str:
        self._check()
        with self._lock:
            if spec.image not in self.images:
                raise ImageNotFound(f"No such image: {spec.image}")
            if any(c.name == spec.name for c in self.store.values()):
                raise NameConflict(f"Conflict. The container name \"/{spec.name}\" is already in use")
            cid = f"{next(self._ids):064x}"
            self.store[cid] = ContainerInfo(cid, spec.name, dict(spec.labels), "created", image=spec.image,
                                            image_id=self.images[spec.image], network_mode=spec.network_mode)
            self.specs[cid] = spec
            self.calls.append(("create", cid))
            return cid

    def start(self, cid: str) -> None:
        self._check()
        with self._lock:
            c = self.store[cid]
            if c.image in self.fail_start:
                c.state, c.exit_code, c.error = "created", 127, self.fail_start[c.image]
                raise CreateError(self.fail_start[c.image])
            c.state, c.started_at, c.pid = "running", self.clock(), 1000 + int(cid, 16)
            self.calls.append(("start", cid))

    def exit(self, cid: str, code: int, *, oom: bool = False) -> None:
        with self._lock:
            c = self.store[cid]
            c.state, c.exit_code, c.finished_at, c.oom_killed, c.pid = "exited", code, self.clock(), oom, 0

    def stop(self, cid: str, timeout: float) -> None:
        self._check()
        self.calls.append(("stop", cid))
        if cid in self.store and self.store[cid].running:
            self.exit(cid, 143 if timeout > 0 else 137)

    def remove(self, cid: str) -> None:
        self._check()
        with self._lock:
            self.calls.append(("remove", cid))
            self.store.pop(cid, None)

    def list_ids(self, labels: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
        self._check()
        with self._lock:
            return {c.id: (c.state, dict(c.labels)) for c in self.store.values()
                    if all(c.labels.get(k) == v if v else k in c.labels for k, v in labels.items())}

    def containers(self, labels: dict[str, str]) -> list[ContainerInfo]:
        return [info for cid in self.list_ids(labels) if (info := self.inspect(cid)) is not None]

    def inspect(self, cid: str) -> ContainerInfo | None:
        self._check()
        with self._lock:
            c = self.store.get(cid)
            return None if c is None else ContainerInfo(**{k: getattr(c, k) for k in c.__dataclass_fields__})

    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None,
             timestamps: bool = False) -> Iterator[bytes]:
        yield b""

    def exec(self, cid: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        return 0, ""

    def stop_signal(self, cid: str) -> str:
        return "SIGTERM"
