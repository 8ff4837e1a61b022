"""Run a short-lived command in the target network namespace (or here).

The daemon never calls setns() itself (house rule 6): `nsenter --net=PATH` is the
short-lived child that enters the namespace. `netns` is a name under
/var/run/netns, a path, or None for the daemon's own namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

NETNS_DIR = "/var/run/netns"
TIMEOUT = 20.0


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)


def argv_in(netns: str | None, argv: Sequence[str]) -> list[str]:
    """The argument list that runs argv inside netns."""
    if not netns:
        return list(argv)
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def run(netns: str | None, argv: Sequence[str], *, timeout: float = TIMEOUT,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv in netns; never raises for a non-zero exit (callers read returncode)."""
    return subprocess.run(argv_in(netns, argv), capture_output=True, text=True, timeout=timeout, input=input,
                          check=False)
