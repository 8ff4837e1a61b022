"""A loopback port forward into a lab namespace: 127.0.0.1:PORT here -> HOST:PORT inside another netns.

    python -m kubeling.lab.forward --listen 127.0.0.1:16443 --netns kl-lab-control --to 192.168.56.10:6443

It listens in the namespace it was started in (the machine's own, for kubectl) and, for every
accepted connection, makes a socket *inside* the target namespace with `cni.nsfd.netns_socket`
(a short-lived child enters the netns and hands the socket back; this process never calls setns)
and connects it there. So no address or route is added to the machine's namespace: the lab stays
reachable only through this one loopback socket. Bytes are copied both ways until either side closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from cni.nsfd import netns_socket

from .topology import NETNS_DIR

log = logging.getLogger("kubeling.lab.forward")


def parse_hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"kubeling lab forward: {flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:16443")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


class Forwarder:
    def __init__(self, netns_path: str, target: tuple[str, int]) -> None:
        self.netns_path = netns_path
        self.target = target

    async def open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raw = netns_socket(self.netns_path, socket.AF_INET, socket.SOCK_STREAM, 0)
        sock = socket.socket(fileno=raw.detach())  # a socket.socket, for asyncio
        try:
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, self.target), 10)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            treader, twriter = await self.open_target()
        except (OSError, TimeoutError) as e:
            log.warning("cannot reach target=%s:%d netns=%s error=%r", *self.target, self.netns_path, e)
            cwriter.close()
            return
        try:
            await asyncio.gather(_pipe(creader, twriter), _pipe(treader, cwriter))
        finally:
            for w in (cwriter, twriter):
                w.close()


async def serve(listen: tuple[str, int], fwd: Forwarder) -> None:
    server = await asyncio.start_server(fwd.handle, listen[0], listen[1], reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    log.info("forwarding listen=%s:%d target=%s:%d netns=%s", listen[0], port, *fwd.target, fwd.netns_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeling.lab.forward",
                                description="Forward a loopback port to HOST:PORT inside a network namespace.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen, in this namespace")
    p.add_argument("--netns", required=True, metavar="NAME", help="target namespace (name under /var/run/netns, or a path)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="address to connect to inside --netns")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    path = args.netns if "/" in args.netns else os.path.join(NETNS_DIR, args.netns)
    if not os.path.exists(path):
        print(f"kubeling lab forward: netns {path} does not exist", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(parse_hostport(args.listen, "--listen"), Forwarder(path, parse_hostport(args.to, "--to"))))
    except OSError as e:
        print(f"kubeling lab forward: cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
