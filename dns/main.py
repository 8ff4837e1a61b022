"""`kubeling dns`: the cluster DNS server.

    kubeling dns --kubeconfig F --listen 127.0.0.1:53 [--domain cluster.local] [--upstream IP:PORT ...]
                 [--metrics-address 127.0.0.1:9153]

Serves the Kubernetes DNS schema (see dns/records.py) over UDP and TCP until SIGTERM/SIGINT, and
Prometheus metrics with CoreDNS's names on --metrics-address (see dns/metrics.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("kubeling.dns")


class UsageError(Exception):
    """Bad command-line input: the message says what was wrong."""


def parse_hostport(text: str, what: str, default_port: int = 53) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"{what}: {text!r} is not IP:PORT (e.g. 127.0.0.1:53)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{what}: {host!r} is not an IPv4 address") from None
    if ip.version != 4:
        raise UsageError(f"{what}: only IPv4 is supported, got {host!r}")
    return str(ip), int(port)


def add_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig to reach the apiserver (default: $KUBECONFIG "
                                                          "or ~/.kube/config)")
    src.add_argument("--apiserver", metavar="URL[,URL...]", help="apiserver URL without credentials")
    p.add_argument("--listen", default="127.0.0.1:53", metavar="IP:PORT",
                   help="serve DNS on this address, UDP and TCP (default %(default)s)")
    p.add_argument("--domain", default="cluster.local", help="the cluster domain (default %(default)s)")
    p.add_argument("--upstream", action="append", default=[], metavar="IP:PORT",
                   help="forward names outside the domain here (repeatable, tried in turn); "
                        "without one they get SERVFAIL")
    p.add_argument("--ttl", type=int, default=5, metavar="SECONDS", help="TTL of every answer (default %(default)s)")
    p.add_argument("--metrics-address", default="127.0.0.1:9153", metavar="IP:PORT",
                   help="serve Prometheus /metrics here (CoreDNS's port); '' disables (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as e:
        print(f"kubeling dns: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from kube.client import Client, ConfigError

    from .metrics import Metrics
    from .server import ClusterZone, DnsServer, Resolver

    host, port = parse_hostport(args.listen, "--listen")
    metrics_at = parse_hostport(args.metrics_address, "--metrics-address", 9153) if args.metrics_address else None
    upstreams = [parse_hostport(u, "--upstream") for u in args.upstream]
    domain = args.domain.strip(".").lower()
    if not domain:
        raise UsageError("--domain must not be empty")
    if args.ttl < 0:
        raise UsageError("--ttl must not be negative")
    try:
        client = Client(args.apiserver) if args.apiserver else Client.from_kubeconfig(args.kubeconfig)
    except ConfigError as e:
        raise UsageError(f"cannot reach the apiserver: {e}") from None
    metrics = Metrics(f"dns://{host}:{port}")
    try:
        metrics_server = metrics.serve(*metrics_at) if metrics_at else None
    except OSError as e:
        client.close()
        raise UsageError(f"--metrics-address {args.metrics_address}: {e.strerror or e}") from None
    zone = ClusterZone(client, domain).start()
    server = DnsServer(Resolver(zone, domain, args.ttl, upstreams), host, port, metrics=metrics)
    try:
        server.start()
    except OSError as e:
        zone.stop()
        client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
        raise UsageError(f"--listen {args.listen}: {e.strerror or e}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("dns serving %s on %s:%d upstreams=%s metrics=%s", domain, host, server.port,
             ",".join(f"{h}:{p}" for h, p in upstreams) or "-", args.metrics_address or "-")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        zone.stop()
        client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0
