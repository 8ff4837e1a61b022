"""Pod workers: sync_pod(desired from the informer cache, actual from the runtime).

The Agent feeds pod UIDs through a WorkQueue, which never hands one UID to two threads at
once; each sync reads the latest desired pod, so the latest update wins.  Once a pod is being
killed (deletionTimestamp, or gone from the API) its UID stays in `killing` until the kill is
finished: a later update never turns a kill back into a run.

Run:  volumes -> sandbox (pause + netns + CNI) -> init containers in order -> containers
      (restart policy + crash back-off) -> status via the status subresource, if changed.
      Sandbox changed (its pause container died or vanished, or a running container joined
      another pause container): like upstream, the whole pod is killed and re-created: stop the
      containers, keep the last attempt of each as history, tear the old sandbox down (CNI DEL,
      netns unmount), make a new one (maybe a new IP), run the init containers again from the
      first and restart the containers with restartCount + 1 (crash back-off applies).
Kill: stop every container (STOPSIGNAL, grace, SIGKILL) -> remove them -> sandbox teardown
      -> volumes teardown -> DELETE pods/NAME?gracePeriodSeconds=0 with a uid precondition.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent import runtime as rt
from agent import status as S
from agent.env import resolve_env
from agent.errors import ContainerConfigError
from agent.events import EventRecorder
from agent.probes import resolve_named_ports
from agent.resources import docker_host_options
from agent.sandbox import SandboxError, Sandboxes, SandboxInfo

log = logging.getLogger("kubeling.agent.worker")

Getter = Callable[[str, str], "dict[str, Any] | None"]
CONFIG_RETRY = 2.0  # seconds between retries of CreateContainerConfigError / sandbox failures
DEFAULT_POD_MAX_PIDS = 4096  # --pod-max-pids: docker pids_limit of each container


class Hooks:
    """The collaborators a worker uses for a container's config: volumes, env, resources, probes.
    volumes/probes may be None (unit tests with fakes run without them).  service_env() gives the
    master service's variables (KUBERNETES_SERVICE_HOST ...; agent.env.service_env_vars), pids_limit
    the docker pids_limit of every container (--pod-max-pids; <= 0 none)."""

    def __init__(self, volumes: Any = None, probes: Any = None, get_configmap: Getter | None = None,
                 get_secret: Getter | None = None, node_netns: str | None = None, dns: Any = None,
                 service_env: Callable[[], dict[str, str]] | None = None,
                 pids_limit: int = DEFAULT_POD_MAX_PIDS) -> None:
        self.volumes = volumes
        self.probes = probes
        self.service_env = service_env or (lambda: {})
        self.pids_limit = pids_limit
        self.dns = dns  # agent.dnsconfig.PodFiles: the pod's /etc/resolv.conf and /etc/hosts
        self.get_configmap: Getter = get_configmap or (lambda ns, n: None)
        self.get_secret: Getter = get_secret or (lambda ns, n: None)
        self.node_netns = node_netns

    def setup_volumes(self, pod: dict[str, Any]) -> dict[str, str]:
        return {} if self.volumes is None else dict(self.volumes.setup(pod))

    def binds(self, container: dict[str, Any], paths: dict[str, str]) -> list[str]:
        if self.volumes is None or not paths:
            return []
        return list(self.volumes.binds_for(container, paths))

    def dns_binds(self, pod: dict[str, Any], c: dict[str, Any], pod_ip: str) -> tuple[list[str], list[tuple[str, str]]]:
        """Bind mounts of the pod's resolv.conf and hosts file, and warnings (event reason, message)."""
        if self.dns is None:
            return [], []
        binds, notes = self.dns.binds(pod, c, pod_ip)
        return list(binds), list(notes)

    def known_volumes(self) -> list[str]:
        """UIDs of pods with volumes on this node (garbage collection of what a restarted agent left)."""
        return [] if self.volumes is None else list(self.volumes.known())

    def teardown_volumes(self, uid: str) -> None:
        if self.dns is not None:
            self.dns.teardown(uid)  # first: the volume teardown removes the pod dir only when empty
        if self.volumes is not None:
            self.volumes.teardown(uid)

    def remove_probes(self, uid: str) -> None:
        if self.probes is not None:
            self.probes.remove(uid)

    def env(self, pod: dict[str, Any], c: dict[str, Any], pod_ip: str = "") -> list[str]:
        # status.podIP is not written yet on a first start: the sandbox knows it
        return list(resolve_env(pod, c, self.get_configmap, self.get_secret, pod_ips=[pod_ip] if pod_ip else None,
                                service_env=self.service_env()))

    def host_options(self, pod: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
        return dict(docker_host_options(pod, c, pids_limit=self.pids_limit if self.pids_limit > 0 else None))


def container_name(pod: dict[str, Any], cname: str, restarts: int) -> str:
    m = pod["metadata"]
    return f"k8s_{cname}_{m['name']}_{m.get('namespace', 'default')}_{m['uid'][:8]}_{restarts}"


class PodWorkers:
    def __init__(self, client: Any, node: str, runtime: rt.Runtime, sandboxes: Sandboxes, *,
                 hooks: Hooks | None = None, events: EventRecorder | None = None, host_ip: str = "",
                 clock: Callable[[], float] = time.time, requeue: Callable[[str, float], None] | None = None,
                 on_status: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.client = client
        self.node = node
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.hooks = hooks or Hooks()
        self.events = events or EventRecorder(None, node)
        self.host_ip = host_ip
        self.clock = clock
        self.requeue = requeue or (lambda uid, delay: None)
        self.on_status = on_status or (lambda uid, st: None)  # every status computed (metrics)
        self.backoff = S.Backoff(clock=clock)
        self.killing: set[str] = set()
        self._waiting: dict[str, dict[str, S.Waiting]] = {}  # uid -> container -> why waiting
        self._written: dict[str, dict[str, Any]] = {}  # uid -> last status written
        self._started_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kill")

    # -- entry point --

    def sync(self, uid: str, pod: dict[str, Any] | None, last_known: dict[str, Any] | None) -> None:
        """Reconcile one pod.  pod: the cached desired pod (None = gone from the API);
        last_known: the last version seen (for the grace period of a vanished pod)."""
        actual = self.runtime.containers({rt.L_NODE: self.node, rt.L_POD_UID: uid})
        with self._lock:
            kill = uid in self.killing or pod is None or bool(pod["metadata"].get("deletionTimestamp"))
            if kill:
                self.killing.add(uid)
        if kill:
            self._kill(uid, pod, last_known, actual)
            return
        assert pod is not None
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self._finish_terminal(pod, actual)
            return
        self._run(pod, actual)

    # -- run --

    def _labels(self, pod: dict[str, Any]) -> dict[str, str]:
        m = pod["metadata"]
        return {rt.L_POD_UID: m["uid"], rt.L_POD_NS: m.get("namespace", "default"), rt.L_POD_NAME: m["name"],
                rt.L_NODE: self.node,
                rt.L_GRACE: str(int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30) or 0))}

    def _run(self, pod: dict[str, Any], actual: list[rt.ContainerInfo]) -> None:
        uid = pod["metadata"]["uid"]
        spec = pod.get("spec") or {}
        waiting: dict[str, S.Waiting] = {}
        self._waiting[uid] = waiting
        self._started_at.setdefault(uid, self.clock())
        by_name = _group(actual)
        sandbox: SandboxInfo | None = None
        retry: float | None = None
        try:
            paths = self.hooks.setup_volumes(pod)
        except ContainerConfigError as e:
            self.events.warn(pod, "FailedMount", e.message)
            paths, retry = None, CONFIG_RETRY
        if paths is not None and self._sandbox_changed(uid, actual):
            self._kill_for_new_sandbox(pod, actual)
            actual = self.runtime.containers({rt.L_NODE: self.node, rt.L_POD_UID: uid})
            by_name = _group(actual)
        if paths is not None and spec.get("restartPolicy", "Always") == "Never" and by_name \
                and self.sandboxes.get(uid) is None:
            # upstream: a Never pod that has run gets no new sandbox; its killed containers fail it
            self._write_status(pod, by_name, waiting, None, _init_done(spec, by_name))
            return
        if paths is not None:
            try:
                sandbox = self.sandboxes.ensure(pod, self._labels(pod))
            except (SandboxError, rt.CreateError, OSError) as e:
                self.events.warn(pod, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e}")
                retry = CONFIG_RETRY
        init_done = True
        if sandbox is not None:
            init_done, r1 = self._sync_init(pod, sandbox, paths or {}, by_name, waiting)
            retry = _min(retry, r1)
            if init_done:
                for c in spec.get("containers") or []:
                    retry = _min(retry, self._sync_container(pod, c, sandbox, paths or {}, by_name, waiting, "app"))
        actual = self.runtime.containers({rt.L_NODE: self.node, rt.L_POD_UID: uid})
        self._write_status(pod, _group(actual), waiting, sandbox, init_done)
        if retry is not None:
            self.requeue(uid, retry)

    def _sandbox_changed(self, uid: str, actual: list[rt.ContainerInfo]) -> bool:
        """Containers exist, but their sandbox is gone, dead, or not the current one."""
        apps = [c for c in actual if c.labels.get(rt.L_KIND) != "sandbox"]
        if not apps:
            return False  # nothing joined a sandbox yet: ensure() makes (or remakes) it
        cur = self.sandboxes.get(uid)
        if cur is None or not self.sandboxes.healthy(cur):
            return not _only_history(apps, cur)
        return any(c.running and c.sandbox_id and c.sandbox_id != cur.pause_id for c in apps)

    def _kill_for_new_sandbox(self, pod: dict[str, Any], actual: list[rt.ContainerInfo]) -> None:
        """Stop the pod's containers, keep the last attempt of each (restart count, lastState,
        logs --previous), and tear the old sandbox down; _run then makes a new one."""
        uid = pod["metadata"]["uid"]
        old = self.sandboxes.get(uid)
        apps = [c for c in actual if c.labels.get(rt.L_KIND) != "sandbox"]
        joined = sorted({c.sandbox_id for c in apps if c.sandbox_id} | ({old.pause_id} if old else set()))
        log.info("sandbox changed, killing and re-creating pod=%s/%s uid=%s old=%s", pod["metadata"].get("namespace"),
                 pod["metadata"]["name"], uid, ",".join(j[:12] for j in joined))
        self.events.normal(pod, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.",
                           dedup="/".join(joined))
        running = [c for c in apps if c.running]
        for c in running:
            name = c.labels.get(rt.L_CONTAINER, "")
            self.events.normal(pod, "Killing", f"Stopping container {name}", name, dedup=f"{c.id}/kill")
        list(self._pool.map(lambda c: self.runtime.stop(c.id, _grace(pod)), running))
        self.hooks.remove_probes(uid)  # they aimed at the old IP; new containers add their own
        for hist in _group(apps).values():
            for c in hist[:-1]:
                self.runtime.remove(c.id)
        self.sandboxes.teardown(uid)

    def _sync_init(self, pod: dict[str, Any], sb: SandboxInfo, paths: dict[str, str],
                   by_name: dict[str, list[rt.ContainerInfo]], waiting: dict[str, S.Waiting]) -> tuple[bool, float | None]:
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        for c in (pod.get("spec") or {}).get("initContainers") or []:
            hist = by_name.get(c["name"], [])
            cur = hist[-1] if hist else None
            if cur is not None and _stale(cur, sb):
                return False, self._sync_container(pod, c, sb, paths, by_name, waiting, "init")  # run again
            if cur is not None and not cur.running and cur.state != "created" and cur.exit_code == 0:
                continue  # done
            if cur is not None and cur.running:
                return False, None
            if cur is not None and policy == "Never":
                return False, None  # failed for good: phase Failed
            return False, self._sync_container(pod, c, sb, paths, by_name, waiting, "init")
        return True, None

    def _sync_container(self, pod: dict[str, Any], c: dict[str, Any], sb: SandboxInfo, paths: dict[str, str],
                        by_name: dict[str, list[rt.ContainerInfo]], waiting: dict[str, S.Waiting],
                        kind: str) -> float | None:
        """Start c if it should run now; return seconds until it should be looked at again."""
        uid = pod["metadata"]["uid"]
        name = c["name"]
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        if kind == "init" and policy == "Always":
            policy = "OnFailure"  # init containers are retried on failure, never after success
        hist = by_name.get(name, [])
        cur = hist[-1] if hist else None
        key = f"{uid}/{name}"
        if cur is not None and cur.running:
            if self.clock() - cur.started_at >= S.BACKOFF_RESET_AFTER:
                self.backoff.reset(key)
            if self._liveness_failed(uid, name):
                self.events.normal(pod, "Killing", f"Container {name} failed liveness probe, will be restarted", name)
                self.runtime.stop(cur.id, _grace(pod))
                return 0.0
            return None
        if cur is not None:  # exited (or never started)
            rerun = kind == "init" and _stale(cur, sb)  # a new sandbox runs every init container again
            if not rerun and not S.should_restart(policy, cur.exit_code) and not (
                    cur.error and not cur.started_at and policy != "Never"):
                return None
            left = self.backoff.remaining(key, cur.finished_at or cur.started_at or self.clock())
            if left > 0:
                delay = self.backoff.delay(key)
                msg = f"back-off {int(delay)}s restarting failed container={name} pod={pod['metadata']['name']}_" \
                      f"{pod['metadata'].get('namespace', 'default')}({uid})"
                if cur.error and not cur.started_at:
                    waiting[name] = S.Waiting("RunContainerError", cur.error)
                else:
                    waiting[name] = S.Waiting("CrashLoopBackOff", msg)
                self.events.warn(pod, "BackOff", "Back-off restarting failed container", name, dedup=f"{key}/{cur.id}")
                return left
        restarts = cur.restart_count + 1 if cur is not None else 0
        return self._start(pod, c, sb, paths, restarts, hist, waiting, kind, key)

    def _start(self, pod: dict[str, Any], c: dict[str, Any], sb: SandboxInfo, paths: dict[str, str], restarts: int,
               hist: list[rt.ContainerInfo], waiting: dict[str, S.Waiting], kind: str, key: str) -> float | None:
        name, image = c["name"], c.get("image", "")
        pull_key = f"pull/{key}"
        # image
        if self.runtime.image_id(image) is None:
            if c.get("imagePullPolicy") == "Never":
                waiting[name] = S.Waiting("ErrImageNeverPull",
                                          f'Container image "{image}" is not present with pull policy of Never')
                self.events.warn(pod, "ErrImageNeverPull", waiting[name].message, name, dedup=f"{key}/never")
                return CONFIG_RETRY
            left = self.backoff.remaining(pull_key, self.clock())
            if left > 0:
                waiting[name] = S.Waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')
                self.events.normal(pod, "BackOff", f'Back-off pulling image "{image}"', name,
                                   dedup=f"{pull_key}/{self.backoff.delay(pull_key)}")
                return left
            self.events.normal(pod, "Pulling", f'Pulling image "{image}"', name)
            try:
                self.runtime.pull(image)
            except rt.ImageNotFound as e:
                self.backoff.next(pull_key)
                waiting[name] = S.Waiting("ErrImagePull", str(e))
                self.events.warn(pod, "Failed", f"Failed to pull image \"{image}\": {e}", name)
                return self.backoff.delay(pull_key)
            self.backoff.reset(pull_key)
            self.events.normal(pod, "Pulled", f'Successfully pulled image "{image}"', name)
        else:
            self.events.normal(pod, "Pulled", f'Container image "{image}" already present on machine', name,
                               dedup=f"{key}/pulled/{restarts}")
        # config
        try:
            env = self.hooks.env(pod, c, sb.ip)
            host_opts = self.hooks.host_options(pod, c)
            binds = self.hooks.binds(c, paths)
            dns_binds, dns_notes = self.hooks.dns_binds(pod, c, sb.ip)
        except ContainerConfigError as e:
            waiting[name] = S.Waiting(e.reason, e.message)
            self.events.warn(pod, "Failed", f"Error: {e.message}", name, dedup=f"{key}/cfg/{e.message}")
            return CONFIG_RETRY
        except OSError as e:  # the pod's resolv.conf / hosts file could not be written
            waiting[name] = S.Waiting("CreateContainerConfigError", f"pod DNS files: {e}")
            self.events.warn(pod, "Failed", f"Error: {waiting[name].message}", name, dedup=f"{key}/dns/{e}")
            return CONFIG_RETRY
        for reason, message in dns_notes:
            self.events.warn(pod, reason, message, dedup=f"{reason}/{message}")
        binds += dns_binds
        labels = {**self._labels(pod), rt.L_CONTAINER: name, rt.L_RESTARTS: str(restarts), rt.L_KIND: kind}
        spec = rt.CreateSpec(
            name=container_name(pod, name, restarts), image=image, labels=labels,
            entrypoint=c.get("command") or None, command=c.get("args") or None, env=env,
            working_dir=c.get("workingDir"), network_mode=f"container:{sb.pause_id}",
            ipc_mode=f"container:{sb.pause_id}", binds=binds, tty=bool(c.get("tty")),
            stdin_open=bool(c.get("stdin")), host_options=host_opts)
        if c.get("args") and not c.get("command"):
            spec.command = list(c["args"])
        if restarts > 0:
            self.backoff.next(key)
        try:
            cid = self._create(spec)
        except (rt.CreateError, rt.ImageNotFound) as e:
            waiting[name] = S.Waiting("CreateContainerError", str(e))
            self.events.warn(pod, "Failed", f"Error: {e}", name)
            return CONFIG_RETRY
        self.events.normal(pod, "Created", f"Created container {name}", name)
        try:
            self.runtime.start(cid)
        except rt.CreateError as e:
            if restarts == 0:
                self.backoff.next(key)
            waiting[name] = S.Waiting("RunContainerError", str(e))
            self.events.warn(pod, "Failed", f"Error: {e}", name)
            self._prune(hist, keep=None)
            return self.backoff.delay(key) or S.BACKOFF_INITIAL
        self.events.normal(pod, "Started", f"Started container {name}", name)
        self._prune(hist, keep=hist[-1].id if hist else None)
        self._add_probes(pod, c, sb, cid)
        return None

    def _create(self, spec: rt.CreateSpec) -> str:
        try:
            return self.runtime.create(spec)
        except (rt.CreateError, rt.ImageNotFound):
            raise
        except Exception as e:
            if getattr(e, "status_code", None) != 409:
                raise
            # a container of this name exists: ours, from an interrupted sync; replace it
            for cid, (_st, labels) in self.runtime.list_ids({rt.L_NODE: self.node,
                                                              rt.L_POD_UID: spec.labels[rt.L_POD_UID]}).items():
                if labels.get(rt.L_CONTAINER) == spec.labels[rt.L_CONTAINER] and \
                        labels.get(rt.L_RESTARTS) == spec.labels[rt.L_RESTARTS]:
                    self.runtime.remove(cid)
            return self.runtime.create(spec)

    def _prune(self, hist: list[rt.ContainerInfo], keep: str | None) -> None:
        """Remove dead containers of one name except `keep` (the previous one, for logs --previous)."""
        for old in hist:
            if old.id != keep and not old.running:
                self.runtime.remove(old.id)

    # -- probes --

    def _add_probes(self, pod: dict[str, Any], c: dict[str, Any], sb: SandboxInfo, cid: str) -> None:
        pm = self.hooks.probes
        if pm is None:
            return
        uid = pod["metadata"]["uid"]
        for kind in ("startup", "liveness", "readiness"):
            probe = c.get(f"{kind}Probe")
            if not probe:
                continue
            probe = resolve_named_ports(probe, c)  # httpGet/tcpSocket port: "http" -> containerPort
            def exec_fn(cmd: list[str], timeout: float, _cid: str = cid) -> tuple[int, str]:
                return self.runtime.exec(_cid, cmd, timeout)
            pm.add(uid, c["name"], kind, probe, pod_ip=sb.ip, node_netns=self.hooks.node_netns, exec_fn=exec_fn,
                   started_at=self.clock())

    def _probe(self, uid: str, name: str, kind: str) -> bool | None:
        pm = self.hooks.probes
        if pm is None:
            return None
        r = pm.result(uid, name, kind)
        return None if r is None else bool(r)

    def _liveness_failed(self, uid: str, name: str) -> bool:
        return self._probe(uid, name, "liveness") is False

    # -- status --

    def _write_status(self, pod: dict[str, Any], by_name: dict[str, list[rt.ContainerInfo]],
                      waiting: dict[str, S.Waiting], sb: SandboxInfo | None, init_done: bool) -> None:
        uid = pod["metadata"]["uid"]
        spec = pod.get("spec") or {}
        old = pod.get("status") or {}

        def one(c: dict[str, Any], is_init: bool) -> dict[str, Any]:
            hist = by_name.get(c["name"], [])
            cur = hist[-1] if hist else None
            prev = hist[-2] if len(hist) > 1 else None
            w = waiting.get(c["name"])
            if cur is not None and cur.state == "created" and not cur.error and w is None:
                w = S.Waiting("ContainerCreating")
            rc = cur.restart_count if cur is not None else 0
            started = cur is not None and cur.running and self._probe(uid, c["name"], "startup") is not False
            ready = started and (self._probe(uid, c["name"], "readiness") is not False
                                 if c.get("readinessProbe") else True)
            if c.get("readinessProbe") and self._probe(uid, c["name"], "readiness") is None:
                ready = False
            if w is None and is_init is False and not init_done and (cur is None or _stale(cur, sb)):
                w = S.Waiting("PodInitializing")
            return S.container_status(c, cur, prev, w, ready, started, rc)

        init_st = [one(c, True) for c in spec.get("initContainers") or []]
        ctr_st = [one(c, False) for c in spec.get("containers") or []]
        phase = S.pod_phase(spec, init_st, ctr_st, init_done)
        now = self.clock()
        all_ready = bool(ctr_st) and all(s["ready"] for s in ctr_st)
        st: dict[str, Any] = {
            "phase": phase,
            "conditions": S.conditions(old.get("conditions") or [], init_done, all_ready, now, phase),
            "startTime": old.get("startTime") or S.rfc3339(self._started_at.get(uid, now)),
            "containerStatuses": ctr_st,
        }
        if self.host_ip:
            st["hostIP"], st["hostIPs"] = self.host_ip, [{"ip": self.host_ip}]
        if init_st:
            st["initContainerStatuses"] = init_st
        ip = sb.ip if sb is not None else old.get("podIP")
        if ip:
            st["podIP"], st["podIPs"] = ip, [{"ip": ip}]
        if old.get("qosClass"):
            st["qosClass"] = old["qosClass"]
        self.on_status(uid, st)
        self._put_status(pod, st)

    def _put_status(self, pod: dict[str, Any], st: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        old = pod.get("status") or {}
        if _same(old, st) or _same(self._written.get(uid) or {}, st):
            return
        m = pod["metadata"]
        patch = {"metadata": {"uid": uid}, "status": st}
        try:
            self.client.patch("pods", m["name"], patch, m.get("namespace", "default"), subresource="status")
        except Exception as e:
            if getattr(e, "code", None) in (404, 409):
                return
            raise
        self._written[uid] = copy.deepcopy(st)
        log.debug("status written pod=%s/%s phase=%s", m.get("namespace"), m["name"], st["phase"])

    def _finish_terminal(self, pod: dict[str, Any], actual: list[rt.ContainerInfo]) -> None:
        """Succeeded/Failed: nothing restarts; stop what runs and release the network."""
        uid = pod["metadata"]["uid"]
        for c in actual:
            if c.running and c.labels.get(rt.L_KIND) != "sandbox":
                self.runtime.stop(c.id, _grace(pod))
        if self.sandboxes.get(uid) is not None:
            self.sandboxes.teardown(uid)
            self.hooks.remove_probes(uid)

    # -- kill --

    def _kill(self, uid: str, pod: dict[str, Any] | None, last: dict[str, Any] | None,
              actual: list[rt.ContainerInfo]) -> None:
        ref = pod or last
        grace = _grace(ref) if ref is not None else _label_grace(actual)
        apps = [c for c in actual if c.labels.get(rt.L_KIND) != "sandbox"]
        running = [c for c in apps if c.running]
        for c in running:
            if ref is not None:
                self.events.normal(ref, "Killing", f"Stopping container {c.labels.get(rt.L_CONTAINER)}",
                                   c.labels.get(rt.L_CONTAINER, ""))
        if running:
            log.info("killing pod uid=%s containers=%d grace=%ss", uid, len(running), grace)
        list(self._pool.map(lambda c: self.runtime.stop(c.id, grace), running))
        self.hooks.remove_probes(uid)
        for c in apps:
            self.runtime.remove(c.id)
        self.sandboxes.teardown(uid)
        self.hooks.teardown_volumes(uid)
        if pod is not None:
            m = pod["metadata"]
            try:
                self.client.delete("pods", m["name"], m.get("namespace", "default"), grace_period_seconds=0,
                                   preconditions={"uid": uid})
            except Exception as e:
                if getattr(e, "code", None) not in (404, 409):
                    raise
        self.forget(uid)

    def forget(self, uid: str) -> None:
        with self._lock:
            self.killing.discard(uid)
        self._waiting.pop(uid, None)
        self._written.pop(uid, None)
        self._started_at.pop(uid, None)
        self.backoff.forget_prefix(f"{uid}/")
        self.backoff.forget_prefix(f"pull/{uid}/")

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _group(actual: list[rt.ContainerInfo]) -> dict[str, list[rt.ContainerInfo]]:
    """App/init containers by name, oldest attempt first."""
    out: dict[str, list[rt.ContainerInfo]] = {}
    for c in actual:
        if c.labels.get(rt.L_KIND) == "sandbox":
            continue
        out.setdefault(c.labels.get(rt.L_CONTAINER, ""), []).append(c)
    for v in out.values():
        v.sort(key=lambda c: c.restart_count)
    return out


def _stale(c: rt.ContainerInfo, sb: SandboxInfo | None) -> bool:
    """c is history from an earlier sandbox of the pod (not running, joined another pause)."""
    return sb is not None and not c.running and bool(c.sandbox_id) and c.sandbox_id != sb.pause_id


def _only_history(apps: list[rt.ContainerInfo], old: SandboxInfo | None) -> bool:
    """Nothing runs and every container is the kept last attempt of an earlier sandbox: the
    kill already happened (e.g. the new sandbox could not be made yet), nothing to do again."""
    if any(c.running for c in apps):
        return False
    if old is None:
        return True
    return all(c.sandbox_id and c.sandbox_id != old.pause_id for c in apps)


def _init_done(spec: dict[str, Any], by_name: dict[str, list[rt.ContainerInfo]]) -> bool:
    for c in spec.get("initContainers") or []:
        hist = by_name.get(c["name"], [])
        if not hist or hist[-1].running or hist[-1].exit_code != 0:
            return False
    return True


def _grace(pod: dict[str, Any]) -> int:
    m = pod.get("metadata") or {}
    if m.get("deletionGracePeriodSeconds") is not None:
        return int(m["deletionGracePeriodSeconds"])
    return int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30) or 0)


def _label_grace(actual: list[rt.ContainerInfo]) -> int:
    for c in actual:
        try:
            return int(c.labels.get(rt.L_GRACE, "30"))
        except ValueError:
            pass
    return 30


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal for status purposes (keys we write; the server may add others)."""
    return all(old.get(k) == v for k, v in new.items())
