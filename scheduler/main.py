"""`kubeling scheduler`: the command-line face of scheduler.Scheduler.

The lead wires it as:
    p = sub.add_parser("scheduler", ...); scheduler.main.add_args(p); ...; scheduler.main.run(args)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from kube.client import Client, ConfigError

from .metrics import Metrics
from .scheduler import DEFAULT_SCHEDULER, Scheduler, default_identity

log = logging.getLogger("kubeling.scheduler")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig of the apiserver (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER,
                        help="schedule pods whose spec.schedulerName is this (default %(default)s)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                        help="run for leadership of a Lease before scheduling, so replicas can run "
                             "(default: on)")
    parser.add_argument("--leader-elect-lease-duration", type=float, default=15.0, metavar="SECONDS")
    parser.add_argument("--leader-elect-renew-deadline", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--leader-elect-retry-period", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--leader-elect-resource-namespace", default="kube-system")
    parser.add_argument("--leader-elect-resource-name", default="kube-scheduler")
    parser.add_argument("--identity", default=None, help="leader election identity (default: host_pid_random)")
    parser.add_argument("--percentage-of-nodes-to-score", type=int, default=0, metavar="PCT",
                        help="stop filtering after this share of nodes fit (0: upstream's adaptive default)")
    parser.add_argument("--binders", type=int, default=16, help="concurrent bind requests (default %(default)s)")
    parser.add_argument("--metrics-address", default="127.0.0.1:10259", metavar="HOST:PORT",
                        help="serve Prometheus /metrics here (default %(default)s; '' or 0 disables)")


def scheduler_from_args(client: Client, args: argparse.Namespace) -> Scheduler:
    return Scheduler(client, scheduler_name=args.scheduler_name, binders=args.binders,
                     leader_elect=args.leader_elect, identity=args.identity or default_identity(),
                     lease_namespace=args.leader_elect_resource_namespace,
                     lease_name=args.leader_elect_resource_name,
                     lease_duration=args.leader_elect_lease_duration,
                     renew_deadline=args.leader_elect_renew_deadline,
                     retry_period=args.leader_elect_retry_period,
                     percentage_of_nodes_to_score=args.percentage_of_nodes_to_score)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 2 on a bad configuration."""
    try:
        client = Client.from_kubeconfig(args.kubeconfig)
    except (ConfigError, OSError) as e:
        log.error("scheduler: %s", e)
        print(f"kubeling scheduler: {e}", file=sys.stderr)
        return 2
    try:
        sched = scheduler_from_args(client, args)
    except ValueError as e:
        print(f"kubeling scheduler: {e}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    metrics_server = serve_metrics(sched.metrics, args.metrics_address, "scheduler")
    sched.start()
    log.info("scheduler: running name=%s identity=%s", sched.scheduler_name, sched.identity)
    done.wait()
    sched.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    client.close()
    return 0


def serve_metrics(metrics: Metrics, address: str, who: str) -> Any:
    """Start the /metrics server, or None when disabled or the address is taken (logged, not fatal:
    a second replica on one machine still schedules)."""
    if not address or address == "0":
        return None
    try:
        return metrics.serve(address)
    except (OSError, ValueError) as e:
        log.warning("%s: cannot serve metrics on %s: %s", who, address, e)
        return None
