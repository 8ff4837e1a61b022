"""The `kubeling` command: one entry point, one subcommand per daemon."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from kube.tls import bool_flag

from . import __version__


class LogfmtFormatter(logging.Formatter):
    """One line per record: time level logger message (key=value pairs)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        line = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} " \
               f"logger={record.name} {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def add_apiserver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:6443", metavar="HOST:PORT",
                   help="address to serve the API on (default %(default)s)")
    p.add_argument("--data-dir", default="/var/lib/kubeling", metavar="DIR",
                   help="state directory: the store and admin.kubeconfig live here (default %(default)s)")
    p.add_argument("--store", default="", metavar="URL",
                   help="store URL: sqlite:///DIR/state.db or etcd://HOST:PORT[,HOST:PORT][?prefix=/P&cacert=F&cert=F&key=F] "
                        "(default: sqlite in the data dir)")
    p.add_argument("--service-cidr", default="10.96.0.0/12", help="ClusterIP range (default %(default)s)")
    p.add_argument("--service-node-port-range", default="30000-32767", help="NodePort range (default %(default)s)")
    p.add_argument("--compact-interval", type=float, default=300.0, metavar="SECONDS",
                   help="how often old revisions are compacted (default %(default)s)")
    p.add_argument("--compact-keep", type=int, default=10_000, metavar="N",
                   help="revisions kept behind the newest at each compaction (default %(default)s)")
    p.add_argument("--bookmark-interval", type=float, default=30.0, metavar="SECONDS",
                   help="how often idle watches that asked for bookmarks get one (default %(default)s)")
    p.add_argument("--authorization-mode", default="Node,RBAC", metavar="MODES",
                   help="authorizers in order, comma-separated: Node, RBAC, AlwaysAllow, AlwaysDeny "
                        "(default %(default)s; AlwaysAllow allows every authenticated request)")
    p.add_argument("--profiling", type=bool_flag, nargs="?", const=True, default=False, metavar="BOOL",
                   help="upstream's profiling switch; kubeling serves no /debug/pprof handlers either way "
                        "(default false)")
    g = p.add_argument_group("etcd client TLS (with --store etcd://...; the same as the URL's cacert/cert/key)")
    g.add_argument("--etcd-cafile", default="", metavar="FILE", help="CA bundle that etcd's serving certificate "
                   "must chain to")
    g.add_argument("--etcd-certfile", default="", metavar="FILE", help="client certificate presented to etcd")
    g.add_argument("--etcd-keyfile", default="", metavar="FILE", help="the client certificate's key")
    from apiserver import audit, ratelimit, security
    security.add_args(p)
    ratelimit.add_args(p)  # per-client rate, connection cap, slow-client timeouts
    audit.add_args(p)


def store_with_etcd_tls(store: str, cafile: str, certfile: str, keyfile: str) -> str:
    """The store URL with --etcd-cafile/--etcd-certfile/--etcd-keyfile as its cacert/cert/key options;
    ValueError when they do not fit (no etcd store, set twice, cert without key)."""
    given = {k: v for k, v in (("cacert", cafile), ("cert", certfile), ("key", keyfile)) if v}
    if not given:
        return store
    if not store.startswith(("etcd://", "etcds://")):
        raise ValueError(f"--etcd-cafile/--etcd-certfile/--etcd-keyfile need --store etcd://HOST:PORT "
                         f"(store is {store or 'sqlite in the data dir'})")
    if bool(certfile) != bool(keyfile):
        raise ValueError("give --etcd-certfile and --etcd-keyfile together")
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(store)
    query = parse_qs(parts.query)
    for k in given:
        if k in query:
            raise ValueError(f"the store URL already sets {k}=; drop it or the --etcd-* flag")
    extra = urlencode(given)
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def cmd_apiserver(args: argparse.Namespace) -> int:
    from apiserver import audit, ratelimit, security
    from apiserver.server import Companion, ServerConfig, StartupError, serve

    try:
        store = store_with_etcd_tls(args.store, args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    except ValueError as e:
        print(f"kubeling {args.command}: {e}", file=sys.stderr)
        return 2
    if args.profiling:
        logging.getLogger("kubeling.apiserver").warning("--profiling=true: kubeling has no profiling handlers")
    cfg = ServerConfig(listen=args.listen, data_dir=args.data_dir, store=store, service_cidr=args.service_cidr,
                       node_port_range=args.service_node_port_range, compact_interval=args.compact_interval,
                       compact_keep=args.compact_keep, bookmark_interval=args.bookmark_interval,
                       security=security.from_args(args), authorization_mode=args.authorization_mode,
                       **ratelimit.config_from_args(args), **audit.config_from_args(args))
    companions: list[Companion] = []
    extra_metrics: list[Any] = []  # the companions' registries, served on the apiserver's /metrics
    if args.command == "server":
        # each with its own identity when given one (--scheduler-kubeconfig ...), else the admin kubeconfig
        companions = [lambda kubeconfig: start_scheduler(args.scheduler_kubeconfig or kubeconfig, args, extra_metrics),
                      lambda kubeconfig: start_controllers(args.controller_manager_kubeconfig or kubeconfig, args,
                                                           extra_metrics)]
        cfg.companions_have_kubeconfigs = bool(args.scheduler_kubeconfig and args.controller_manager_kubeconfig)
    try:
        run_async(serve(cfg, companions, extra_metrics))
    except StartupError as e:
        print(f"kubeling {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def companion(kubeconfig: str, make: Callable[[Any], Any]) -> Callable[[], None]:
    """Start one in-process component of `kubeling server` (a client of the apiserver like any
    other, over HTTP) and return its stop()."""
    from kube.client import Client

    client = Client.from_kubeconfig(kubeconfig)
    component = make(client)
    component.start()

    def stop() -> None:
        component.stop()
        client.close()

    return stop


def start_scheduler(kubeconfig: str, args: argparse.Namespace, metrics: list[Any]) -> Callable[[], None]:
    from scheduler.scheduler import Scheduler

    def make(client: Any) -> Any:
        sched = Scheduler(client, leader_elect=args.leader_elect)
        metrics.append(sched.metrics.registry)
        return sched

    return companion(kubeconfig, make)


def start_controllers(kubeconfig: str, args: argparse.Namespace, metrics: list[Any]) -> Callable[[], None]:
    from controllers.manager import from_args

    def make(client: Any) -> Any:
        cm = from_args(client, args, leader_elect=args.leader_elect)
        metrics.append(cm.metrics.registry)
        return cm

    return companion(kubeconfig, make)


DAEMONS = (
    ("scheduler", "scheduler.main", "run the scheduler",
     "Bind unscheduled pods to nodes: filter, score 0..100, bind."),
    ("controller-manager", "controllers.manager", "run the controllers",
     "ReplicaSet, Deployment, endpoints, EndpointSlice, node IPAM, node lifecycle, DaemonSet, garbage "
     "collector, namespace, Job, TTL and ServiceAccount controllers."),
    ("agent", "agent.main", "run the node agent (kubelet) for one node",
     "Register the node, keep its Lease, and run the pods bound to it on the Docker engine in "
     "network-namespace sandboxes wired by kubeling-cni."),
    ("proxy", "proxy.main", "run the service proxy (kube-proxy, iptables mode) for one node",
     "Program ClusterIP and NodePort Services of the apiserver into iptables on this node (or inside "
     "--netns). Rules survive a stop or crash; --cleanup removes them."),
    ("lab", "kubeling.lab.lab", "a multi-node lab of network namespaces on this machine (root)",
     "Run a control plane and N workers in network namespaces on this machine, wired by an underlay "
     "switch on 192.168.56.0/24 like the Vagrant VMs."),
    ("dns", "dns.main", "run the cluster DNS server",
     "Answer the Kubernetes DNS schema (services, headless endpoints, SRV, pods) from the apiserver "
     "over UDP and TCP; forward other names to --upstream servers."),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeling",
        description="A Kubernetes-compatible node toolkit: control plane and node daemons in readable Python.")
    parser.add_argument("--version", action="version", version=f"kubeling {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default %(default)s: quiet)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("apiserver", help="run the Kubernetes API server",
                       description="Serve the Kubernetes REST API on a durable store. Writes DATA_DIR/admin.kubeconfig "
                                   "for kubectl.")
    add_apiserver_args(p)
    p.set_defaults(func=cmd_apiserver)
    p = sub.add_parser("server", help="run the control plane in one process: apiserver, scheduler, controllers",
                       description="The whole control plane in one process, like k3s: the apiserver, and the "
                                   "scheduler and controller-manager as its clients over HTTP.")
    add_apiserver_args(p)
    from controllers.manager import add_args as add_cm_args
    add_cm_args(p, standalone=False)
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                   help="scheduler and controllers act only while holding their Leases (for several servers "
                        "on one store; default off)")
    p.add_argument("--scheduler-kubeconfig", default="", metavar="FILE",
                   help="the in-process scheduler's own credentials, e.g. `kubeling pki init`'s "
                        "scheduler.kubeconfig (system:kube-scheduler; default: DATA_DIR/admin.kubeconfig)")
    p.add_argument("--controller-manager-kubeconfig", default="", metavar="FILE",
                   help="the in-process controllers' own credentials, e.g. controller-manager.kubeconfig "
                        "(system:kube-controller-manager; default: DATA_DIR/admin.kubeconfig)")
    p.set_defaults(func=cmd_apiserver)
    p = sub.add_parser("pki", help="make the cluster's CA, certificates and kubeconfigs",
                       description="The cluster PKI (ECDSA P-256): `pki init` for the control plane, `pki node` "
                                   "for each agent. Idempotent: existing files are kept.")
    from . import pki_cli
    pki_cli.add_args(p)
    p = sub.add_parser("store", help="store maintenance: migrate a cluster's state between backends",
                       description="Store maintenance.")
    store_sub = p.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)
    from apiserver.store import migrate
    sp = store_sub.add_parser("migrate", help="copy every object from one store to another",
                              description="Copy a cluster's state, e.g. --from sqlite:///var/lib/kubeling/state.db "
                                          "--to etcd://127.0.0.1:2379. Stop the apiserver first.")
    migrate.add_args(sp)
    sp.set_defaults(func=migrate.run)
    # The other daemons: each module offers add_args(parser) and run(args) -> exit code.
    for name, module, help_, description in DAEMONS:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=description)
        mod.add_args(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
