"""`kubeling agent`: the node agent process.

    kubeling agent --node-name N --kubeconfig F [--node-netns NAME] [--cni-conf FILE | --pod-cidr CIDR]
                   [--root-dir /var/lib/kubeling/agent/<node>] [--listen 127.0.0.1:10250] [--node-ip IP]
                   [--cluster-dns IP[,IP]] [--cluster-domain cluster.local] [--resolv-conf /etc/resolv.conf]
                   [--tls-cert-file F --tls-private-key-file F --client-ca-file F | --insecure-serving]
                   [--healthz-port 10248] [--healthz-bind-address 127.0.0.1] [--pod-max-pids 4096]

--node-netns: the node's side of the network is that namespace (CNI host_netns, probes); the
agent process itself stays in its own namespace to reach the apiserver.

The agent API (upstream kubelet's flag names): --tls-cert-file / --tls-private-key-file /
--client-ca-file serve HTTPS where only client certificates of that CA authenticate (anonymous auth
is off: --anonymous-auth accepts only false) and authorization is upstream's Webhook mode with a
local shortcut for the apiserver (agent/auth.py; --authorization-mode accepts only Webhook). Without
TLS files the API is plain HTTP and open, which the agent accepts only when its apiserver is plain
HTTP too (a cluster run with --insecure-serving, as the test fixtures do) or when --insecure-serving
is given; an https apiserver without TLS files is refused at start with one line. /healthz is also
served unauthenticated on --healthz-bind-address:--healthz-port (127.0.0.1:10248; port 0: off; a
port in use is a warning, as upstream). --read-only-port accepts only 0 (there is no read-only
port), --profiling only false (there are no profiling endpoints). --pod-max-pids (kubelet's
podPidsLimit, default 4096; -1 none) is every container's docker pids_limit.

Against an https apiserver the agent also projects service-account tokens into pods (agent/tokens.py,
agent/volumes.py) and puts secret and projected volumes on tmpfs mounts.
--cluster-dns / --cluster-domain / --resolv-conf: every container of a pod gets the pod's
/etc/resolv.conf and /etc/hosts, made as the kubelet does (agent/dnsconfig.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from kube.tls import bool_flag

log = logging.getLogger("kubeling.agent.main")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-name", required=True, help="this node's name (also labels its containers)")
    p.add_argument("--kubeconfig", required=True,
                   help="kubeconfig to reach the apiserver (its cluster server may list several apiservers of "
                        "one cluster, comma-separated: the agent fails over between them)")
    p.add_argument("--node-netns", default=None,
                   help="network namespace (name under /var/run/netns) that plays the node's network side")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cni-conf", default=None, help="CNI network config (JSON) for pods")
    g.add_argument("--pod-cidr", default=None, help="pod subnet; builds a kubeling-cni bridge config")
    p.add_argument("--root-dir", default=None, help="state directory (default /var/lib/kubeling/agent/<node>)")
    p.add_argument("--listen", default="127.0.0.1:10250", help="agent HTTP API HOST:PORT (port 0 = any)")
    p.add_argument("--node-ip", default="", help="the node's InternalIP (hostIP of its pods)")
    p.add_argument("--docker-host", default="unix:///var/run/docker.sock")
    p.add_argument("--workers", type=int, default=8, help="pod worker threads")
    p.add_argument("--cluster-cidr", default="", help="pod range of the whole cluster: pod traffic to it is not "
                   "masqueraded (default: only the node's own podCIDR is exempt)")
    p.add_argument("--pod-routes", action=argparse.BooleanOptionalAction, default=True,
                   help="route other nodes' podCIDRs via their InternalIPs in the node namespace (host-gw)")
    p.add_argument("--cluster-dns", action="append", default=[], metavar="IP[,IP...]",
                   help="DNS server(s) for pods with dnsPolicy ClusterFirst (repeatable); without one such pods "
                        "fall back to Default, as upstream")
    p.add_argument("--cluster-domain", default="cluster.local", metavar="DOMAIN",
                   help="the cluster's DNS domain: pods' search path (default %(default)s)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="FILE",
                   help="the node's resolver config, the base of pods' resolv.conf (dnsPolicy Default, and the "
                        "search domains of ClusterFirst); '' = none (default %(default)s)")
    sec = p.add_argument_group("agent API security (upstream kubelet flag names)")
    sec.add_argument("--tls-cert-file", default="", metavar="FILE",
                   help="serving certificate of the agent API (e.g. nodes/NAME/serving.crt of `kubeling pki node`)")
    sec.add_argument("--tls-private-key-file", default="", metavar="FILE", help="its key")
    sec.add_argument("--client-ca-file", default="", metavar="FILE",
                   help="CA bundle client certificates must chain to (the cluster CA)")
    sec.add_argument("--insecure-serving", action="store_true",
                   help="DANGER: plain HTTP agent API, no authentication, even with an https apiserver")
    sec.add_argument("--anonymous-auth", type=bool_flag, nargs="?", const=True, default=False, metavar="false",
                   help="only false: requests without a client certificate are 401")
    sec.add_argument("--authorization-mode", default="Webhook", metavar="Webhook",
                   help="only Webhook: SubjectAccessReview for nodes/proxy etc., the apiserver's identity allowed")
    sec.add_argument("--read-only-port", type=int, default=0, metavar="0", help="only 0: there is no read-only port")
    sec.add_argument("--healthz-port", type=int, default=10248, metavar="PORT",
                   help="unauthenticated plain HTTP /healthz (default %(default)s; 0 = off)")
    sec.add_argument("--healthz-bind-address", default="127.0.0.1", metavar="IP",
                   help="address of the healthz port (default %(default)s)")
    sec.add_argument("--profiling", type=bool_flag, nargs="?", const=True, default=False, metavar="false",
                   help="only false: there are no profiling endpoints")
    p.add_argument("--pod-max-pids", type=int, default=DEFAULT_POD_MAX_PIDS, metavar="N",
                   help="PIDs limit of every container (kubelet's podPidsLimit; default %(default)s, -1 = none)")


DEFAULT_POD_MAX_PIDS = 4096


class ConfigError(Exception):
    """A flag the operator must fix; printed as one line."""


def check_flags(args: argparse.Namespace, apiserver_https: bool) -> None:
    """The security flags that cannot work together; ConfigError says which."""
    if args.anonymous_auth:
        raise ConfigError("--anonymous-auth=true is not supported: the agent API never serves anonymous requests")
    if args.authorization_mode != "Webhook":
        raise ConfigError(f"--authorization-mode {args.authorization_mode!r} is not supported: only Webhook (the "
                          "apiserver's identity allowed, everyone else by SubjectAccessReview)")
    if args.read_only_port != 0:
        raise ConfigError(f"--read-only-port {args.read_only_port}: only 0 is accepted (there is no read-only port)")
    if args.profiling:
        raise ConfigError("--profiling=true is not supported: the agent has no profiling endpoints")
    if not 0 <= args.healthz_port < 65536:
        raise ConfigError(f"--healthz-port {args.healthz_port}: expected 0 (off) to 65535")
    if args.pod_max_pids == 0 or args.pod_max_pids < -1:
        raise ConfigError(f"--pod-max-pids {args.pod_max_pids}: expected a positive number, or -1 for no limit")
    tls = [f for f, v in (("--tls-cert-file", args.tls_cert_file), ("--tls-private-key-file",
                                                                    args.tls_private_key_file),
                          ("--client-ca-file", args.client_ca_file)) if v]
    if args.insecure_serving:
        if tls:
            raise ConfigError(f"--insecure-serving serves plain HTTP without authentication: drop {tls[0]}")
        return
    if tls and len(tls) < 3:
        missing = next(f for f in ("--tls-cert-file", "--tls-private-key-file", "--client-ca-file") if f not in tls)
        raise ConfigError(f"HTTPS for the agent API needs --tls-cert-file, --tls-private-key-file and "
                          f"--client-ca-file together: {missing} is missing")
    if not tls and apiserver_https:
        raise ConfigError("the apiserver is https, so the agent API must be too: give --tls-cert-file, "
                          "--tls-private-key-file and --client-ca-file (`kubeling pki node` makes them), or "
                          "--insecure-serving")


def cni_conf_for(pod_cidr: str, data_dir: str, cluster_cidr: str = "") -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": "1.1.0", "name": "kubeling", "type": "kubeling-cni", "bridge": "kl0", "mtu": 1500,
        "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
        "iptablesBackend": "legacy",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "dataDir": data_dir}}
    if cluster_cidr:  # host-gw: pod-to-pod traffic between nodes keeps its pod source address
        conf["ipMasqExclude"] = cluster_cidr
    return conf


def run(args: argparse.Namespace) -> int:
    from agent import runtime as rt
    from agent.agent import Agent
    from agent.auth import AgentAuth, AuthConfigError, SubjectAccessReviewer, server_ssl_context
    from agent.dnsconfig import PodFiles, parse_cluster_dns
    from agent.exec import DockerStreams
    from agent.node import NodeStatusManager
    from agent.sandbox import SandboxManager
    from agent.server import AgentServer
    from kube.client import Client, load_kubeconfig
    from kube.client import ConfigError as KubeconfigError

    try:
        cluster_dns = parse_cluster_dns(args.cluster_dns)
        config = load_kubeconfig(args.kubeconfig)
        check_flags(args, config.is_tls)
        ssl_context = None
        if args.tls_cert_file:
            ssl_context = server_ssl_context(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    except (ValueError, ConfigError, KubeconfigError, AuthConfigError) as e:
        print(f"kubeling agent: {e}", file=sys.stderr)
        return 2
    node = args.node_name
    root = args.root_dir or f"/var/lib/kubeling/agent/{node}"
    os.makedirs(root, exist_ok=True)
    if args.node_netns and not os.path.exists(f"/var/run/netns/{args.node_netns}"):
        log.error("node network namespace %s does not exist (ip netns add %s)", args.node_netns, args.node_netns)
        return 2
    client = Client(config)
    runtime = rt.DockerRuntime(args.docker_host)

    conf_holder: dict[str, Any] = {}
    if args.cni_conf:
        with open(args.cni_conf) as f:
            conf_holder["conf"] = json.load(f)
    elif args.pod_cidr:
        conf_holder["conf"] = cni_conf_for(args.pod_cidr, os.path.join(root, "cni"), args.cluster_cidr)

    # The API server starts first: with --listen HOST:0 only it knows the real port, which the
    # Node advertises (kubeling.io/agent-endpoint) so that the apiserver can proxy `kubectl logs`.
    holder: dict[str, Any] = {}
    server = AgentServer(args.listen, pods=lambda: holder["agent"].pod_list(),
                         logs=lambda *a, **kw: holder["agent"].logs(*a, **kw),
                         portforward=lambda ns, pod, uid: holder["agent"].port_forward(ns, pod, uid),
                         metrics=lambda: holder["agent"].metrics.text() if "agent" in holder else b"",
                         streams=DockerStreams(runtime, pods=lambda: holder["agent"].pod_list(), node=node,
                                               docker_host=args.docker_host),
                         ssl_context=ssl_context,
                         auth=AgentAuth(node, SubjectAccessReviewer(client)) if ssl_context is not None else None)
    try:
        server.start()
    except OSError as e:
        print(f"kubeling agent: cannot listen on {args.listen}: {e.strerror or e}", file=sys.stderr)
        client.close()
        return 2
    if ssl_context is None:
        log.warning("the agent API is plain HTTP without authentication (%s): anyone who reaches %s may read "
                    "logs and exec into pods", "--insecure-serving" if args.insecure_serving else
                    "the apiserver is plain HTTP too", server.endpoint)
    healthz = _start_healthz(args, server.healthy)

    def runtime_version() -> str:
        v = runtime.version()
        return f"docker://{v.get('Version', '')}"

    node_status = NodeStatusManager(client, node, internal_ip=args.node_ip or "127.0.0.1",
                                    api_endpoint=server.endpoint, runtime_version=runtime_version)

    def cni_conf() -> dict[str, Any] | None:
        if "conf" not in conf_holder:
            cidr = node_status.pod_cidr()
            if cidr:
                conf_holder["conf"] = cni_conf_for(cidr, os.path.join(root, "cni"), args.cluster_cidr)
        return conf_holder.get("conf")

    sandboxes = SandboxManager(runtime, node, root, node_netns=args.node_netns, cni_conf=cni_conf)
    # a probe result that flips re-syncs its pod
    if not cluster_dns:
        log.warning("no --cluster-dns: pods with dnsPolicy ClusterFirst fall back to Default (MissingClusterDNS)")
    dns = PodFiles(os.path.join(root, "pods"), cluster_dns, args.cluster_domain, args.resolv_conf)
    hooks = _hooks(client, root, args.node_netns, on_probe_change=lambda uid, *_: holder["agent"].queue.add(uid),
                   dns=dns, pod_max_pids=args.pod_max_pids, secure=config.is_tls)
    agent = Agent(client, node, runtime, sandboxes, hooks=hooks, host_ip=args.node_ip, workers=args.workers,
                  runtime_ready=node_status.set_runtime_ready)
    holder["agent"] = agent

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    node_status.start()
    routes: Any = None
    if args.pod_routes:
        from agent.routes import IPRouteHost, NodeRoutes
        routes = NodeRoutes(client, node, IPRouteHost(args.node_netns))
        routes.start()
    agent.start()
    log.info("agent running node=%s root=%s node_netns=%s", node, root, args.node_netns or "-")
    done.wait()
    agent.stop()
    if routes is not None:
        routes.stop()
    node_status.stop()
    server.stop()
    if healthz is not None:
        healthz.stop()
    client.close()
    return 0


def _start_healthz(args: argparse.Namespace, healthy: Callable[[], bool]) -> Any:
    """The unauthenticated /healthz port, or None (off, or its address taken: a warning, as upstream)."""
    from agent.server import HealthzServer

    if args.healthz_port == 0:
        return None
    try:
        return HealthzServer(f"{args.healthz_bind_address}:{args.healthz_port}", healthy).start()
    except (OSError, ValueError) as e:
        log.warning("healthz not served on %s:%d: %s", args.healthz_bind_address, args.healthz_port, e)
        return None


def _hooks(client: Any, root: str, node_netns: str | None,
           on_probe_change: Callable[[str, str, str, bool], None] | None = None, dns: Any = None,
           pod_max_pids: int = DEFAULT_POD_MAX_PIDS, secure: bool = False) -> Any:
    """The worker's collaborators. secure (an https apiserver): service-account tokens in pods, and tmpfs
    mounts for secret and projected volumes; off for test agents against --insecure-serving apiservers."""
    from agent.probes import ProbeManager
    from agent.tokens import TokenManager
    from agent.volumes import TmpfsMounter, VolumeManager
    from agent.worker import Hooks
    from kube.client import ApiError

    def getter(resource: str) -> Any:
        def get(ns: str, name: str) -> dict[str, Any] | None:
            try:
                return dict(client.get(resource, name, ns))
            except ApiError as e:
                if e.is_not_found():
                    return None
                raise
        return get

    get_cm, get_secret = getter("configmaps"), getter("secrets")
    tokens = TokenManager(lambda ns, sa, body: dict(client.create("serviceaccounts", body, ns, name=sa,
                                                                  subresource="token"))) if secure else None
    volumes = VolumeManager(os.path.join(root, "pods"), get_cm, get_secret, mounter=TmpfsMounter() if secure else None,
                            tokens=tokens, ca_data=_cluster_ca(client) if secure else None,
                            get_service_account=getter("serviceaccounts"))
    probes = ProbeManager(on_change=on_probe_change) if on_probe_change is not None else ProbeManager()
    return Hooks(volumes=volumes, probes=probes, get_configmap=get_cm, get_secret=get_secret, node_netns=node_netns,
                 dns=dns, service_env=MasterServiceEnv(getter("services")), pids_limit=pod_max_pids)


def _cluster_ca(client: Any) -> bytes | None:
    """The CA the agent trusts the apiserver with (its kubeconfig's): the pods' ca.crt."""
    cfg = client.config
    if cfg.ca_data:
        return bytes(cfg.ca_data)
    if cfg.ca_file:
        try:
            with open(cfg.ca_file, "rb") as f:
                return f.read()
        except OSError as e:
            log.warning("cannot read the CA %s for pods' ca.crt: %s", cfg.ca_file, e.strerror)
    return None


class MasterServiceEnv:
    """KUBERNETES_SERVICE_HOST and friends from the default/kubernetes Service, read at most every `ttl`
    seconds (a failed read keeps the last answer)."""

    def __init__(self, get: Callable[[str, str], dict[str, Any] | None], ttl: float = 30.0) -> None:
        self.get, self.ttl = get, ttl
        self._value: dict[str, str] = {}
        self._at = -ttl
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, str]:
        import time

        from agent.env import service_env_vars

        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return dict(self._value)
            self._at = time.monotonic()
            try:
                svc = self.get("default", "kubernetes")
                self._value = service_env_vars(svc) if svc else {}
            except Exception as e:  # noqa: BLE001 - the apiserver is busy: keep what we had
                log.debug("cannot read default/kubernetes for the service environment: %s", e)
            return dict(self._value)


def main(argv: list[str] | None = None) -> int:  # `python -m agent.main` (the lead wires `kubeling agent`)
    p = argparse.ArgumentParser(prog="kubeling agent")
    p.add_argument("--log-level", default="info")
    add_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
