"""`kubeling proxy`: the service proxy daemon (iptables mode).

Runs until SIGTERM/SIGINT and then exits without touching the rules (they keep traffic
flowing while the proxy is down). `--cleanup` removes every chain and route of ours and
exits. With `--netns NAME` every rule, route and conntrack change happens inside that
network namespace while the daemon itself stays where it is (the lab and tests).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("kubeling.proxy")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class UsageError(Exception):
    """Bad command-line input: the message says what was wrong."""


def parse_duration(text: str, what: str) -> float:
    """'1s', '200ms', '0.2', '5m' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"{what}: {text!r} is not a duration (use e.g. 200ms, 1s, 0.5, 5m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_cidr(text: str, what: str) -> str:
    if not text:
        return ""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a CIDR (e.g. 10.244.0.0/16)") from None
    if net.version != 4:
        raise UsageError(f"{what}: only IPv4 is supported, got {text!r}")
    return str(net)


def parse_address(text: str) -> str:
    """HOST:PORT for the metrics server; '' or '0' disables it."""
    if text in ("", "0"):
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-address: {text!r} is not HOST:PORT (e.g. 127.0.0.1:10249; '' disables)")
    try:
        ipaddress.ip_address(host.strip("[]") or "127.0.0.1")
    except ValueError:
        raise UsageError(f"--metrics-address: {host!r} is not an IP address") from None
    return text


def check_netns(name: str | None) -> None:
    if not name:
        return
    from .nsexec import netns_path
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--netns: give a namespace name under /var/run/netns, not a path ({name!r})")
    if not os.path.exists(netns_path(name)):
        raise UsageError(f"--netns: no network namespace {name!r} ({netns_path(name)} does not exist)")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-name", required=True, metavar="NAME",
                   help="the node this proxy runs for (its Node object's InternalIP answers NodePorts)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig to reach the apiserver (default: $KUBECONFIG "
                                                          "or ~/.kube/config)")
    src.add_argument("--apiserver", metavar="URL[,URL...]",
                     help="apiserver URL without credentials, e.g. http://127.0.0.1:6443; several apiservers of one "
                          "cluster, comma-separated, are used in turn when one fails (so may a kubeconfig's server)")
    p.add_argument("--netns", metavar="NAME", help="apply rules, routes and conntrack changes inside this network "
                                                   "namespace (a name under /var/run/netns, as `ip netns` makes); the daemon "
                                                   "itself stays in its own")
    p.add_argument("--min-sync-period", default="1s", metavar="DURATION",
                   help="at most one sync per this period; changes are coalesced (default %(default)s)")
    p.add_argument("--sync-period", default="30s", metavar="DURATION",
                   help="full resync at least this often even without changes (default %(default)s)")
    p.add_argument("--metrics-address", default="127.0.0.1:10249", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here; '' disables (default %(default)s)")
    p.add_argument("--cluster-cidr", default="", metavar="CIDR",
                   help="pod range of the cluster: traffic to a ClusterIP from outside it is masqueraded "
                        "(default: the Node's spec.podCIDR)")
    p.add_argument("--service-cidr", default="10.96.0.0/12", metavar="CIDR",
                   help="ClusterIP range; routed via the node bridge when the node has no default route "
                        "(default %(default)s)")
    p.add_argument("--masquerade-all", action="store_true", help="masquerade all traffic to ClusterIPs")
    p.add_argument("--iptables-mode", default="auto", choices=["auto", "legacy", "nft"],
                   help="iptables backend; auto detects which one the node already uses (default %(default)s)")
    p.add_argument("--cleanup", action="store_true", help="remove every chain and route of ours, then exit")


def run(args: argparse.Namespace) -> int:
    """The subcommand: bad input is one line on stderr and exit code 2."""
    try:
        return _run(args)
    except UsageError as e:
        print(f"kubeling proxy: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from kube.client import Client, ConfigError

    from .conntrack import ExecConntrack
    from .routes import IPRouteHost

    if not args.node_name or not args.node_name.strip():
        raise UsageError("--node-name must not be empty")
    min_sync = parse_duration(args.min_sync_period, "--min-sync-period")
    sync_period = parse_duration(args.sync_period, "--sync-period")
    if sync_period <= 0:
        raise UsageError("--sync-period must be positive")
    cluster_cidr = parse_cidr(args.cluster_cidr, "--cluster-cidr")
    service_cidr = parse_cidr(args.service_cidr, "--service-cidr")
    metrics_address = parse_address(args.metrics_address)
    check_netns(args.netns)
    netns = args.netns or None

    from . import iptables
    mode = args.iptables_mode if args.iptables_mode != "auto" else iptables.detect_mode(netns)
    backend = iptables.RestoreBackend(mode, netns=netns)
    host = IPRouteHost(netns)

    if args.cleanup:
        backend.cleanup()
        removed = host.remove_service_routes()
        log.info("cleaned up: %s chains and %d route(s) removed", mode, removed)
        return 0

    try:
        client = Client(args.apiserver) if args.apiserver else Client.from_kubeconfig(args.kubeconfig)
    except ConfigError as e:
        raise UsageError(f"cannot reach the apiserver: {e}") from None

    from .metrics import Metrics
    from .proxier import Proxier, ProxierConfig

    conntrack = ExecConntrack(netns)
    if not conntrack.available():
        log.warning("the conntrack tool is missing (apt-get install conntrack): stale UDP flows will not be "
                    "cleared when endpoints change")
    metrics = Metrics()
    server = None
    if metrics_address:
        try:
            server = metrics.serve(metrics_address)
        except OSError as e:
            raise UsageError(f"--metrics-address {metrics_address}: {e.strerror or e}") from None

    cfg = ProxierConfig(node_name=args.node_name, min_sync_period=min_sync, sync_period=sync_period,
                        cluster_cidr=cluster_cidr, service_cidr=service_cidr, masquerade_all=args.masquerade_all)
    proxier = Proxier(client, cfg, backend, host=host, conntrack=conntrack if conntrack.available() else None,
                      metrics=metrics)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("got signal %d: stopping (the rules stay in place)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("proxy starting: node=%s mode=%s netns=%s metrics=%s", args.node_name, mode, netns or "-",
             metrics_address or "-")
    proxier.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        proxier.stop()
        if server is not None:
            server.shutdown()
        client.close()
    return 0
