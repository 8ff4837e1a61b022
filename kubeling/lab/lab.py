"""`kubeling lab`: a multi-node cluster of network namespaces on one machine (run as root).

    up       build the underlay, the control plane and N workers; write <lab dir>/kubeconfig
    demo     a Deployment behind a ClusterIP and a NodePort, requested from every node (lab/demo.py)
    down     stop every recorded process, remove every recorded namespace/container/state dir
    status   what runs, what answers, and a few Prometheus figures of every component (lab/metrics.py)
    exec     run a command in a node's network namespace (nsenter --net)
    logs     a component's log
    kill     stop a node's agent and proxy (the supervisor keeps them stopped)
    start    start them again

Cluster DNS: `kubeling dns` runs in the control namespace behind Service kube-system/kube-dns
(10.96.0.10), and the agents write pods' resolv.conf for it (why there: lab/clusterdns.py).

Secure by default, as `kubeling server` is: `up` makes the cluster PKI in <lab dir>/state/pki
(lab/labpki.py, 0700), and every program gets its own identity: the apiserver serves HTTPS only
(client CA, service-account keys, Node,RBAC, no anonymous requests, an audit log in state/audit/),
the in-process scheduler and controllers, the proxies and kubeling dns use their own client
certificates, each agent its node certificate and a TLS serving certificate with client-cert
authentication (no read-only port, a pod PIDs limit), and etcd (--store etcd) TLS with client
certificates from a CA of its own. <lab dir>/kubeconfig is the admin's (system:masters), over the
loopback forwarder (TLS passes through it). `scripts/cis-check --lab-dir DIR` checks all of it.

Everything the lab makes is recorded in <lab dir>/state.json before it is made; `down` (and `up`
after a crash) acts only on that record. Nothing is added to the machine's own network namespace:
the only thing there is the forwarder's listening socket on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import clusterdns, labpki, topology
from .labpki import LabPKI
from .state import LabError, LabState, alive, default_lab_dir, locked, proc_starttime
from .topology import API_PORT, NETNS_DIR, Host, Topology

REPO = Path(__file__).resolve().parents[2]
DEFAULT_API_PORT = 16443
CLUSTER_CIDR = "10.244.0.0/16"
NODE_LABEL = "io.kubeling.node"
COMPONENTS = ("server", "forward", "supervisor", "etcd", "dns", "routes", "agent", "proxy")
POD_MAX_PIDS = 4096  # the agents' --pod-max-pids (kubelet podPidsLimit): every container's pids.max
PROXY_METRICS = "127.0.0.1:10249"  # kube-proxy's default: metrics on the node's loopback only
# etcd's TLS 1.2 suites: ECDHE with AEAD only (its certificates are ECDSA P-256), as the apiserver's own
ETCD_CIPHERS = ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,"
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305")


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


class Paths:
    def __init__(self, lab_dir: str) -> None:
        self.dir = lab_dir
        self.state_json = os.path.join(lab_dir, "state.json")
        self.programs = os.path.join(lab_dir, "programs.json")
        self.supervisor = os.path.join(lab_dir, "supervisor.json")
        self.kubeconfig = os.path.join(lab_dir, "kubeconfig")
        self.logs = os.path.join(lab_dir, "logs")
        self.state = os.path.join(lab_dir, "state")          # data dirs: state/control, state/nodes/NODE
        self.pki = os.path.join(self.state, "pki")           # lab/labpki.py: CA, certificates, kubeconfigs
        self.audit_log = os.path.join(self.state, "audit", "audit.log")

    def log(self, name: str) -> str:
        return os.path.join(self.logs, f"{name}.log")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.state, "nodes", node)


# ---------------------------------------------------------------------------------------------- helpers

def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run it as root (sudo scripts/lab ...)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def admin_tls(paths: Paths) -> ssl.SSLContext | None:
    """A client context that trusts the lab's CA and presents the admin certificate (None: no PKI yet)."""
    pki = LabPKI(paths.pki)
    crt, key = pki.cert("admin")
    try:
        ctx = ssl.create_default_context(cafile=pki.ca)
        ctx.load_cert_chain(crt, key)
    except (OSError, ssl.SSLError):
        return None
    return ctx


def api_get(paths: Paths, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET https://127.0.0.1:port/path (the forwarder to the apiserver) as the lab's admin: (status,
    body); (0, b"") when nothing answers or the PKI is not there."""
    ctx = admin_tls(paths)
    if ctx is None or not port:
        return 0, b""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def agent_available() -> bool:
    return (REPO / "agent" / "main.py").exists()


def agent_scheme() -> str:
    """https once the agent serves TLS (it knows --tls-cert-file), else http."""
    return "https" if "--tls-cert-file" in subcommand_flags("agent") else "http"


@functools.cache
def subcommand_flags(name: str) -> frozenset[str]:
    """Option strings `kubeling NAME` accepts (so the lab passes only flags the component knows)."""
    from kubeling.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return frozenset(o for a in action.choices[name]._actions for o in a.option_strings)
    return frozenset()


def nsenter(netns: str) -> list[str]:
    return ["nsenter", f"--net={os.path.join(NETNS_DIR, netns)}"]


def write_admin_kubeconfig(path: str, pki: LabPKI, server: str) -> None:
    """kubectl's kubeconfig: the lab CA and the admin certificate embedded, mode 0600."""
    from kube import pki as kpki

    crt, key = pki.cert("admin")
    with open(pki.ca, "rb") as ca_f, open(crt, "rb") as crt_f, open(key, "rb") as key_f:
        kpki.write_kubeconfig(path, server, user="admin", ca_data=ca_f.read(), cert_data=crt_f.read(),
                              key_data=key_f.read())


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
            return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


# ---------------------------------------------------------------------------------------------- programs

def flag_args(flags: dict[str, str], known: frozenset[str] | None = None) -> list[str]:
    """["--flag", "value", ...] for the flags a component knows (all when `known` is None); booleans as
    --flag=false, the one spelling argparse, Go's pflag and the CIS checks all read the same way."""
    out: list[str] = []
    for flag, value in flags.items():
        if known is not None and flag not in known:
            continue
        out += [f"{flag}={value}"] if value in ("true", "false") else [flag, value]
    return out


def programs_for(topo: Topology, paths: Paths, api_port: int, store: str, agents: bool = True,
                 server_args: list[str] | None = None) -> list[dict[str, Any]]:
    py = sys.executable
    kl = [py, "-m", "kubeling.cli", "--log-level", "info"]
    progs: list[dict[str, Any]] = []
    pki = LabPKI(paths.pki)

    def add(name: str, argv: list[str]) -> None:
        progs.append({"name": name, "argv": argv, "log": paths.log(name), "enabled": True})

    control = os.path.join(paths.state, "control")
    # the apiserver with the lab's PKI, every flag explicit (the CIS checks read them from /proc/PID/cmdline);
    # flags the server does not know yet are left out (subcommand_flags), so the lab runs on older checkouts
    crt, key = pki.cert("apiserver")
    kubelet_crt, kubelet_key = pki.cert("apiserver-kubelet-client")
    secure = {
        "--tls-cert-file": crt, "--tls-private-key-file": key, "--client-ca-file": pki.ca,
        "--service-account-key-file": pki.path("sa.pub"), "--service-account-signing-key-file": pki.path("sa.key"),
        "--authorization-mode": "Node,RBAC", "--anonymous-auth": "false", "--profiling": "false",
        "--audit-log-path": paths.audit_log, "--audit-log-maxage": "30", "--audit-log-maxbackup": "10",
        "--audit-log-maxsize": "100",
        "--kubelet-client-certificate": kubelet_crt, "--kubelet-client-key": kubelet_key,
        "--kubelet-certificate-authority": pki.ca,
        # the in-process scheduler and controllers as system:kube-scheduler / system:kube-controller-manager
        "--scheduler-kubeconfig": pki.kubeconfig("scheduler"),
        "--controller-manager-kubeconfig": pki.kubeconfig("controller-manager"),
    }
    if agent_scheme() == "http":  # agents without TLS (an older checkout): the apiserver must speak http to them
        for flag in ("--kubelet-client-certificate", "--kubelet-client-key", "--kubelet-certificate-authority"):
            del secure[flag]
    server = [*nsenter(topo.control.netns), *kl, "server", "--listen", f"{topo.control.ip}:{API_PORT}",
              "--data-dir", control, "--cluster-cidr", CLUSTER_CIDR,
              *flag_args(secure, subcommand_flags("server")), *(server_args or [])]
    if store == "etcd":
        # Debian's etcd, alone on the control namespace's loopback (no other namespace sees 127.0.0.1
        # there); its data in the lab's state dir, removed by `down` with the rest of state/. TLS on
        # both ports with client certificates of etcd's own CA (lab/labpki.py), as CIS section 2 asks.
        client, peer = "https://127.0.0.1:2379", "https://127.0.0.1:2380"
        (scrt, skey), (pcrt, pkey) = pki.etcd("server"), pki.etcd("peer")
        add("etcd", [*nsenter(topo.control.netns), shutil.which("etcd") or "/usr/bin/etcd",
                     "--name", "control", "--data-dir", os.path.join(paths.state, "etcd"),
                     "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", f"control={peer}", "--listen-metrics-urls", "",
                     *flag_args({"--cert-file": scrt, "--key-file": skey, "--client-cert-auth": "true",
                                 "--trusted-ca-file": pki.etcd_ca, "--auto-tls": "false",
                                 "--peer-cert-file": pcrt, "--peer-key-file": pkey,
                                 "--peer-client-cert-auth": "true", "--peer-trusted-ca-file": pki.etcd_ca,
                                 "--peer-auto-tls": "false", "--cipher-suites": ETCD_CIPHERS}),
                     "--logger", "zap", "--log-level", "warn"])
        ecrt, ekey = pki.etcd("apiserver-etcd-client")
        server += ["--store", "etcd://127.0.0.1:2379", "--etcd-cafile", pki.etcd_ca, "--etcd-certfile", ecrt,
                   "--etcd-keyfile", ekey]
    add("server", server)
    add("forward", [py, "-m", "kubeling.lab.forward", "--listen", f"127.0.0.1:{api_port}",
                    "--netns", topo.control.netns, "--to", f"{topo.control.ip}:{API_PORT}"])
    # cluster DNS beside the control plane, behind kube-dns 10.96.0.10 (why there: lab/clusterdns.py);
    # 0.0.0.0 so the underlay address serves pods and 127.0.0.1 serves the bench's baseline
    add("dns", [*nsenter(topo.control.netns), *kl, "dns", "--kubeconfig", pki.kubeconfig("dns"),
                "--listen", f"0.0.0.0:{clusterdns.DNS_PORT}", "--domain", clusterdns.CLUSTER_DOMAIN,
                "--metrics-address", f"0.0.0.0:{clusterdns.METRICS_PORT}"])
    if not agents or not agent_available():
        return progs
    # routes back to the pods from the control namespace (why: lab/routes.py); it reads Nodes, as the
    # proxies do, with their identity (system:kube-proxy)
    add("routes", [*nsenter(topo.control.netns), py, "-m", "kubeling.lab.routes", "--kubeconfig",
                   pki.kubeconfig("proxy")])
    agent_flags = subcommand_flags("agent")
    for node in topo.workers:
        agent = [*nsenter(node.netns), *kl, "agent", "--node-name", node.name, "--kubeconfig",
                 pki.node_kubeconfig(node.name), "--node-netns", node.netns]
        # podCIDR: the agent takes the one node IPAM sets on its Node
        # the agent's API on the node's underlay address: the apiserver (control namespace) proxies
        # `kubectl logs` to it there; 127.0.0.1 would be the node namespace's own loopback
        # --resolv-conf "": the machine's /etc/resolv.conf names servers of the machine's network, which
        # the lab's namespaces cannot reach; pods with dnsPolicy Default get 127.0.0.1, as upstream
        serving_crt, serving_key = pki.node_serving(node.name)
        optional = {"--node-ip": node.ip, "--listen": f"{node.ip}:10250", "--data-dir": paths.node_dir(node.name),
                    "--root-dir": paths.node_dir(node.name), "--cluster-cidr": CLUSTER_CIDR,
                    "--cluster-dns": clusterdns.KUBE_DNS_IP, "--cluster-domain": clusterdns.CLUSTER_DOMAIN,
                    "--resolv-conf": "",
                    # HTTPS with the node's serving certificate; only client certificates of the lab CA
                    "--tls-cert-file": serving_crt, "--tls-private-key-file": serving_key, "--client-ca-file": pki.ca,
                    "--anonymous-auth": "false", "--authorization-mode": "Webhook", "--read-only-port": "0",
                    "--pod-max-pids": str(POD_MAX_PIDS),
                    "--profiling": "false"}
        agent += flag_args(optional, agent_flags)
        add(f"agent-{node.name}", agent)
        add(f"proxy-{node.name}", [*nsenter(node.netns), *kl, "proxy", "--node-name", node.name,
                                    "--kubeconfig", pki.kubeconfig("proxy"), "--cluster-cidr", CLUSTER_CIDR,
                                    "--metrics-address", PROXY_METRICS])
    return progs


def write_programs(paths: Paths, progs: list[dict[str, Any]]) -> None:
    """programs.json, the lab's equivalent of unit files / static pod manifests: 0600 (CIS 1.1.1, 4.1.1)."""
    tmp = paths.programs + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({"programs": progs}, f, indent=2)
    os.replace(tmp, paths.programs)


def start_supervisor(paths: Paths) -> tuple[int, int]:
    os.makedirs(paths.logs, exist_ok=True)
    with open(paths.log("supervisor"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kubeling.lab.supervisor", "--lab-dir", paths.dir],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(REPO))
    return proc.pid, proc_starttime(proc.pid)


# ---------------------------------------------------------------------------------------------- up

def install_step(args: argparse.Namespace, paths: Paths) -> None:
    if args.no_install:
        say("install: skipped (--no-install)")
        return
    script = REPO / "scripts" / "provision-node"
    say("install: apt packages and the venv (scripts/provision-node --deps-only)")
    res = subprocess.run([str(script), "--deps-only"], capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise LabError(f"scripts/provision-node --deps-only failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    if not agent_available():
        return
    if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0:
        say("install: a Docker engine runs")
        return
    say("install: starting dockerd --iptables=false --ip-masq=false --bridge=none")
    os.makedirs(paths.logs, exist_ok=True)
    with open(paths.log("dockerd"), "ab") as log:
        subprocess.Popen(["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none"], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"dockerd did not come up in 30 s; see {paths.log('dockerd')}")
        time.sleep(0.5)


def images_step(args: argparse.Namespace) -> None:
    script = REPO / "scripts" / "images"
    if args.no_images:
        say("images: skipped (--no-images)")
    elif not script.exists():
        say("images: scripts/images not present yet, skipped")
    else:
        say("images: building the local images (scripts/images)")
        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise LabError(f"scripts/images failed: {(res.stderr or res.stdout).strip()[-300:]}")


def cmd_up(args: argparse.Namespace) -> int:
    require_root()
    paths = Paths(args.state_dir)
    topo = topology.plan(args.prefix, args.nodes)
    if args.store == "etcd":
        import importlib.util
        if importlib.util.find_spec("apiserver.store.etcd") is None:
            raise LabError("--store etcd: this apiserver has no etcd backend yet (apiserver/store/etcd.py); "
                           "use --store sqlite")
        if shutil.which("etcd") is None:
            raise LabError("--store etcd: etcd is not installed (apt-get install etcd-server)")
    with locked(paths.dir):
        if LabState.load(paths.state_json) is not None:
            say("leftovers of an earlier lab found in state.json: cleaning them first")
            teardown(paths)
        install_step(args, paths)
        images_step(args)
        api_port = args.api_port
        if api_port == 0 or (api_port == DEFAULT_API_PORT and not port_free(api_port)):
            api_port = free_port()
        elif not port_free(api_port):
            raise LabError(f"--api-port {api_port}: 127.0.0.1:{api_port} is in use; pick another or 0 for any")
        state = LabState(prefix=topo.prefix, nodes=[n.name for n in topo.workers], api_port=api_port,
                         store=args.store, phase="creating")
        state.save(paths.state_json)
        try:
            bring_up(topo, paths, state, args)
        except BaseException:
            say("up failed: rolling back (logs stay in " + paths.logs + ")")
            teardown(paths, quiet=True)
            raise
    return 0


def bring_up(topo: Topology, paths: Paths, state: LabState, args: argparse.Namespace) -> None:
    host = Host()

    def record(ns: str) -> None:
        if ns not in state.namespaces:
            state.namespaces.append(ns)
            state.save(paths.state_json)

    for d in (paths.dir, paths.logs, paths.state, os.path.dirname(paths.audit_log)):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # keys, kubeconfigs, the audit log and the store live below: root only
    say(f"underlay: switch namespace {topo.switch} (bridge {topology.SWITCH_BRIDGE}, {topology.UNDERLAY})")
    say(f"control plane: namespace {topo.control.netns} ({topo.control.ip})")
    for n in topo.workers:
        say(f"worker: namespace {n.netns} ({n.ip})")
    topology.build(topo, host, record)

    for d in [os.path.join(paths.state, "nodes"), *(paths.node_dir(n.name) for n in topo.workers)]:
        os.makedirs(d, mode=0o700, exist_ok=True)  # the agents' root dirs (pod files, secrets, CNI): root only
    pki = labpki.make(paths.pki, topo, state.store)
    say(f"pki: {pki.dir} (CA, apiserver {topo.control.ip} + 127.0.0.1, {len(topo.workers)} node identities"
        f"{', etcd CA' if state.store == 'etcd' else ''})")
    server_args = [x for flag, value in (("--node-monitor-grace-period", args.node_monitor_grace_period),
                                         ("--node-monitor-period", args.node_monitor_period))
                   if value is not None for x in (flag, f"{value:g}")]
    progs = programs_for(topo, paths, state.api_port, state.store, agents=not args.no_agents,
                         server_args=server_args)
    write_programs(paths, progs)
    if args.no_agents:
        say("workers: no agent or proxy started (--no-agents)")
    elif not agent_available():
        say("workers: agent/main.py not present yet: no agent or proxy started on the workers")
    say(f"supervisor: starting {', '.join(p['name'] for p in progs)}")
    state.supervisor_pid, state.supervisor_start = start_supervisor(paths)
    state.save(paths.state_json)

    say(f"control plane: waiting for kubeling server at {topo.api_url} via 127.0.0.1:{state.api_port}")
    deadline = time.monotonic() + args.timeout
    while api_get(paths, state.api_port, "/readyz")[0] != 200:
        if not alive(state.supervisor_pid, state.supervisor_start):
            raise LabError(f"the supervisor exited; see {paths.log('supervisor')}")
        if time.monotonic() > deadline:
            raise LabError(f"kubeling server did not answer in {args.timeout:.0f} s; last lines of "
                           f"{paths.log('server')}:\n{tail(paths.log('server'))}")
        time.sleep(0.2)
    write_admin_kubeconfig(paths.kubeconfig, pki, f"https://127.0.0.1:{state.api_port}")
    cluster_dns_step(topo, paths, max(deadline, time.monotonic() + 20))
    state.phase = "up"
    state.save(paths.state_json)
    say("up. Summary:")
    print(f"  control  {topo.control.netns:<16} {topo.control.ip:<15} kubeling server :{API_PORT}, kubeling dns "
          f":{clusterdns.DNS_PORT} (Service kube-system/kube-dns {clusterdns.KUBE_DNS_IP})")
    for n in topo.workers:
        what = "agent + proxy" if agent_available() and not args.no_agents else "(no agent)"
        print(f"  {n.name:<8} {n.netns:<16} {n.ip:<15} {what} (podCIDR from node IPAM: see status)")
    print(f"  kubectl --kubeconfig {paths.kubeconfig} get nodes     (admin; https://127.0.0.1:{state.api_port} -> "
          f"{topo.control.ip}:{API_PORT})")
    print(f"  {sys.argv[0] if sys.argv[0].endswith('lab') else 'scripts/lab'} status | exec NODE -- CMD | "
          f"logs COMPONENT [NODE] | demo | down")


def cluster_dns_step(topo: Topology, paths: Paths, deadline: float) -> None:
    """The kube-dns Service + its Endpoints/EndpointSlice, then wait until `kubeling dns` answers."""
    from kube.client import Client

    client = Client.from_kubeconfig(paths.kubeconfig)
    try:
        clusterdns.ensure_objects(client, topo.control.ip)
        # default/kubernetes (10.96.0.1:443) -> the apiserver, so pods reach it with their tokens
        clusterdns.ensure_kubernetes_endpoints(client, topo.control.ip, API_PORT)
    finally:
        client.close()
    say(f"cluster DNS: Service {clusterdns.NAMESPACE}/{clusterdns.NAME} {clusterdns.KUBE_DNS_IP} -> "
        f"{topo.control.ip}:{clusterdns.DNS_PORT}; waiting for kubeling dns to answer")
    name = f"{clusterdns.NAME}.{clusterdns.NAMESPACE}.svc.{clusterdns.CLUSTER_DOMAIN}"
    while True:
        rcode, answers, _ = clusterdns.query_from(topo.control.netns_path, "127.0.0.1", name)[0]
        if rcode == "0" and answers != "0":
            return
        if time.monotonic() > deadline:
            raise LabError(f"kubeling dns did not answer {name} (last: {rcode} {answers}); last lines of "
                           f"{paths.log('dns')}:\n{tail(paths.log('dns'))}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- down

def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, starttime: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, starttime):
        if time.monotonic() > deadline:
            return False
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child (the supervisor started by this process): reap it
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return True


def stop_process(pid: int, starttime: int, grace: float) -> None:
    if not alive(pid, starttime):
        return
    _signal(pid, signal.SIGTERM)
    if not _wait_gone(pid, starttime, grace):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, starttime, 5)


def pids_in_netns(names: list[str]) -> list[int]:
    """Processes whose network namespace is one of the lab's (found by the namespace's inode)."""
    want = set()
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
            want.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    found = []
    for entry in os.listdir("/proc") if want else []:
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in want:
                found.append(int(entry))
    return found


def cluster_pod_uids(paths: Paths, api_port: int) -> set[str] | None:
    """UIDs of every pod the lab's apiserver knows (None when it does not answer)."""
    if not api_port:
        return None
    code, body = api_get(paths, api_port, "/api/v1/pods", timeout=5)
    if code != 200:
        return None
    try:
        return {str(p["metadata"]["uid"]) for p in json.loads(body).get("items", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def remove_containers(nodes: list[str], uids: set[str] | None = None) -> int:
    """Containers labelled with a lab node name; with `uids`, only those of these pods (other labs and
    tests on this Docker engine may have nodes called node1 too)."""
    if not nodes or shutil.which("docker") is None:
        return 0
    removed = 0
    for node in nodes:
        try:
            res = subprocess.run(["docker", "ps", "-a", "--filter", f"label={NODE_LABEL}={node}", "--format",
                                  '{{.ID}} {{.Label "io.kubeling.pod-uid"}}'], capture_output=True, text=True,
                                 timeout=10)
        except subprocess.TimeoutExpired:
            return removed
        rows = [line.split() for line in res.stdout.splitlines()] if res.returncode == 0 else []
        ids = [r[0] for r in rows if r and (uids is None or (len(r) > 1 and r[1] in uids))]
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
            removed += len(ids)
    return removed


def remove_pod_netns(paths: Paths, nodes: list[str], uids: set[str] | None) -> int:
    """The pod network namespaces the lab's agents bind-mounted under /var/run/netns: those of the
    pods the apiserver knew, and of every sandbox state file an agent left in its node dir."""
    from agent.sandbox import NETNS_DIR, netns_name, unbind_netns

    removed = 0
    for node in nodes:
        known = set(uids or ())
        with contextlib.suppress(FileNotFoundError):
            known |= {f[:-5] for f in os.listdir(os.path.join(paths.node_dir(node), "sandboxes"))
                      if f.endswith(".json")}
        for uid in known:
            name = netns_name(node, uid)
            if os.path.exists(os.path.join(NETNS_DIR, name)):
                unbind_netns(name)
                removed += 1
    return removed


def mounts_under(directory: str) -> list[str]:
    """Mount points at or below directory (/proc/self/mountinfo), deepest first."""
    root = os.path.realpath(directory)
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f if len(line.split()) > 4]
    except OSError:
        return []
    return sorted({p for p in points if p == root or p.startswith(root + "/")}, key=len, reverse=True)


def unmount_under(directory: str) -> int:
    """Unmount what the lab's agents mounted in their root dirs (secret and token volumes are tmpfs mounts
    the agent keeps across its own restarts); only mounts below the lab's state dir. Returns how many."""
    n = 0
    for point in mounts_under(directory):
        res = subprocess.run(["umount", point], capture_output=True, timeout=10)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=10)
        n += 1
    return n


def teardown(paths: Paths, quiet: bool = False) -> None:
    """Undo everything state.json records; every step tolerates 'already gone'."""
    log: Callable[[str], None] = (lambda _m: None) if quiet else say
    state = LabState.load(paths.state_json)
    if state is None:
        log(f"nothing recorded in {paths.state_json}: nothing to remove")
        return
    uids = cluster_pod_uids(paths, state.api_port) if state.phase == "up" else None
    if uids is None and state.nodes:
        log("the apiserver does not answer: removing every container labelled with a lab node name")
    if alive(state.supervisor_pid, state.supervisor_start):
        log(f"stopping the supervisor (pid {state.supervisor_pid}) and its programs")
        stop_process(state.supervisor_pid, state.supervisor_start, 12)
    status = read_json(paths.supervisor)
    for name, prog in (status.get("programs") or {}).items():
        pid, start = int(prog.get("pid") or 0), int(prog.get("starttime") or 0)
        if pid and alive(pid, start):
            log(f"stopping {name} (pid {pid})")
            stop_process(pid, start, 3)
    stray = [p for p in pids_in_netns(state.namespaces) if p != os.getpid()]
    for pid in stray:
        log(f"killing pid {pid}, still in a lab namespace")
        _signal(pid, signal.SIGKILL)
    for pid in stray:
        _wait_gone(pid, 0, 5)
    n = remove_containers(state.nodes, uids)
    if n:
        log(f"removed {n} container(s) labelled {NODE_LABEL}=<lab node>")
    n = remove_pod_netns(paths, state.nodes, uids)
    if n:
        log(f"unmounted {n} pod network namespace(s)")
    if state.namespaces:
        log(f"removing namespaces {', '.join(state.namespaces)} (their links go with them)")
    topology.destroy(state.namespaces, Host())
    n = unmount_under(paths.state)
    if n:
        log(f"unmounted {n} volume mount(s) under {paths.state}")
    for f in (paths.programs, paths.supervisor, paths.kubeconfig):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    shutil.rmtree(paths.state, ignore_errors=True)
    os.unlink(paths.state_json)
    log("down: nothing of the lab is left (logs kept in " + paths.logs + ")")


def cmd_down(args: argparse.Namespace) -> int:
    require_root()
    paths = Paths(args.state_dir)
    with locked(paths.dir):
        teardown(paths)
    return 0


# ---------------------------------------------------------------------------------------------- the rest

def load_up(paths: Paths) -> LabState:
    state = LabState.load(paths.state_json)
    if state is None:
        raise LabError(f"no lab recorded in {paths.dir}; start one with `scripts/lab up`")
    return state


def cmd_status(args: argparse.Namespace) -> int:
    paths = Paths(args.state_dir)
    state = load_up(paths)
    topo = topology.plan(state.prefix, len(state.nodes))
    existing = Host().netns_list()
    sup = "running" if alive(state.supervisor_pid, state.supervisor_start) else "NOT running"
    print(f"lab {paths.dir}: phase {state.phase or '?'}, supervisor pid {state.supervisor_pid} {sup}")
    for ns in state.namespaces:
        print(f"  netns {ns:<20} {'present' if ns in existing else 'MISSING'}")
    for name, prog in sorted((read_json(paths.supervisor).get("programs") or {}).items()):
        print(f"  {name:<14} {prog.get('state', '?'):<8} pid {prog.get('pid') or '-':<7} "
              f"restarts {prog.get('restarts', 0)}  last exit {prog.get('last_exit')}")
    code, _ = api_get(paths, state.api_port, "/readyz")
    if code == 0 and admin_tls(paths) is None:
        print(f"  apiserver: cannot read the admin certificate in {paths.pki} (root only): run as root")
    print(f"  apiserver via 127.0.0.1:{state.api_port} -> {topo.api_url}: "
          f"{'ready' if code == 200 else 'not answering' if code == 0 else f'HTTP {code}'}")
    if code == 200:
        _, body = api_get(paths, state.api_port, "/api/v1/nodes")
        try:
            items = json.loads(body).get("items", [])
        except ValueError:
            items = []
        for item in items:
            conds = {c.get("type"): c.get("status") for c in item.get("status", {}).get("conditions", [])}
            print(f"  node {item['metadata']['name']:<10} Ready={conds.get('Ready', '?')} "
                  f"podCIDR={item.get('spec', {}).get('podCIDR', '-')}")
    if not args.no_metrics:
        print("metrics:")
        for line in metrics_lines(topo, paths, state, existing):
            print(f"  {line}")
    return 0


# Runs inside a network namespace: GET each URL (https with the given CA and client certificate),
# print {url: body or null} as JSON.
FETCH = r"""
import json, socket, ssl, sys
spec = json.loads(sys.argv[1])
out = {}
for url in spec["urls"]:
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
        if scheme == "https":
            ctx = ssl.create_default_context(cafile=spec["ca"])
            ctx.load_cert_chain(spec["cert"], spec["key"])
            s = ctx.wrap_socket(s, server_hostname=host)
        with s:
            s.sendall(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        out[url] = body.decode(errors="replace") if b" 200 " in head.split(b"\r\n")[0] + b" " else None
    except (OSError, ValueError):
        out[url] = None
print(json.dumps(out))
"""


def fetch_in(netns_path: str, urls: list[str], paths: Paths | None = None) -> dict[str, str | None]:
    """The bodies of `urls` fetched from inside a namespace by a short-lived child (None: no answer);
    https URLs as the lab's admin (its certificate, the lab CA), which needs `paths`."""
    spec: dict[str, Any] = {"urls": urls}
    if paths is not None:
        pki = LabPKI(paths.pki)
        spec["ca"] = pki.ca
        spec["cert"], spec["key"] = pki.cert("admin")
    argv = ["nsenter", f"--net={netns_path}", "--", sys.executable, "-I", "-c", FETCH, json.dumps(spec)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        got = json.loads(res.stdout) if res.returncode == 0 else {}
    except (subprocess.TimeoutExpired, ValueError):
        got = {}
    return {u: got.get(u) for u in urls}


def metrics_lines(topo: Topology, paths: Paths, state: LabState, existing: set[str]) -> list[str]:
    """One or two lines per component from its /metrics: the apiserver (with the scheduler and
    controllers of `kubeling server`), dns, and each worker's agent and proxy."""
    from . import metrics as M

    def summary(what: str, text: str | None, fn: Callable[[M.Samples], list[str]]) -> list[str]:
        if text is None:
            return [f"{what:<12}(no /metrics answer)"]
        try:
            return fn(M.parse(text))
        except ValueError as e:
            return [f"{what:<12}(unreadable /metrics: {e})"]

    code, body = api_get(paths, state.api_port, "/metrics", timeout=5)
    lines = summary("apiserver", body.decode(errors="replace") if code == 200 else None, M.summarize_apiserver)
    if topo.control.netns in existing:
        dns_url = f"http://127.0.0.1:{clusterdns.METRICS_PORT}/metrics"
        lines += summary("dns", fetch_in(topo.control.netns_path, [dns_url])[dns_url], M.summarize_dns)
    for node in topo.workers:
        if node.netns not in existing:
            continue
        # the agent's API is HTTPS with client certificates (the admin's here); the proxy's metrics plain
        # HTTP on the node's loopback, as kube-proxy's
        agent_url, proxy_url = f"{agent_scheme()}://{node.ip}:10250/metrics", f"http://{PROXY_METRICS}/metrics"
        got = fetch_in(node.netns_path, [agent_url, proxy_url], paths)
        lines += summary(f"agent {node.name}", got[agent_url], functools.partial(M.summarize_agent, node.name))
        lines += summary(f"proxy {node.name}", got[proxy_url], functools.partial(M.summarize_proxy, node.name))
    return lines


def cmd_exec(args: argparse.Namespace) -> int:
    paths = Paths(args.state_dir)
    state = load_up(paths)
    topo = topology.plan(state.prefix, len(state.nodes))
    netns = topo.switch if args.node in ("sw", "switch", topo.switch) else topo.node(args.node).netns
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("nothing to run: lab exec NODE -- CMD [ARGS...]")
    argv = [*nsenter(netns), *cmd]
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise LabError(f"cannot run nsenter: {e.strerror}") from None
    return 0  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    paths = Paths(args.state_dir)
    name = args.component
    if name in ("agent", "proxy"):
        if not args.node:
            raise LabError(f"lab logs {name} NODE: which node? (e.g. node1)")
        name = f"{name}-{args.node}"
    path = paths.log(name)
    if not os.path.exists(path):
        raise LabError(f"no log {path} (components: {', '.join(COMPONENTS)}; agent/proxy take a NODE)")
    argv = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), path]
    os.execvp(argv[0], argv)
    return 0  # not reached


def set_node_enabled(args: argparse.Namespace, enabled: bool) -> int:
    require_root()
    paths = Paths(args.state_dir)
    with locked(paths.dir):
        state = load_up(paths)
        topo = topology.plan(state.prefix, len(state.nodes))
        node = topo.node(args.node)
        if node is topo.control:
            raise LabError("kill/start act on a worker's agent and proxy (node1, node2, ...)")
        names = {f"agent-{node.name}", f"proxy-{node.name}"}
        progs = read_json(paths.programs).get("programs", [])
        mine = [p for p in progs if p.get("name") in names]
        if not mine:
            raise LabError(f"{node.name} runs no agent or proxy (agent/main.py was not there at `lab up`)")
        for p in mine:
            p["enabled"] = enabled
        write_programs(paths, progs)
        if not alive(state.supervisor_pid, state.supervisor_start):
            raise LabError("the supervisor is not running; `scripts/lab up` again")
        os.kill(state.supervisor_pid, signal.SIGHUP)
        want = "running" if enabled else "stopped"
        deadline = time.monotonic() + 15
        while True:
            status = read_json(paths.supervisor).get("programs") or {}
            if all(status.get(n, {}).get("state") == want for n in names):
                break
            if time.monotonic() > deadline:
                raise LabError(f"{node.name}: agent/proxy not {want} after 15 s; see `scripts/lab status`")
            time.sleep(0.1)
        say(f"{node.name}: agent and proxy {want}")
    return 0


# ---------------------------------------------------------------------------------------------- CLI

def add_up_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=2, metavar="N", help="number of workers (default %(default)s)")
    p.add_argument("--store", choices=["sqlite", "etcd"], default="sqlite", help="apiserver store (default %(default)s)")
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, metavar="PORT",
                   help="loopback port of the kubeconfig's forwarder; 0 = any free port (default %(default)s, "
                        "or a free one if taken)")
    p.add_argument("--no-install", action="store_true", help="skip installing apt packages, the venv and dockerd")
    p.add_argument("--no-agents", action="store_true", help="start no agent or proxy on the workers")
    p.add_argument("--no-images", action="store_true", help="skip building the local images")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the control plane (default %(default)s)")
    grace = os.environ.get("KUBELING_LAB_NODE_GRACE")
    p.add_argument("--node-monitor-grace-period", type=float, default=float(grace) if grace else None,
                   metavar="SECONDS", help="kubeling server: a node silent this long becomes NotReady (default "
                   "$KUBELING_LAB_NODE_GRACE or the server's 40 s; keep it above the agents' 10 s lease period)")
    p.add_argument("--node-monitor-period", type=float, default=None, metavar="SECONDS",
                   help="kubeling server: how often node health is checked (default the server's 5 s)")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=default_lab_dir(), metavar="DIR",
                   help="the lab's directory: state.json, kubeconfig, logs/ (default $KUBELING_LAB_DIR or "
                        "<repo>/.lab: %(default)s)")
    p.add_argument("--prefix", default=os.environ.get("KUBELING_LAB_PREFIX", "kl-lab"),
                   help="name prefix of the lab's namespaces (default $KUBELING_LAB_PREFIX or %(default)s)")
    # The same two options after ACTION too (`lab up --state-dir X`); SUPPRESS keeps the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS, metavar="DIR", help="the lab's directory")
    common.add_argument("--prefix", default=argparse.SUPPRESS, help="name prefix of the lab's namespaces")
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    add_parser = sub.add_parser

    def sub_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kw)

    sub.add_parser = sub_parser  # type: ignore[method-assign]
    up = sub.add_parser("up", help="create the lab: underlay, control plane, N workers (root)",
                        description="Create the underlay switch, the control-plane namespace running `kubeling "
                                    "server` and N worker namespaces (agent + proxy), and write DIR/kubeconfig "
                                    "for kubectl through a loopback forwarder. Cleans leftovers of a crashed lab first.")
    add_up_args(up)
    up.set_defaults(lab_func=cmd_up)
    from .demo import add_demo_args, cmd_demo
    demo = sub.add_parser("demo", help="deploy a web app behind a ClusterIP and a NodePort, and curl it",
                          description="Deploy `demo` (3 busybox httpd pods answering their name), a ClusterIP and "
                                      "a NodePort Service; request the ClusterIP from every node and from a pod, "
                                      "the NodePort on every node address; print who answered. Exit 1 if a "
                                      "request failed. Brings the lab up first (with the `up` options) if needed.")
    add_up_args(demo)
    add_demo_args(demo)
    demo.set_defaults(lab_func=cmd_demo)
    sub.add_parser("down", help="remove everything the lab made (safe to repeat)",
                   description="Stop every recorded process, remove the lab's containers, namespaces (with their "
                               "links), mounts and state directories. Logs stay.").set_defaults(lab_func=cmd_down)
    st = sub.add_parser("status", help="show what runs and what answers, and a few metrics of each component",
                        description="Namespaces, supervised programs, the apiserver and the nodes, then a few "
                                    "Prometheus figures of every component read from its /metrics.")
    st.add_argument("--no-metrics", action="store_true", help="skip reading the components' /metrics")
    st.set_defaults(lab_func=cmd_status)
    ex = sub.add_parser("exec", help="run CMD in a node's network namespace",
                        description="Run CMD with `nsenter --net=/var/run/netns/<prefix>-NODE` (NODE: control, "
                                    "node1, ..., or sw for the switch).")
    ex.add_argument("node", metavar="NODE")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    ex.set_defaults(lab_func=cmd_exec)
    lg = sub.add_parser("logs", help="print a component's log",
                        description=f"Components: {', '.join(COMPONENTS)}; agent and proxy take a NODE.")
    lg.add_argument("component", choices=COMPONENTS, metavar="COMPONENT")
    lg.add_argument("node", nargs="?", metavar="NODE")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument("-n", "--lines", type=int, default=100, help="lines to show (default %(default)s)")
    lg.set_defaults(lab_func=cmd_logs)
    for action, on in (("kill", False), ("start", True)):
        k = sub.add_parser(action, help=f"{action} a worker's agent and proxy")
        k.add_argument("node", metavar="NODE")
        k.set_defaults(lab_func=lambda a, on=on: set_node_enabled(a, on))


def run(args: argparse.Namespace) -> int:
    args.state_dir = os.path.abspath(args.state_dir)
    try:
        return int(args.lab_func(args))
    except LabError as e:
        print(f"kubeling lab {args.lab_command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
