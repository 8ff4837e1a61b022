"""`scripts/cis-check`: the CIS Kubernetes Benchmark items that apply to kubeling, checked for real.

    scripts/cis-check --lab-dir .lab          the lab's running processes (supervisor.json PIDs)
    scripts/cis-check                         every kubeling/etcd process on this machine (a Vagrant VM)
    scripts/cis-check --root DIR              files rendered by `scripts/provision-* --render DIR` (static)

Benchmark: CIS Kubernetes Benchmark v1.12 (kube-bench's cis-1.12, the one it maps Kubernetes 1.32
to): section 1 (control plane: 1.1 files, 1.2 API server, 1.3 controller manager, 1.4 scheduler), 2
(etcd, when the store is etcd) and 4 (worker: 4.1 files, 4.2 kubelet = the agent, 4.3 kube-proxy).
Section 3 (authentication policy, audit policy) and 5 (workload policies) are about how a cluster is
used, not how it is set up, and are not checked.

Evidence comes from what runs, never from what the lab meant to run: each process's command line
(/proc/PID/cmdline; a unit's ExecStart with its EnvironmentFile expanded in --root mode), the files
its flags name (mode and owner by stat), and live probes made from inside the process's network
namespace by a short-lived `nsenter` child: a request without credentials gets 401, a TLS 1.1 or CBC
handshake is refused (and the TLS 1.2 suites the server accepts are enumerated), the agent's
read-only port 10255 is closed, the listening sockets of a process (/proc/PID/net/tcp + its fds)
are the ones its flags claim. Items kubeling has no equivalent for are N/A with the reason (and
"not implemented" when a gap is what makes them not apply); the README lists those.

Mapping for `kubeling server` (apiserver, scheduler and controllers in one process, like k3s): the
scheduler's and controller manager's "pod specification file" is the server's, their --profiling is
the server's, and their --bind-address items pass when the process listens on nothing but the
apiserver's own address: the in-process components have no listener (their metrics are served by the
apiserver's authenticated /metrics). A standalone `kubeling scheduler` / `controller-manager` must
bind its --metrics-address to 127.0.0.1.

Exit status 0 only when no item FAILs.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BENCHMARK = "CIS Kubernetes Benchmark v1.12 (kube-bench cis-1.12: Kubernetes 1.32)"
KUBELING_KINDS = ("server", "apiserver", "scheduler", "controller-manager", "agent", "proxy", "dns")
CONTROL_KINDS = ("server", "apiserver")
READ_ONLY_PORT = 10255  # the kubelet's read-only port, which must not answer

# CIS 1.2.29 (apiserver) and 4.2.12 (kubelet): the suites allowed, IANA names
API_STRONG = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
              "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
              "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
              "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
              "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"}
KUBELET_STRONG = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                  "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                  "TLS_RSA_WITH_AES_256_GCM_SHA384", "TLS_RSA_WITH_AES_128_GCM_SHA256"}


class CheckError(Exception):
    """Nothing to check (no lab, no processes, no rendered units); the message says what to do."""


# ---------------------------------------------------------------------------------------------- results

@dataclass
class Item:
    id: str
    text: str
    status: str  # PASS, FAIL, N/A
    evidence: str
    scope: str = ""  # a node name for per-node items

    def line(self) -> str:
        where = f" [{self.scope}]" if self.scope else ""
        return f"{self.status:<4} {self.id:<7}{where} {self.text}\n       {self.evidence}"


def passed(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------- processes

def parse_flags(tokens: Iterable[str]) -> dict[str, list[str]]:
    """--flag=value, --flag value, and bare --flag (= "true"); repeated flags keep every value."""
    toks = list(tokens)
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(toks):
        tok = toks[i]
        i += 1
        if not tok.startswith("--"):
            continue
        name, eq, value = tok.partition("=")
        if not eq:
            if i < len(toks) and not toks[i].startswith("--"):
                value = toks[i]
                i += 1
            else:
                value = "true"
        out.setdefault(name, []).append(value)
    return out


def parse_command(argv: list[str]) -> tuple[str, dict[str, list[str]]] | None:
    """(kind, flags) of a kubeling daemon or etcd command line; None for anything else."""
    if not argv:
        return None
    if os.path.basename(argv[0]) == "etcd":
        return "etcd", parse_flags(argv[1:])
    is_kubeling = os.path.basename(argv[0]) == "kubeling" or any(
        a == "kubeling.cli" or a.endswith("/kubeling") for a in argv[:4])
    if not is_kubeling:
        return None
    for i, tok in enumerate(argv[1:], start=1):
        if tok in KUBELING_KINDS and argv[i - 1] != "--log-level":
            return tok, parse_flags(argv[i + 1:])
    return None


@dataclass
class Proc:
    kind: str
    label: str
    argv: list[str]
    flags: dict[str, list[str]]
    spec_file: str = ""  # where its command line is written down: a unit file, the lab's programs.json
    pid: int | None = None  # None: static (--root), nothing runs
    user: str = "root"

    def get(self, flag: str, default: str | None = None) -> str | None:
        values = self.flags.get(flag)
        return values[-1] if values else default

    def values(self, flag: str) -> list[str]:
        return list(self.flags.get(flag, []))

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def node(self) -> str:
        return self.get("--node-name") or ""

    @property
    def netns(self) -> str | None:
        return f"/proc/{self.pid}/ns/net" if self.pid else None

    def shown(self, flag: str) -> str:
        v = self.get(flag)
        return f"{flag}={v}" if v is not None else f"{flag} not set"


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def proc_user(pid: int) -> str:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "?"


def label_for(kind: str, flags: dict[str, list[str]]) -> str:
    node = (flags.get("--node-name") or [""])[-1]
    return f"{kind} {node}" if node else kind


def unit_of(pid: int) -> str:
    """The systemd unit file a process was started from ("" when none): /proc/PID/cgroup names the unit."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return ""
    m = re.search(r"/([A-Za-z0-9@._-]+\.service)(/|$)", text)
    if not m:
        return ""
    for d in ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"):
        if os.path.exists(os.path.join(d, m.group(1))):
            return os.path.join(d, m.group(1))
    return ""


# ---------------------------------------------------------------------------------------------- targets

@dataclass
class Target:
    """What is checked: processes (live or rendered), where their files are, how to probe them."""

    procs: list[Proc]
    root: str = ""  # --root: the rendered files; "" = this machine
    admin: tuple[str, str, str] | None = None  # (ca, cert, key) for authenticated probes (the lab's admin)
    admin_kubeconfigs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # programs that should run and do not
    peers: dict[str, tuple[str, str]] = field(default_factory=dict)  # identity -> (cert, key) for 403 probes

    @property
    def live(self) -> bool:
        return not self.root

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/")) if self.root and os.path.isabs(p) else p

    def of(self, *kinds: str) -> list[Proc]:
        return [p for p in self.procs if p.kind in kinds]


def from_lab(lab_dir: str) -> Target:
    """The lab's supervised programs that run (their PIDs from supervisor.json, checked by starttime)."""
    from .labpki import LabPKI
    from .state import LabState, alive

    lab_dir = os.path.abspath(lab_dir)
    state = LabState.load(os.path.join(lab_dir, "state.json"))
    if state is None or state.phase != "up":
        raise CheckError(f"no lab up in {lab_dir}: `scripts/lab up` first (or give --root / no option)")
    try:
        with open(os.path.join(lab_dir, "supervisor.json")) as f:
            status = json.load(f).get("programs") or {}
    except (OSError, ValueError) as e:
        raise CheckError(f"{lab_dir}/supervisor.json: {e}") from None
    procs, missing = [], []
    for name, prog in sorted(status.items()):
        pid, start = int(prog.get("pid") or 0), int(prog.get("starttime") or 0)
        if not (pid and alive(pid, start)):
            if prog.get("enabled", True):
                missing.append(name)
            continue
        argv = read_cmdline(pid)
        parsed = parse_command(argv)
        if parsed is None:
            continue
        kind, flags = parsed
        procs.append(Proc(kind, label_for(kind, flags), argv, flags, os.path.join(lab_dir, "programs.json"), pid,
                          proc_user(pid)))
    pki = LabPKI(os.path.join(lab_dir, "state", "pki"))
    crt, key = pki.cert("admin")
    peers = {"system:kube-proxy": pki.cert("proxy")}
    peers.update({f"system:node:{n}": pki.cert(f"nodes/{n}/client") for n in state.nodes})
    return Target(procs, admin=(pki.ca, crt, key), missing=missing, peers=peers,
                  admin_kubeconfigs=[os.path.join(lab_dir, "kubeconfig"), pki.kubeconfig("admin")])


def from_host(kubeconfig_pki: str = "") -> Target:
    """Every kubeling daemon and etcd running on this machine (a VM provisioned by scripts/provision-*)."""
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = read_cmdline(pid)
        parsed = parse_command(argv)
        if parsed is None:
            continue
        kind, flags = parsed
        procs.append(Proc(kind, label_for(kind, flags), argv, flags, unit_of(pid), pid, proc_user(pid)))
    target = Target(procs)
    if kubeconfig_pki:
        target.admin = (os.path.join(kubeconfig_pki, "ca.crt"), os.path.join(kubeconfig_pki, "admin.crt"),
                        os.path.join(kubeconfig_pki, "admin.key"))
        target.admin_kubeconfigs = [os.path.join(kubeconfig_pki, "admin.kubeconfig")]
        target.peers = {"system:kube-proxy": (os.path.join(kubeconfig_pki, "proxy.crt"),
                                              os.path.join(kubeconfig_pki, "proxy.key"))}
    return target


# --- static: systemd units rendered by scripts/provision-* --render DIR

def read_env_file(path: str) -> dict[str, str]:
    """A systemd EnvironmentFile: KEY=VALUE lines, '#' comments, optional quotes."""
    env: dict[str, str] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return env
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ${VAR} is one word, $VAR alone splits on whitespace."""
    out: list[str] = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            out += env.get(m.group(1), "").split()
            continue
        out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda mm: env.get(mm.group(1), ""), word))
    return out


def read_unit(path: str, root: str) -> tuple[list[str], str]:
    """(ExecStart argv, User=) of a unit file, environment files under root."""
    env: dict[str, str] = {}
    exec_line, user = "", "root"
    with open(path) as f:
        text = f.read().replace("\\\n", " ")  # systemd's line continuation
    for line in text.splitlines():
        if line.lstrip().startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "EnvironmentFile":
            env.update(read_env_file(os.path.join(root, value.lstrip("-").lstrip("/"))))
        elif key == "Environment":
            for kv in shlex.split(value):
                k, _, v = kv.partition("=")
                env[k] = v
        elif key == "ExecStart":
            exec_line = value.lstrip("-@+!")
        elif key == "User":
            user = value
    return expand_exec(exec_line, env), user


def from_root(root: str) -> Target:
    root = os.path.abspath(root)
    units = os.path.join(root, "etc", "systemd", "system")
    procs = []
    try:
        names = sorted(n for n in os.listdir(units) if n.startswith("kubeling-") and n.endswith(".service"))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(units, name)
        argv, user = read_unit(path, root)
        parsed = parse_command(argv)
        if parsed is None:
            continue
        kind, flags = parsed
        procs.append(Proc(kind, label_for(kind, flags), argv, flags, "/" + os.path.relpath(path, root), None, user))
    if not procs:
        raise CheckError(f"no kubeling units under {units}: render them with `scripts/provision-control "
                         f"--render {root}` (or provision-node)")
    pki_dir = os.path.join(root, "var", "lib", "kubeling", "pki")
    return Target(procs, root=root, admin_kubeconfigs=["/var/lib/kubeling/pki/admin.kubeconfig"]
                  if os.path.exists(os.path.join(pki_dir, "admin.kubeconfig")) else [])


# ---------------------------------------------------------------------------------------------- files

def file_info(target: Target, path: str) -> tuple[int, str] | None:
    """(permission bits, "owner:group") of a file, or None when it is not there."""
    try:
        st = os.stat(target.path(path))
    except OSError:
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return stat.S_IMODE(st.st_mode), f"{owner}:{group}"


def at_most(mode: int, limit: int) -> bool:
    """mode is `limit` or more restrictive: no bit outside limit's."""
    return mode & ~limit == 0


def perm_item(target: Target, cid: str, text: str, paths: list[str], limit: int, scope: str = "",
              none_reason: str = "") -> Item:
    if not paths:
        return Item(cid, text, "N/A", none_reason or "no such file in this setup", scope)
    seen, bad = [], []
    for p in paths:
        info = file_info(target, p)
        if info is None:
            bad.append(f"{p} missing")
            continue
        seen.append(f"{p} {info[0]:o}")
        if not at_most(info[0], limit):
            bad.append(f"{p} is {info[0]:o}")
    ev = "; ".join(bad) if bad else ", ".join(seen)
    return Item(cid, text, passed(not bad), ev, scope)


def owner_item(target: Target, cid: str, text: str, paths: list[str], want: str = "root:root", scope: str = "",
               none_reason: str = "") -> Item:
    if not paths:
        return Item(cid, text, "N/A", none_reason or "no such file in this setup", scope)
    bad, seen = [], []
    for p in paths:
        info = file_info(target, p)
        if info is None:
            bad.append(f"{p} missing")
        elif info[1] != want:
            bad.append(f"{p} is {info[1]}")
        else:
            seen.append(p)
    return Item(cid, text, passed(not bad), "; ".join(bad) if bad else f"{want}: {', '.join(seen)}", scope)


def tree(target: Target, directory: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every path under directory (as the machine sees it), or those ending in one of suffixes."""
    base = target.path(directory)
    out = [directory] if not suffixes else []
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        shown = directory if rel == "." else os.path.join(directory, rel)
        for d in sorted(dirnames):
            if not suffixes:
                out.append(os.path.join(shown, d))
        for f in sorted(filenames):
            if not suffixes or f.endswith(suffixes):
                out.append(os.path.join(shown, f))
    return out


# ---------------------------------------------------------------------------------------------- probes

# Runs inside a network namespace (a short-lived child: the checker never setns() itself). argv[1] is a
# JSON list of probes; prints a JSON list of results.
PROBE = r"""
import json, socket, ssl, sys, warnings
warnings.simplefilter("ignore")
def ctx_for(p):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if p.get("ca"):
        c.load_verify_locations(p["ca"]); c.check_hostname = False
    else:
        c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
    if p.get("cert"):
        c.load_cert_chain(p["cert"], p["key"])
    if p.get("max"):
        c.maximum_version = getattr(ssl.TLSVersion, p["max"])
    if p.get("min"):
        c.minimum_version = getattr(ssl.TLSVersion, p["min"])
    if p.get("ciphers"):
        c.set_ciphers(p["ciphers"])
    return c
def tls(p):
    s = socket.create_connection((p["host"], p["port"]), timeout=3)
    try:
        t = ctx_for(p).wrap_socket(s, server_hostname=p["host"])
    except (ssl.SSLError, OSError) as e:
        s.close()
        return None, str(e).split("] ")[-1].split(" (_ssl")[0]
    return t, ""
out = []
for p in json.loads(sys.argv[1]):
    r = {}
    try:
        if p["op"] == "connect":
            try:
                socket.create_connection((p["host"], p["port"]), timeout=2).close(); r["open"] = True
            except OSError as e:
                r["open"] = False; r["error"] = e.strerror or str(e)
        elif p["op"] == "tls":
            t, err = tls(p)
            if t is None:
                r["ok"] = False; r["error"] = err
            else:
                r["ok"] = True; r["version"] = t.version(); r["cipher"] = t.cipher()[0]; t.close()
        elif p["op"] == "suites":   # the TLS 1.2 suites the server accepts, its preference first
            got, offer = [], "ALL:@SECLEVEL=0"
            for _ in range(40):
                q = dict(p, op="tls", max="TLSv1_2", ciphers=offer + "".join(":!" + g for g in got))
                t, err = tls(q)
                if t is None:
                    break
                got.append(t.cipher()[0]); t.close()
            r["suites"] = got
        elif p["op"] == "get":   # or another method with a JSON merge patch body
            t, err = tls(p)
            if t is None:
                r["status"] = 0; r["error"] = err
            else:
                body = p.get("body", "").encode()
                head = f"{p.get('method', 'GET')} {p['path']} HTTP/1.0\r\nHost: {p['host']}\r\n"
                if body:
                    head += f"Content-Type: application/merge-patch+json\r\nContent-Length: {len(body)}\r\n"
                with t:
                    t.sendall(head.encode() + b"\r\n" + body)
                    data = b""
                    while chunk := t.recv(65536):
                        data += chunk
                r["status"] = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
                r["body"] = data.partition(b"\r\n\r\n")[2][:300].decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - every probe answers, whatever happened
        r["error"] = f"{type(e).__name__}: {e}"
    out.append(r)
print(json.dumps(out))
"""


def probe(netns: str, probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run probes inside a network namespace (nsenter child); one result per probe."""
    argv = ["nsenter", f"--net={netns}", "--", sys.executable, "-I", "-c", PROBE, json.dumps(probes)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20 + 2 * len(probes))
        got = json.loads(res.stdout) if res.returncode == 0 else []
    except (subprocess.TimeoutExpired, ValueError, OSError):
        got = []
    if len(got) != len(probes):
        got = [{"error": "probe failed"}] * len(probes)
    return list(got)


def listening(pid: int) -> list[str]:
    """"IP:PORT" of the TCP sockets a process listens on (its fds matched with its netns's socket table)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    out = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                out += listening_in(f.read(), inodes)
        except OSError:
            pass
    return sorted(set(out))


def listening_in(table: str, inodes: set[str]) -> list[str]:
    """The LISTEN rows (state 0A) of a /proc/net/tcp{,6} table whose inode is in inodes, as IP:PORT."""
    out = []
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != "0A" or cols[9] not in inodes:
            continue
        addr, port = cols[1].split(":")
        out.append(f"{hex_ip(addr)}:{int(port, 16)}")
    return out


def hex_ip(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    import ipaddress
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return f"[{ipaddress.IPv6Address(words)}]"


def iana(name: str) -> str:
    """OpenSSL's name of a TLS 1.2 suite -> the IANA name the benchmark lists (others unchanged)."""
    m = re.fullmatch(r"ECDHE-(ECDSA|RSA)-(AES128|AES256)-GCM-(SHA256|SHA384)", name)
    if m:
        return f"TLS_ECDHE_{m.group(1)}_WITH_AES_{m.group(2)[3:]}_GCM_{m.group(3)}"
    m = re.fullmatch(r"ECDHE-(ECDSA|RSA)-CHACHA20-POLY1305", name)
    if m:
        return f"TLS_ECDHE_{m.group(1)}_WITH_CHACHA20_POLY1305_SHA256"
    m = re.fullmatch(r"(AES128|AES256)-GCM-(SHA256|SHA384)", name)
    if m:
        return f"TLS_RSA_WITH_AES_{m.group(1)[3:]}_GCM_{m.group(2)}"
    return name


def refusal(result: dict[str, Any]) -> str:
    err = str(result.get("error") or "")
    return "closed in the handshake" if "EOF occurred" in err else err


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    value = value.split("://", 1)[-1].split(",")[0].split("/")[0]
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    return host.strip("[]") or "0.0.0.0", int(port) if port.isdigit() else default_port


def reach(host: str) -> str:
    """Where to connect to reach a listener on host (a wildcard listener answers on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


@dataclass
class TLSFacts:
    """What the live probes saw of one TLS endpoint."""

    handshake: str = ""
    tls11: str = ""
    cbc: str = ""
    suites: list[str] = field(default_factory=list)
    no_cert: dict[str, Any] = field(default_factory=dict)
    admin: list[dict[str, Any]] = field(default_factory=list)
    peer: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)


def probe_tls(proc: Proc, host: str, port: int, target: Target, no_cert_path: str,
              admin_paths: Sequence[str] = (), peer: tuple[str, str] | None = None, peer_paths: Sequence[str] = (),
              extra: Sequence[dict[str, Any]] = ()) -> TLSFacts | None:
    """Handshake facts of proc's TLS endpoint (with the admin certificate when there is one, for servers
    that want one in the handshake), a GET without credentials, admin and peer GETs; None when static."""
    if proc.netns is None:
        return None
    base: dict[str, Any] = {"host": reach(host), "port": port}
    if target.admin:
        base.update(cert=target.admin[1], key=target.admin[2])
    bare = {"host": reach(host), "port": port}
    probes: list[dict[str, Any]] = [
        {**base, "op": "tls"},
        {**base, "op": "tls", "min": "TLSv1", "max": "TLSv1_1", "ciphers": "DEFAULT:@SECLEVEL=0"},
        {**base, "op": "tls", "max": "TLSv1_2", "ciphers": "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
                                                             "AES128-SHA:AES256-SHA:DES-CBC3-SHA:@SECLEVEL=0"},
        {**base, "op": "suites"},
        {**bare, "op": "get", "path": no_cert_path},
    ]
    admin = [{**base, "op": "get", "path": p, "ca": target.admin[0]} for p in admin_paths] if target.admin else []
    peers = [{**bare, "op": "get", "path": p, "cert": peer[0], "key": peer[1]} for p in peer_paths] if peer else []
    got = probe(proc.netns, probes + admin + peers + list(extra))
    f = TLSFacts()
    f.handshake = f"{got[0].get('version')} {got[0].get('cipher')}" if got[0].get("ok") else \
        f"refused: {got[0].get('error')}"
    f.tls11 = "accepted" if got[1].get("ok") else f"refused ({refusal(got[1])})"
    f.cbc = "accepted" if got[2].get("ok") else f"refused ({refusal(got[2])})"
    f.suites = [iana(s) for s in got[3].get("suites", [])]
    f.no_cert = got[4]
    n = len(probes)
    f.admin, f.peer, f.extra = got[n:n + len(admin)], got[n + len(admin):n + len(admin) + len(peers)], \
        got[n + len(admin) + len(peers):]
    return f


# ---------------------------------------------------------------------------------------------- checks

def flag_set(proc: Proc, cid: str, text: str, *flags: str, scope: str = "", extra: str = "") -> Item:
    missing = [f for f in flags if not proc.get(f)]
    shown = ", ".join(proc.shown(f) for f in flags)
    return Item(cid, text, passed(not missing), f"{proc.label}: {shown}{extra}", scope)


def bool_flag(proc: Proc, flag: str, default: bool) -> bool:
    v = proc.get(flag)
    return default if v is None else v.strip().lower() in ("true", "1", "yes")


def number(proc: Proc, flag: str, default: int) -> int:
    try:
        return int(proc.get(flag) or default)
    except ValueError:
        return -1


def not_probed(target: Target) -> str:
    return "" if target.live else " (rendered units: not running here, nothing probed)"


def control_checks(target: Target) -> list[Item]:
    """Sections 1.1-1.4 for the apiserver process (kubeling server or apiserver)."""
    servers = target.of(*CONTROL_KINDS)
    if not servers:
        return []
    api = servers[0]
    items: list[Item] = []
    combined = api.kind == "server"
    spec = [api.spec_file] if api.spec_file else []
    what = "the server's (apiserver, scheduler and controllers in one process)" if combined else "the apiserver's"

    # 1.1 files
    items += [perm_item(target, "1.1.1", "API server pod specification file permissions are 600 or more restrictive",
                        spec, 0o600),
              owner_item(target, "1.1.2", "API server pod specification file ownership is root:root", spec)]
    for cid_p, cid_o, who, standalone in (("1.1.3", "1.1.4", "controller manager", "controller-manager"),
                                          ("1.1.5", "1.1.6", "scheduler", "scheduler")):
        procs = target.of(standalone)
        files = [p.spec_file for p in procs if p.spec_file] if procs else (spec if combined else [])
        reason = f"no {who} runs here" if not procs and not combined else ""
        t_p = f"{who} pod specification file permissions are 600 or more restrictive"
        t_o = f"{who} pod specification file ownership is root:root"
        it_p = perm_item(target, cid_p, t_p, files, 0o600, none_reason=reason)
        it_o = owner_item(target, cid_o, t_o, files, none_reason=reason)
        if combined and not procs:
            it_p.evidence += f" (in-process in kubeling server: {what} file)"
            it_o.evidence += " (in-process in kubeling server)"
        items += [it_p, it_o]
    etcds = target.of("etcd")
    etcd_spec = [p.spec_file for p in etcds if p.spec_file]
    no_etcd = "the store is SQLite in the apiserver's --data-dir: no etcd runs" if not etcds else ""
    items += [perm_item(target, "1.1.7", "etcd pod specification file permissions are 600 or more restrictive",
                        etcd_spec, 0o600, none_reason=no_etcd),
              owner_item(target, "1.1.8", "etcd pod specification file ownership is root:root", etcd_spec,
                         none_reason=no_etcd)]
    no_cni = "kubeling's control plane runs no agent, so it has no CNI configuration or IPAM files"
    items += [Item("1.1.9", "Container Network Interface file permissions are 600 or more restrictive", "N/A", no_cni),
              Item("1.1.10", "Container Network Interface file ownership is root:root", "N/A", no_cni)]
    if etcds:
        data = [etcds[0].get("--data-dir") or "default.etcd"]
        items.append(perm_item(target, "1.1.11", "etcd data directory permissions are 700 or more restrictive",
                               data, 0o700))
        user = etcds[0].user
        text = "etcd data directory ownership is etcd:etcd"
        if user == "root":
            items.append(Item("1.1.12", text, "N/A", f"etcd runs as root here (the lab has no etcd user); {data[0]} "
                              f"is owned by the user etcd runs as: {(file_info(target, data[0]) or (0, '?'))[1]}"))
        elif target.live:
            items.append(owner_item(target, "1.1.12", text, data, want=f"{user}:{user}"))
        else:  # rendered as root here; scripts/provision-control chowns it on the VM, where the user exists
            items.append(Item("1.1.12", text, passed(user == "etcd"),
                              f"{etcds[0].spec_file}: User={user}; scripts/provision-control makes {data[0]} 0700 "
                              f"and gives it to {user}:{user} on the VM"))
    else:
        data_dir = api.get("--data-dir", "/var/lib/kubeling") or ""
        it = perm_item(target, "1.1.11", "etcd data directory permissions are 700 or more restrictive", [data_dir],
                       0o700)
        it.evidence += " (SQLite store: the apiserver's --data-dir holds the cluster state)"
        items += [it, Item("1.1.12", "etcd data directory ownership is etcd:etcd", "N/A",
                           f"no etcd: the SQLite store in {data_dir} belongs to the apiserver's user ({api.user})")]
    admin = list(target.admin_kubeconfigs)
    data_admin = os.path.join(api.get("--data-dir", "/var/lib/kubeling") or "", "admin.kubeconfig")
    if file_info(target, data_admin) is not None and data_admin not in admin:
        admin.append(data_admin)
    items += [perm_item(target, "1.1.13", "default administrative credential file permissions are 600", admin, 0o600),
              owner_item(target, "1.1.14", "default administrative credential file ownership is root:root", admin)]
    default_kc = data_admin
    for cid_p, cid_o, who, flag, standalone in (
            ("1.1.15", "1.1.16", "scheduler", "--scheduler-kubeconfig", "scheduler"),
            ("1.1.17", "1.1.18", "controller-manager", "--controller-manager-kubeconfig", "controller-manager")):
        procs = target.of(standalone)
        if procs:
            files = [p.get("--kubeconfig") or "" for p in procs if p.get("--kubeconfig")]
        elif combined:
            files = [api.get(flag) or default_kc]
        else:
            files = []
        items += [perm_item(target, cid_p, f"{who}.conf (its kubeconfig) permissions are 600 or more restrictive",
                            files, 0o600, none_reason=f"no {who} runs here"),
                  owner_item(target, cid_o, f"{who}.conf (its kubeconfig) ownership is root:root", files,
                             none_reason=f"no {who} runs here")]
    pki_dir = os.path.dirname(api.get("--tls-cert-file") or "") or os.path.join(
        api.get("--data-dir", "/var/lib/kubeling") or "", "pki")
    everything = tree(target, pki_dir) if file_info(target, pki_dir) else []
    items.append(owner_item(target, "1.1.19", "Kubernetes PKI directory and file ownership is root:root",
                            everything, none_reason=f"{pki_dir} does not exist"))
    items[-1].evidence = items[-1].evidence if items[-1].status != "PASS" else \
        f"root:root: {pki_dir} and the {len(everything) - 1} entries below it"
    crts = tree(target, pki_dir, (".crt", ".pub")) if everything else []
    keys = tree(target, pki_dir, (".key",)) if everything else []
    items.append(perm_item(target, "1.1.20", "Kubernetes PKI certificate file permissions are 644 or more "
                           "restrictive", crts, 0o644))
    items.append(perm_item(target, "1.1.21", "Kubernetes PKI key file permissions are 600", keys, 0o600))
    for it in items[-2:]:
        if it.status == "PASS":
            n = len(crts) if it.id == "1.1.20" else len(keys)
            it.evidence = f"{n} files under {pki_dir}, all {'644 or less' if it.id == '1.1.20' else '600 or less'}"
    items += apiserver_checks(target, api)
    items += manager_checks(target, api)
    return items


def apiserver_checks(target: Target, api: Proc) -> list[Item]:
    items: list[Item] = []
    host, port = split_hostport(api.get("--listen", "127.0.0.1:6443") or "", 6443)
    node_peer = next(((k, v) for k, v in target.peers.items() if k.startswith("system:node:")), None)
    other_node = next((k for k in target.peers if k.startswith("system:node:") and node_peer and k != node_peer[0]),
                      None)
    extra = []
    if node_peer and other_node:  # NodeRestriction: a node may not change another node's Node
        extra.append({"op": "get", "method": "PATCH", "host": reach(host), "port": port,
                      "path": f"/api/v1/nodes/{other_node.split(':')[-1]}", "cert": node_peer[1][0],
                      "key": node_peer[1][1], "body": json.dumps({"metadata": {"labels": {"cis-check": "probe"}}})})
    facts = probe_tls(api, host, port, target, "/api/v1/namespaces",
                      admin_paths=["/debug/pprof/", "/api/v1/namespaces/kubeling-cis-no-such-ns/configmaps/x"],
                      peer=target.peers.get("system:kube-proxy"), peer_paths=["/api/v1/secrets"], extra=extra)
    anon = api.get("--anonymous-auth", "false")
    ev = f"{api.label}: --anonymous-auth={anon}" + ("" if api.has("--anonymous-auth") else " (kubeling's default)")
    ok = anon == "false"
    if facts is not None:
        code = facts.no_cert.get("status")
        ev += f"; GET /api/v1/namespaces without credentials -> {code or facts.no_cert.get('error')}"
        ok = ok and code == 401
    items.append(Item("1.2.1", "--anonymous-auth is set to false", passed(ok), ev + not_probed(target)))
    items.append(Item("1.2.2", "--token-auth-file is not set", passed(not api.has("--token-auth-file")),
                      f"{api.label}: {api.shown('--token-auth-file')} (kubeling has no static token file)"))
    items.append(Item("1.2.3", "DenyServiceExternalIPs is set", "N/A",
                      "kubeling's proxy programs no spec.externalIPs (proxy/render.py renders ClusterIPs and "
                      "NodePorts only), so the external-IP hijack this plugin prevents cannot happen"))
    items.append(flag_set(api, "1.2.4", "--kubelet-client-certificate and --kubelet-client-key are set",
                          "--kubelet-client-certificate", "--kubelet-client-key"))
    items.append(flag_set(api, "1.2.5", "--kubelet-certificate-authority is set", "--kubelet-certificate-authority"))
    modes = (api.get("--authorization-mode") or "Node,RBAC").split(",")
    shown = api.shown("--authorization-mode") + ("" if api.has("--authorization-mode") else " (default Node,RBAC)")
    items.append(Item("1.2.6", "--authorization-mode is not AlwaysAllow", passed("AlwaysAllow" not in modes),
                      f"{api.label}: {shown}" + (f"; system:kube-proxy GET /api/v1/secrets -> "
                                                 f"{facts.peer[0].get('status')}" if facts and facts.peer else "")))
    items.append(Item("1.2.7", "--authorization-mode includes Node", passed("Node" in modes), f"{api.label}: {shown}"))
    items.append(Item("1.2.8", "--authorization-mode includes RBAC", passed("RBAC" in modes), f"{api.label}: {shown}"))
    qps = api.get("--max-requests-per-client-qps")
    items.append(Item("1.2.9", "admission control plugin EventRateLimit is set", "N/A",
                      "no admission plugin chain; per-client rate limits (--max-requests-per-client-qps "
                      f"{qps or 'default'}) bound event floods like any other request"))
    items.append(Item("1.2.10", "admission control plugin AlwaysAdmit is not set",
                      passed("AlwaysAdmit" not in (api.get("--enable-admission-plugins") or "")),
                      f"{api.label}: {api.shown('--enable-admission-plugins')} (kubeling has no AlwaysAdmit)"))
    items.append(Item("1.2.11", "admission control plugin AlwaysPullImages is set", "N/A",
                      "no image registry: pods run local images (scripts/images), imagePullPolicy has nothing to pull"))
    disabled = api.get("--disable-admission-plugins") or ""
    items.append(Item("1.2.12", "admission control plugin ServiceAccount is set", passed("ServiceAccount" not in disabled),
                      f"{api.label}: {api.shown('--disable-admission-plugins')}; pods default to serviceAccountName "
                      "default and get a projected token (built in)"))
    ns_ev = f"{api.label}: {api.shown('--disable-admission-plugins')}; namespace lifecycle is built in"
    ns_ok = "NamespaceLifecycle" not in disabled
    if facts is not None and facts.admin:
        code = facts.admin[1].get("status")
        ns_ev += f"; GET in a namespace that does not exist -> {code}"
        ns_ok = ns_ok and code == 404
    items.append(Item("1.2.13", "admission control plugin NamespaceLifecycle is set", passed(ns_ok), ns_ev))
    nr_ev = f"{api.label}: {shown}: NodeRestriction is part of the Node authorizer (apiserver/auth/node.py)"
    nr_ok = "Node" in modes
    if facts is not None and facts.extra and node_peer and other_node:
        code = facts.extra[0].get("status")
        nr_ev += f"; {node_peer[0]} PATCH of Node {other_node.split(':')[-1]} -> {code}"
        nr_ok = nr_ok and code == 403
    items.append(Item("1.2.14", "admission control plugin NodeRestriction is set", passed(nr_ok), nr_ev))
    prof_ok = api.get("--profiling") == "false"
    prof_ev = f"{api.label}: {api.shown('--profiling')}"
    if facts is not None and facts.admin:
        code = facts.admin[0].get("status")
        prof_ev += f"; admin GET /debug/pprof/ -> {code}"
        prof_ok = prof_ok and code == 404
    items.append(Item("1.2.15", "--profiling is set to false", passed(prof_ok), prof_ev + not_probed(target)))
    path = api.get("--audit-log-path") or ""
    audit_ev = f"{api.label}: {api.shown('--audit-log-path')}"
    audit_ok = bool(path)
    if path and path != "-" and target.live:
        info = file_info(target, path)
        audit_ev += f" (mode {info[0]:o})" if info else " (not written yet)"
        audit_ok = info is not None and at_most(info[0], 0o600)
    items.append(Item("1.2.16", "--audit-log-path is set", passed(audit_ok), audit_ev))
    for cid, flag, least in (("1.2.17", "--audit-log-maxage", 30), ("1.2.18", "--audit-log-maxbackup", 10),
                             ("1.2.19", "--audit-log-maxsize", 100)):
        v = number(api, flag, -1)
        items.append(Item(cid, f"{flag} is set to {least} or as appropriate", passed(v >= least and api.has(flag)),
                          f"{api.label}: {api.shown(flag)}"))
    items.append(Item("1.2.20", "--request-timeout is set as appropriate", "N/A",
                      "no --request-timeout: kubeling bounds requests with --request-header-timeout, "
                      f"--request-body-timeout and --idle-connection-timeout ({api.get('--request-header-timeout') or '32'}"
                      f"/{api.get('--request-body-timeout') or '60'}/{api.get('--idle-connection-timeout') or '90'} s)"))
    items.append(Item("1.2.21", "--service-account-lookup is set to true",
                      passed(bool_flag(api, "--service-account-lookup", True)),
                      f"{api.label}: {api.shown('--service-account-lookup')}: kubeling always looks up the token's "
                      "service account and bound pod (apiserver/auth/authn.py)"))
    items.append(flag_set(api, "1.2.22", "--service-account-key-file is set", "--service-account-key-file"))
    etcd = api.get("--store", "") or ""
    if etcd.startswith(("etcd://", "etcds://")):
        items.append(flag_set(api, "1.2.23", "--etcd-certfile and --etcd-keyfile are set", "--etcd-certfile",
                              "--etcd-keyfile"))
    else:
        items.append(Item("1.2.23", "--etcd-certfile and --etcd-keyfile are set", "N/A",
                          f"{api.label}: --store {etcd or 'sqlite (default)'}: no etcd to connect to"))
    tls_extra = f"; handshake {facts.handshake}" if facts else ""
    items.append(flag_set(api, "1.2.24", "--tls-cert-file and --tls-private-key-file are set", "--tls-cert-file",
                          "--tls-private-key-file", extra=tls_extra))
    items.append(flag_set(api, "1.2.25", "--client-ca-file is set", "--client-ca-file"))
    if etcd.startswith(("etcd://", "etcds://")):
        items.append(flag_set(api, "1.2.26", "--etcd-cafile is set", "--etcd-cafile"))
    else:
        items.append(Item("1.2.26", "--etcd-cafile is set", "N/A", f"{api.label}: SQLite store, no etcd"))
    items.append(Item("1.2.27", "--encryption-provider-config is set", "N/A",
                      "not implemented: kubeling has no encryption at rest; Secrets are stored as written, in a "
                      "store only root can read (data dir 0700)"))
    items.append(Item("1.2.28", "encryption providers are appropriately configured", "N/A",
                      "not implemented (see 1.2.27)"))
    items.append(strong_ciphers(target, api, "1.2.29", "the API server only uses strong cryptographic ciphers",
                                facts, API_STRONG, "kube.tls"))
    items.append(Item("1.2.30", "--service-account-extend-token-expiration is set to false",
                      passed(not bool_flag(api, "--service-account-extend-token-expiration", False)),
                      f"{api.label}: {api.shown('--service-account-extend-token-expiration')}: kubeling never "
                      "extends a requested token's expirationSeconds"))
    return items


def allowed_suite(name: str, allowed: set[str]) -> bool:
    """name is in the list; Go's short ChaCha20 names (no _SHA256) and the IANA ones are the same suites."""
    return name in allowed or name.removesuffix("_SHA256") in allowed or f"{name}_SHA256" in allowed


def strong_ciphers(target: Target, proc: Proc, cid: str, text: str, facts: TLSFacts | None, allowed: set[str],
                   module: str, scope: str = "") -> Item:
    flag = proc.get("--tls-cipher-suites")
    if flag:
        bad = [c for c in flag.split(",") if not allowed_suite(c, allowed)]
        return Item(cid, text, passed(not bad), f"{proc.label}: --tls-cipher-suites={flag}" +
                    (f"; not allowed: {', '.join(bad)}" if bad else ""), scope)
    if facts is None:
        suites = configured_suites(module)
        bad = [c for c in suites if not allowed_suite(c, allowed)]
        return Item(cid, text, passed(bool(suites) and not bad),
                    f"{proc.label}: no --tls-cipher-suites; TLS 1.2 suites fixed in {module}: {', '.join(suites)}"
                    + not_probed(target), scope)
    bad = [c for c in facts.suites if not allowed_suite(c, allowed)]
    ok = bool(facts.suites) and not bad and facts.tls11.startswith("refused") and facts.cbc.startswith("refused")
    return Item(cid, text, passed(ok),
                f"{proc.label}: TLS 1.2 suites accepted: {', '.join(facts.suites) or 'none'}"
                + (f" (not allowed: {', '.join(bad)})" if bad else "")
                + f"; TLS 1.1 {facts.tls11}; CBC/RSA-kx/3DES {facts.cbc}; default handshake {facts.handshake}",
                scope)


def configured_suites(module: str) -> list[str]:
    """The TLS 1.2 suites a kubeling module's server context allows (its TLS12_CIPHERS), IANA names."""
    import importlib
    import ssl

    try:
        spec = importlib.import_module(module).TLS12_CIPHERS
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers(spec)
    except (ImportError, AttributeError, ssl.SSLError):
        return []
    return [iana(c["name"]) for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.2"]


def manager_checks(target: Target, api: Proc) -> list[Item]:
    """1.3 (controller manager) and 1.4 (scheduler): standalone processes, or in-process in kubeling server."""
    items: list[Item] = []
    own = [] if api.pid is None else listening(api.pid)
    for section, kind, who in (("1.3", "controller-manager", "the controllers run"),
                               ("1.4", "scheduler", "the scheduler runs")):
        procs = target.of(kind)
        if not procs and api.kind != "server":
            continue
        host_proc = procs[0] if procs else api
        inproc = not procs
        prof_id, bind_id = (f"{section}.2", f"{section}.7") if kind == "controller-manager" else \
            (f"{section}.1", f"{section}.2")
        pid = f" pid {api.pid}" if api.pid else ""
        where = f" (in-process in kubeling server{pid}: the server's flag)" if inproc else ""
        items.append(Item(prof_id, "--profiling is set to false", passed(host_proc.get("--profiling") == "false"),
                          f"{host_proc.label}: {host_proc.shown('--profiling')}{where}"))
        if inproc:
            api_addr = api.get("--listen", "127.0.0.1:6443") or ""
            if api.pid is None:
                ok, ev = True, f"{who} inside kubeling server ({api.spec_file}) with no listener of its own"
            else:
                ok = all(addr.split("]")[-1].rsplit(":", 1)[-1] == api_addr.rsplit(":", 1)[-1] for addr in own) \
                    and bool(own)
                ev = (f"in-process in kubeling server pid {api.pid}: no listener of their own; the process listens "
                      f"only on {', '.join(own) or 'nothing'} (the apiserver, --listen {api_addr}); their metrics "
                      "are on the apiserver's authenticated /metrics")
        else:
            addr = host_proc.get("--metrics-address", "127.0.0.1:10257" if kind == "controller-manager"
                                 else "127.0.0.1:10259") or ""
            socks = listening(host_proc.pid) if host_proc.pid else []
            ok = addr.startswith("127.0.0.1:") or addr == ""
            ev = f"{host_proc.label}: --metrics-address {addr}" + (f"; listens on {', '.join(socks)}" if socks else "")
            ok = ok and all(s.startswith(("127.0.0.1:", "[::1]:")) for s in socks)
        items.append(Item(bind_id, "--bind-address is set to 127.0.0.1", passed(ok), ev))
        if kind == "controller-manager":
            items.append(Item("1.3.1", "--terminated-pod-gc-threshold is set as appropriate", "N/A",
                              "not implemented: kubeling has no terminated-pod garbage collector (finished pods stay "
                              "until deleted or their Job's TTL removes them)"))
            ident = api.get("--controller-manager-kubeconfig") if inproc else host_proc.get("--kubeconfig")
            items.append(Item("1.3.3", "--use-service-account-credentials is set to true", "N/A",
                              "not implemented: the controllers share one identity, system:kube-controller-manager "
                              f"({ident or 'the admin kubeconfig'}), not a service account per controller"))
            items.append(Item("1.3.4", "--service-account-private-key-file is set", "N/A",
                              "the controllers sign no tokens: the apiserver issues every service-account token "
                              f"(TokenRequest) with {api.shown('--service-account-signing-key-file')}"))
            items.append(Item("1.3.5", "--root-ca-file is set", "N/A",
                              "no token Secrets carry a CA: pods get ca.crt in their projected service-account "
                              f"volume from the cluster CA the apiserver trusts ({api.shown('--client-ca-file')})"))
            items.append(Item("1.3.6", "RotateKubeletServerCertificate is set to true", "N/A",
                              "not implemented: no certificate signing requests; agents' serving certificates come "
                              "from `kubeling pki node` (1 year) and are renewed by re-running it"))
    items.sort(key=lambda it: [int(x) for x in it.id.split(".")])
    return items


def etcd_checks(target: Target) -> list[Item]:
    etcds = target.of("etcd")
    if not etcds:
        return [Item("2", "etcd (section 2)", "N/A", "no etcd: the store is SQLite in the apiserver's data dir")]
    e = etcds[0]
    items = []
    client_url = e.get("--listen-client-urls", "http://127.0.0.1:2379") or ""
    host, port = split_hostport(client_url, 2379)
    api = target.of(*CONTROL_KINDS)
    client = (api[0].get("--etcd-certfile"), api[0].get("--etcd-keyfile")) if api else (None, None)
    facts: list[dict[str, Any]] | None = None
    if e.netns is not None:  # TLS 1.3 asks for the client certificate after the handshake: make a request
        base = {"op": "get", "host": reach(host), "port": port, "path": "/version"}
        probes: list[dict[str, Any]] = [base]
        if client[0] and client[1]:
            probes.append({**base, "cert": client[0], "key": client[1]})
        if target.admin:
            probes.append({**base, "cert": target.admin[1], "key": target.admin[2]})
        facts = probe(e.netns, probes)
    ev = f"{e.label}: {e.shown('--cert-file')}, {e.shown('--key-file')}; client URLs {client_url}"
    items.append(Item("2.1", "--cert-file and --key-file are set", passed(
        bool(e.get("--cert-file") and e.get("--key-file")) and client_url.startswith("https")), ev))
    cca = bool_flag(e, "--client-cert-auth", False)
    ev = f"{e.label}: {e.shown('--client-cert-auth')}"
    ok = cca
    if facts is not None:
        ev += f"; GET /version without a client certificate -> {facts[0].get('status') or 'refused'}"
        ok = ok and not facts[0].get("status")
        if len(facts) > 1 and client[0]:
            ev += f", with the apiserver's --etcd-certfile -> {facts[1].get('status') or facts[1].get('error')}"
            ok = ok and facts[1].get("status") == 200
        if target.admin:
            ev += f", with a cluster-CA certificate (admin) -> {facts[-1].get('status') or 'refused'}"
            ok = ok and not facts[-1].get("status")
    items.append(Item("2.2", "--client-cert-auth is set to true", passed(ok), ev))
    items.append(Item("2.3", "--auto-tls is not set to true", passed(not bool_flag(e, "--auto-tls", False)),
                      f"{e.label}: {e.shown('--auto-tls')}"))
    peer_url = e.get("--listen-peer-urls", "http://127.0.0.1:2380") or ""
    items.append(Item("2.4", "--peer-cert-file and --peer-key-file are set", passed(
        bool(e.get("--peer-cert-file") and e.get("--peer-key-file")) and peer_url.startswith("https")),
        f"{e.label}: {e.shown('--peer-cert-file')}, {e.shown('--peer-key-file')}; peer URLs {peer_url}"))
    items.append(Item("2.5", "--peer-client-cert-auth is set to true",
                      passed(bool_flag(e, "--peer-client-cert-auth", False)), f"{e.label}: "
                      f"{e.shown('--peer-client-cert-auth')}"))
    items.append(Item("2.6", "--peer-auto-tls is not set to true", passed(not bool_flag(e, "--peer-auto-tls", False)),
                      f"{e.label}: {e.shown('--peer-auto-tls')}"))
    etcd_ca, api_ca = e.get("--trusted-ca-file") or "", (api[0].get("--client-ca-file") or "") if api else ""
    same = bool(etcd_ca) and bool(api_ca) and _read(target, etcd_ca) == _read(target, api_ca)
    items.append(Item("2.7", "a unique Certificate Authority is used for etcd", passed(bool(etcd_ca) and not same),
                      f"{e.label}: --trusted-ca-file={etcd_ca or '-'}; the apiserver's --client-ca-file={api_ca or '-'}"
                      f": {'the same CA' if same else 'different CAs'}"))
    return items


def _read(target: Target, path: str) -> bytes:
    try:
        with open(target.path(path), "rb") as f:
            return f.read()
    except OSError:
        return b""


def node_checks(target: Target) -> list[Item]:
    """Section 4 for every agent (and the proxy of its node)."""
    items: list[Item] = []
    proxies = {p.node: p for p in target.of("proxy")}
    for agent in sorted(target.of("agent"), key=lambda p: p.node):
        node = agent.node
        spec = [agent.spec_file] if agent.spec_file else []
        items += [perm_item(target, "4.1.1", "kubelet service file permissions are 600 or more restrictive", spec,
                            0o600, node),
                  owner_item(target, "4.1.2", "kubelet service file ownership is root:root", spec, scope=node)]
        proxy = proxies.get(node)
        pkc = [proxy.get("--kubeconfig") or ""] if proxy and proxy.get("--kubeconfig") else []
        items += [perm_item(target, "4.1.3", "proxy kubeconfig file permissions are 600 or more restrictive", pkc,
                            0o600, node, "no proxy with a --kubeconfig on this node"),
                  owner_item(target, "4.1.4", "proxy kubeconfig file ownership is root:root", pkc, scope=node,
                             none_reason="no proxy with a --kubeconfig on this node")]
        kc = [agent.get("--kubeconfig") or ""]
        items += [perm_item(target, "4.1.5", "--kubeconfig kubelet.conf file permissions are 600 or more restrictive",
                            kc, 0o600, node),
                  owner_item(target, "4.1.6", "--kubeconfig kubelet.conf file ownership is root:root", kc, scope=node)]
        ca = [agent.get("--client-ca-file") or ""] if agent.get("--client-ca-file") else []
        items += [perm_item(target, "4.1.7", "client certificate authorities file permissions are 644 or more "
                            "restrictive", ca, 0o644, node, "no --client-ca-file"),
                  owner_item(target, "4.1.8", "client certificate authorities file ownership is root:root", ca,
                             scope=node, none_reason="no --client-ca-file")]
        no_conf = "the agent has no config file: every setting is a flag on its command line"
        items += [Item("4.1.9", "kubelet config.yaml permissions are 600 or more restrictive", "N/A", no_conf, node),
                  Item("4.1.10", "kubelet config.yaml ownership is root:root", "N/A", no_conf, node)]
        items += agent_checks(target, agent)
        if proxy is not None:
            addr = proxy.get("--metrics-address", "127.0.0.1:10249") or ""
            socks = listening(proxy.pid) if proxy.pid else []
            ok = addr.startswith("127.0.0.1:") or addr == ""
            ok = ok and all(s.startswith(("127.0.0.1:", "[::1]:")) for s in socks)
            items.append(Item("4.3.1", "kube-proxy metrics service is bound to localhost", passed(ok),
                              f"{proxy.label}: --metrics-address {addr}" + (f"; listens on {', '.join(socks)}" if socks
                                                                           else not_probed(target)), node))
    for proxy in target.of("proxy"):
        if proxy.node not in {a.node for a in target.of("agent")}:
            addr = proxy.get("--metrics-address", "127.0.0.1:10249") or ""
            items.append(Item("4.3.1", "kube-proxy metrics service is bound to localhost",
                              passed(addr.startswith("127.0.0.1:")), f"{proxy.label}: --metrics-address {addr}",
                              proxy.node))
    return items


def agent_checks(target: Target, agent: Proc) -> list[Item]:
    node = agent.node
    items: list[Item] = []
    host, port = split_hostport(agent.get("--listen", "127.0.0.1:10250") or "", 10250)
    tls = bool(agent.get("--tls-cert-file"))
    facts = probe_tls(agent, host, port, target, "/pods", admin_paths=["/pods"],
                      peer=target.peers.get("system:kube-proxy"), peer_paths=["/pods"],
                      extra=[{"op": "connect", "host": reach(host), "port": READ_ONLY_PORT},
                             {"op": "connect", "host": "127.0.0.1", "port": READ_ONLY_PORT}]) if tls else None
    anon = agent.get("--anonymous-auth")
    ev = f"{agent.label}: {agent.shown('--anonymous-auth')}"
    ok = tls and anon in (None, "false")
    if anon is None:
        ev += " (no anonymous access exists: every request needs a client certificate)"
    if facts is not None:
        code = facts.no_cert.get("status")
        ev += f"; GET /pods without a client certificate -> {code or facts.no_cert.get('error')}"
        reached = bool(facts.admin) and facts.admin[0].get("status") == 200  # the endpoint answers at all
        ok = ok and (code == 401 or (code == 0 and reached))
    items.append(Item("4.2.1", "--anonymous-auth is set to false", passed(ok), ev + not_probed(target), node))
    mode = agent.get("--authorization-mode") or ""
    ev = f"{agent.label}: {agent.shown('--authorization-mode')}"
    ok = tls and "AlwaysAllow" not in mode
    if facts is not None and facts.peer:
        code = facts.peer[0].get("status")
        ev += f"; system:kube-proxy (a valid cluster certificate, not allowed) GET /pods -> {code}"
        ok = ok and code == 403
    if facts is not None and facts.admin:
        ev += f"; admin (system:masters) GET /pods -> {facts.admin[0].get('status')}"
    items.append(Item("4.2.2", "--authorization-mode is not AlwaysAllow", passed(ok), ev + not_probed(target), node))
    items.append(flag_set(agent, "4.2.3", "--client-ca-file is set", "--client-ca-file", scope=node))
    rop = agent.get("--read-only-port")
    ev = f"{agent.label}: {agent.shown('--read-only-port')}"
    ok = rop in (None, "0")
    if facts is not None:
        opened = [f"{p['host']}:{p['port']}" for p, r in zip(
            [{"host": reach(host), "port": READ_ONLY_PORT}, {"host": "127.0.0.1", "port": READ_ONLY_PORT}],
            facts.extra, strict=False) if r.get("open")]
        ev += f"; port {READ_ONLY_PORT} " + (f"OPEN on {', '.join(opened)}" if opened else "closed on the node IP and "
                                             "127.0.0.1")
        ok = ok and not opened
    items.append(Item("4.2.4", "--read-only-port is 0 if defined", passed(ok), ev, node))
    items.append(Item("4.2.5", "--streaming-connection-idle-timeout is not set to 0", "N/A",
                      "no such setting: exec/attach/port-forward streams end with their WebSocket", node))
    items.append(Item("4.2.6", "--make-iptables-util-chains is set to true", "N/A",
                      "the agent manages no iptables chains; kubeling-cni and the proxy keep their own "
                      "(KUBELING-*, KL-*)", node))
    items.append(Item("4.2.7", "--hostname-override is not set", "N/A",
                      f"no --hostname-override: the agent's --node-name {node} names the node, and its "
                      f"certificates carry that name (CN system:node:{node}, serving SAN {node})", node))
    items.append(Item("4.2.8", "eventRecordQPS is set appropriately", "N/A",
                      "no event rate setting: the agent's events go through the apiserver's per-client rate limit",
                      node))
    items.append(flag_set(agent, "4.2.9", "--tls-cert-file and --tls-private-key-file are set", "--tls-cert-file",
                          "--tls-private-key-file", scope=node,
                          extra=f"; handshake {facts.handshake}" if facts else ""))
    items.append(Item("4.2.10", "--rotate-certificates is not set to false", "N/A",
                      "not implemented: no certificate rotation; node certificates come from `kubeling pki node` "
                      "(1 year) and are renewed by re-running it", node))
    items.append(Item("4.2.11", "RotateKubeletServerCertificate is set to true", "N/A",
                      "not implemented: no certificate signing requests (see 4.2.10)", node))
    if tls:
        items.append(strong_ciphers(target, agent, "4.2.12", "the kubelet only uses strong cryptographic ciphers",
                                    facts, KUBELET_STRONG | {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                                             "TLS_CHACHA20_POLY1305_SHA256"},
                                    "kube.tls", node))
    else:
        items.append(Item("4.2.12", "the kubelet only uses strong cryptographic ciphers", "FAIL",
                          f"{agent.label}: the agent API is plain HTTP (no --tls-cert-file)", node))
    pids = number(agent, "--pod-max-pids", 0)
    ev = f"{agent.label}: {agent.shown('--pod-max-pids')}"
    ok = pids > 0
    if agent.pid is not None:
        limits = container_pid_limits(node)
        if limits:
            ev += f"; its running app containers' PidsLimit: {', '.join(sorted(set(limits)))}"
            ok = ok and all(v == str(pids) for v in limits)
    items.append(Item("4.2.13", "a limit is set on pod PIDs", passed(ok), ev, node))
    items.append(Item("4.2.14", "--seccomp-default is set to true", "N/A",
                      "no such flag: containers run under Docker's default seccomp profile (the runtime's default, "
                      "what seccompDefault selects); " + docker_seccomp(), node))
    items.append(Item("4.2.15", "--IPAddressDeny is set to any", "N/A",
                      "a systemd unit setting; not set: the agent must reach the apiserver and every node", node))
    return items


def container_pid_limits(node: str) -> list[str]:
    """PidsLimit of the node's running app containers (docker inspect; the pause container runs one process and
    gets none), as strings; [] when none or no docker."""
    try:
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.kubeling.node={node}",
                              "--filter", "label=io.kubeling.kind=app"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        if not ids:
            return []
        out = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.PidsLimit}}", *ids[:20]],
                             capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out


def docker_seccomp() -> str:
    try:
        out = subprocess.run(["docker", "info", "-f", "{{json .SecurityOptions}}"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "docker not reachable here"
    return f"docker security options {out}" if out else "docker not reachable here"


def missing_items(target: Target) -> list[Item]:
    return [Item("-", f"program {name} is not running", "FAIL", "the lab's supervisor shows it stopped or crashed")
            for name in target.missing]


def run_checks(target: Target) -> list[Item]:
    items = missing_items(target) + control_checks(target)
    if target.of(*CONTROL_KINDS):
        items += etcd_checks(target)
    items += node_checks(target)
    return items


# ---------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/cis-check", description=(__doc__ or "").split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--lab-dir", metavar="DIR", help="check the lab in DIR (its supervised processes)")
    src.add_argument("--root", metavar="DIR", help="check units and files rendered by scripts/provision-* --render DIR")
    p.add_argument("--pki-dir", default="/var/lib/kubeling/pki", metavar="DIR",
                   help="without --lab-dir/--root: the PKI with admin.crt for authenticated probes (default "
                        "%(default)s; skipped when absent)")
    p.add_argument("--json", action="store_true", help="print the items as JSON")
    args = p.parse_args(argv)
    try:
        if args.lab_dir:
            target = from_lab(args.lab_dir)
        elif args.root:
            target = from_root(args.root)
        else:
            target = from_host(args.pki_dir if os.path.exists(os.path.join(args.pki_dir, "admin.crt")) else "")
        if target.live and os.geteuid() != 0:
            raise CheckError("the live checks read other processes' files and enter their namespaces: run as root")
        if not target.procs:
            raise CheckError("no kubeling apiserver, agent, proxy or etcd process found on this machine")
        items = run_checks(target)
    except CheckError as e:
        print(f"cis-check: {e}", file=sys.stderr)
        return 2
    try:
        report(args, target, items)
    except BrokenPipeError:  # `scripts/cis-check | head`
        sys.stderr.close()
    counts = {s: sum(1 for i in items if i.status == s) for s in ("PASS", "FAIL", "N/A")}
    print(f"cis-check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['N/A']} N/A", file=sys.stderr)
    return 1 if counts["FAIL"] else 0


def report(args: argparse.Namespace, target: Target, items: list[Item]) -> None:
    if args.json:
        print(json.dumps([vars(i) for i in items], indent=1))
    else:
        where = args.lab_dir or args.root or "this machine"
        print(f"{BENCHMARK}: {where}; processes: "
              f"{', '.join(f'{q.label}' + (f' (pid {q.pid})' if q.pid else '') for q in target.procs)}")
        for it in items:
            print(it.line())


if __name__ == "__main__":
    sys.exit(main())
