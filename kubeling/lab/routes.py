"""`python -m kubeling.lab.routes`: host-gw routes to every node's podCIDR in the namespace it runs in.

    nsenter --net=/var/run/netns/<prefix>-control python -m kubeling.lab.routes --kubeconfig F

The lab runs it in the control-plane namespace, so that what runs there (kube-dns's `kubeling dns`,
the apiserver behind 10.96.0.1) can answer pods at their own addresses: a pod's packet to a
ClusterIP is DNATed on its node to 192.168.56.10 and may arrive with the pod's source address
(the node masquerades only what its CNI rule catches), and the reply to 10.244.N.x needs a route
back. The same agent.routes.NodeRoutes the agents run on the workers keeps them (proto 212) from
the Node objects; the control plane is not a Node, so it routes to every node's podCIDR. The
routes live in the lab's own namespace and go with it at `lab down`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeling.lab.routes", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True, metavar="FILE")
    p.add_argument("--name", default="control", help="this host's name (a Node of that name gets no route)")
    args = p.parse_args(argv)
    from agent.routes import IPRouteHost, NodeRoutes
    from kube.client import Client, ConfigError
    from kubeling.cli import setup_logging

    setup_logging("warning")
    logging.getLogger("kubeling").setLevel(logging.INFO)  # each route added or deleted, one line

    try:
        client = Client.from_kubeconfig(args.kubeconfig)
    except ConfigError as e:
        print(f"kubeling.lab.routes: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    routes = NodeRoutes(client, args.name, IPRouteHost(None))
    routes.start()
    stop.wait()
    routes.stop()  # the routes stay: they belong to the namespace, which `lab down` removes
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
