"""Node-level side effects outside rtnetlink: the ip_forward sysctl and the
ipMasq rule.  Both are shared by all pods of a network, so they are ensured on
every ADD (level-triggered, cheap when already right) and never rolled back.
"""

from __future__ import annotations

import os

from cni.errors import FIREWALL_FAILURE, IO_FAILURE, CNIError
from cni.netlink import netns_path

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
MASQ_CHAIN = "KL-CNI-MASQ"
_TIMEOUT = 20.0

# subprocess is imported only where iptables runs (ipMasq): ~3 ms of an exec'd ADD otherwise
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess


def ensure_ip_forward(netns: str | None) -> None:
    """net.ipv4.ip_forward=1 in the node namespace (a new netns starts with 0)."""
    try:
        if netns is None:
            with open(IP_FORWARD, "r+") as f:
                if f.read().strip() != "1":
                    f.seek(0)
                    f.write("1")
            return
        from cni.nsfd import write_sysctl_in_netns
        write_sysctl_in_netns(netns_path(netns), IP_FORWARD, "1")
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot enable net.ipv4.ip_forward: {e}",
                       "the plugin must run as root in the node's network namespace") from None


def _cmd(netns: str | None, argv: list[str]) -> list[str]:
    if netns is None:
        return argv
    return ["nsenter", f"--net={netns_path(netns)}", *argv]


def _run(netns: str | None, argv: list[str]) -> subprocess.CompletedProcess[str]:
    import subprocess
    try:
        return subprocess.run(_cmd(netns, argv), capture_output=True, text=True, timeout=_TIMEOUT)
    except FileNotFoundError:
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} not found",
                       "install iptables (Debian: apt-get install iptables) or set ipMasq false") from None
    except subprocess.TimeoutExpired:
        raise CNIError(FIREWALL_FAILURE, f"{argv[0]} did not finish within {_TIMEOUT:.0f}s") from None


def masq_rule(network: str, subnet: str, exclude: str = "") -> list[str]:
    """The rule (as iptables arguments after the chain) masquerading traffic that leaves the pod CIDR
    (or `exclude`, e.g. the cluster CIDR, when set)."""
    return ["-s", subnet, "!", "-d", exclude or subnet, "-m", "comment", "--comment", f"kubeling-cni:{network}",
            "-j", "MASQUERADE"]


class MasqueradeCheck:
    """ensure_masquerade split in two so the `iptables-save` runs while ADD does its netlink work.

    start() spawns the save; finish() reads it and, only if something is
    missing, fixes it with -N/-C/-A.  Fast path: one process, overlapped.
    """

    def __init__(self, network: str, subnet: str, backend: str, netns: str | None, exclude: str = "") -> None:
        self.network, self.subnet, self.netns, self.exclude = network, subnet, netns, exclude
        self.ipt = f"iptables-{backend}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> MasqueradeCheck:
        import subprocess
        if self.netns is None and not any(os.access(f"{d}/{self.ipt}", os.X_OK)
                                          for d in os.environ.get("PATH", "/usr/sbin:/sbin").split(":") if d):
            raise CNIError(FIREWALL_FAILURE, f"{self.ipt} not found",
                           "install iptables (Debian: apt-get install iptables) or set ipMasq false")
        try:
            self.proc = subprocess.Popen(_cmd(self.netns, [f"{self.ipt}-save", "-t", "nat"]),
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            raise CNIError(FIREWALL_FAILURE, f"{self.ipt}-save not found",
                           "install iptables (Debian: apt-get install iptables) or set ipMasq false") from None
        return self

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.communicate(timeout=_TIMEOUT)
            self.proc = None

    def finish(self) -> None:
        if self.proc is None:
            self.start()
        assert self.proc is not None
        import subprocess
        try:
            out, _ = self.proc.communicate(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise CNIError(FIREWALL_FAILURE, f"{self.ipt}-save did not finish within {_TIMEOUT:.0f}s") from None
        ok = self.proc.returncode == 0
        self.proc = None
        rule = masq_rule(self.network, self.subnet, self.exclude)
        jump_line = f"-A POSTROUTING -j {MASQ_CHAIN}"
        # iptables-save prints the comment in double quotes
        rule_line = f"-A {MASQ_CHAIN} " + " ".join(f'"{a}"' if a.startswith("kubeling-cni:") else a for a in rule)
        lines = set(out.splitlines()) if ok else set()
        if jump_line in lines and rule_line in lines:
            return
        _fix_masquerade(self.ipt, rule, self.netns)


def ensure_masquerade(network: str, subnet: str, backend: str, netns: str | None, exclude: str = "") -> None:
    """nat POSTROUTING -> KL-CNI-MASQ -> MASQUERADE for src in subnet, dst outside it (or outside `exclude`)."""
    MasqueradeCheck(network, subnet, backend, netns, exclude).start().finish()


def _fix_masquerade(ipt: str, rule: list[str], netns: str | None) -> None:
    new = _run(netns, [ipt, "-w", "5", "-t", "nat", "-N", MASQ_CHAIN])
    if new.returncode not in (0, 1):  # 1: chain already exists
        raise CNIError(FIREWALL_FAILURE, f"cannot create nat chain {MASQ_CHAIN}", new.stderr.strip())
    for chain, args in (("POSTROUTING", ["-j", MASQ_CHAIN]), (MASQ_CHAIN, rule)):
        chk = _run(netns, [ipt, "-w", "5", "-t", "nat", "-C", chain, *args])
        if chk.returncode == 0:
            continue
        add = _run(netns, [ipt, "-w", "5", "-t", "nat", "-A", chain, *args])
        if add.returncode != 0:
            raise CNIError(FIREWALL_FAILURE, f"cannot add ipMasq rule to {chain}", add.stderr.strip())
