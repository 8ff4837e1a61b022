"""`kubeling agent`: the node agent process.

    kubeling agent --node-name N --kubeconfig F [--node-netns NAME] [--cni-conf FILE | --pod-cidr CIDR]
                   [--root-dir /var/lib/kubeling/agent/<node>] [--listen 127.0.0.1:10250] [--node-ip IP]

--node-netns: the node's side of the network is that namespace (CNI host_netns, probes); the
agent process itself stays in its own namespace to reach the apiserver.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

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
    from agent.node import NodeStatusManager
    from agent.sandbox import SandboxManager
    from agent.server import AgentServer
    from kube.client import Client

    node = args.node_name
    root = args.root_dir or f"/var/lib/kubeling/agent/{node}"
    os.makedirs(root, exist_ok=True)
    if args.node_netns and not os.path.exists(f"/var/run/netns/{args.node_netns}"):
        log.error("node network namespace %s does not exist (ip netns add %s)", args.node_netns, args.node_netns)
        return 2
    client = Client.from_kubeconfig(args.kubeconfig)
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
                         metrics=lambda: holder["agent"].metrics.text() if "agent" in holder else b"")
    server.start()

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
    hooks = _hooks(client, root, args.node_netns, on_probe_change=lambda uid, *_: holder["agent"].queue.add(uid))
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
    client.close()
    return 0


def _hooks(client: Any, root: str, node_netns: str | None,
           on_probe_change: Callable[[str, str, str, bool], None] | None = None) -> Any:
    from agent.probes import ProbeManager
    from agent.volumes import VolumeManager
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
    volumes = VolumeManager(os.path.join(root, "pods"), get_cm, get_secret)
    probes = ProbeManager(on_change=on_probe_change) if on_probe_change is not None else ProbeManager()
    return Hooks(volumes=volumes, probes=probes, get_configmap=get_cm, get_secret=get_secret, node_netns=node_netns)


def main(argv: list[str] | None = None) -> int:  # `python -m agent.main` (the lead wires `kubeling agent`)
    p = argparse.ArgumentParser(prog="kubeling agent")
    p.add_argument("--log-level", default="info")
    add_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
