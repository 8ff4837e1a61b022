"""A pod's /etc/resolv.conf and /etc/hosts, as the kubelet and the CRI runtime make them.

Pure part (the unit tests' subject):

- `pod_dns_config(pod, cluster_dns, cluster_domain, host)` follows the kubelet's
  pkg/kubelet/network/dns: dnsPolicy ClusterFirst (the default) -> the cluster DNS servers,
  search `<ns>.svc.<domain> svc.<domain> <domain>` + the node's search domains, `options ndots:5`;
  ClusterFirst on a hostNetwork pod and Default -> the node's resolv.conf; ClusterFirstWithHostNet
  -> ClusterFirst; None -> nothing. No cluster DNS configured: ClusterFirst falls back to Default
  with a MissingClusterDNS warning. `--resolv-conf ""` (host None): Default means
  `nameserver 127.0.0.1` and `search .`, as upstream. Then spec.dnsConfig is merged: nameservers
  and searches appended without duplicates, options by name (the pod's value wins). Last, the
  limits: at most 3 nameservers, 32 search domains, 2048 characters of search line, no domain
  longer than 253; what is cut is reported as a DNSConfigForming warning (upstream's words).
- `render_resolv_conf` writes it as containerd does (search, nameserver lines, options).
- `render_hosts` is the kubelet's managed hosts file: localhost lines, the pod's IP with its
  hostname (and FQDN with spec.subdomain), then spec.hostAliases.

I/O part: `PodFiles` writes both files into the pod's directory (`<root>/pods/<uid>/resolv.conf`
and `etc-hosts`) and gives each container its bind mounts, the way containerd shares the
sandbox's files with every container of the pod: read-write unless the container has
readOnlyRootFilesystem, and not at all where the container mounts a volume itself.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ContainerConfigError

log = logging.getLogger("kubeling.agent.dnsconfig")

MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32
MAX_SEARCH_LINE_CHARS = 2048
MAX_DOMAIN_CHARS = 253  # an RFC 1123 subdomain; longer search paths crash some resolvers
DEFAULT_OPTIONS = ("ndots:5",)
RESOLV_CONF = "/etc/resolv.conf"
ETC_HOSTS = "/etc/hosts"
_MAX_RESOLV_CONF_BYTES = 10 << 20

Note = tuple[str, str]  # (event reason, message): a Warning event on the pod


@dataclass
class DnsConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def parse_resolv_conf(text: str) -> DnsConfig:
    """`nameserver` lines accumulate; the last `search` and the last `options` line win."""
    cfg = DnsConfig()
    for line in text.splitlines():
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            cfg.servers.append(fields[1])
        elif fields[0] == "search":
            cfg.searches = [s.removesuffix(".") for s in fields[1:]]
        elif fields[0] == "options":
            cfg.options = fields[1:]
    return cfg


def parse_cluster_dns(values: list[str]) -> list[str]:
    """`--cluster-dns` values (repeatable, each may be a comma list) -> IPs; ValueError names a bad one."""
    out: list[str] = []
    for value in values:
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            try:
                ip = str(ipaddress.ip_address(item))
            except ValueError:
                raise ValueError(f"--cluster-dns: {item!r} is not an IP address (e.g. 10.96.0.10)") from None
            if ip not in out:
                out.append(ip)
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge_options(existing: list[str], pod_options: list[Any]) -> list[str]:
    merged: dict[str, str | None] = {}
    for op in existing:
        name, sep, value = op.partition(":")
        merged[name] = value if sep else None
    for op in pod_options:
        if isinstance(op, dict) and op.get("name"):
            given = op.get("value")
            merged[str(op["name"])] = None if given is None or given == "" else str(given)
    return [name if v is None else f"{name}:{v}" for name, v in merged.items()]


def _pod_ref(pod: dict[str, Any]) -> str:
    m = pod.get("metadata") or {}
    return f"{m.get('name', '')}_{m.get('namespace', 'default')}({m.get('uid', '')})"


def _fit_limits(cfg: DnsConfig, notes: list[Note]) -> DnsConfig:
    if len(cfg.servers) > MAX_NAMESERVERS:
        cfg.servers = cfg.servers[:MAX_NAMESERVERS]
        notes.append(("DNSConfigForming", "Nameserver limits were exceeded, some nameservers have been omitted, "
                                          f"the applied nameserver line is: {' '.join(cfg.servers)}"))
    searches, cut = cfg.searches[:MAX_SEARCH_PATHS], len(cfg.searches) > MAX_SEARCH_PATHS
    kept = [s for s in searches if len(s) <= MAX_DOMAIN_CHARS]
    cut = cut or len(kept) != len(searches)
    while kept and len(" ".join(kept)) > MAX_SEARCH_LINE_CHARS:
        kept.pop()
        cut = True
    if cut:
        notes.append(("DNSConfigForming", "Search Line limits were exceeded, some search paths have been omitted, "
                                          f"the applied search line is: {' '.join(kept)}"))
    cfg.searches = kept
    return cfg


def pod_dns_config(pod: dict[str, Any], cluster_dns: list[str], cluster_domain: str,
                   host: DnsConfig | None) -> tuple[DnsConfig, list[Note]]:
    """The pod's resolver config and the warnings to report. host: the node's resolv.conf, parsed
    (None: the agent runs with --resolv-conf "", no host config)."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host_network = bool(spec.get("hostNetwork"))
    base = DnsConfig(list(host.servers), list(host.searches), list(host.options)) if host else DnsConfig()
    notes: list[Note] = []
    if policy == "None":
        kind = "none"
    elif policy == "Default" or (policy == "ClusterFirst" and host_network):
        kind = "host"
    else:
        if policy not in ("ClusterFirst", "ClusterFirstWithHostNet"):
            log.warning("pod=%s has dnsPolicy %r: using ClusterFirst", _pod_ref(pod), policy)
        kind = "cluster"
    if kind == "cluster" and not cluster_dns:
        notes.append(("MissingClusterDNS", f'pod: "{_pod_ref(pod)}". kubelet does not have ClusterDNS IP configured '
                                           'and cannot create Pod using "ClusterFirst" policy. Falling back to '
                                           '"Default" policy.'))
        kind = "host"
    if kind == "none":
        cfg = DnsConfig()
    elif kind == "cluster":
        domain = cluster_domain.strip(".")
        searches = base.searches
        if domain:
            ns = meta.get("namespace") or "default"
            searches = _unique([f"{ns}.svc.{domain}", f"svc.{domain}", domain, *base.searches])
        cfg = DnsConfig(list(cluster_dns), searches, list(DEFAULT_OPTIONS))
    else:
        cfg = base
        if host is None:  # no resolv.conf for the node: "use the nameserver on the local machine"
            cfg.servers = cfg.servers + ["127.0.0.1"]
            cfg.searches = ["."]
    extra = spec.get("dnsConfig")
    if isinstance(extra, dict):
        cfg.servers = _unique(cfg.servers + [str(s) for s in extra.get("nameservers") or []])
        cfg.searches = _unique(cfg.searches + [str(s) for s in extra.get("searches") or []])
        cfg.options = _merge_options(cfg.options, list(extra.get("options") or []))
    return _fit_limits(cfg, notes), notes


def render_resolv_conf(cfg: DnsConfig) -> str:
    lines = []
    if cfg.searches:
        lines.append("search " + " ".join(cfg.searches))
    lines += [f"nameserver {s}" for s in cfg.servers]
    if cfg.options:
        lines.append("options " + " ".join(cfg.options))
    return "".join(line + "\n" for line in lines)


def pod_hostname(pod: dict[str, Any], cluster_domain: str) -> tuple[str, str]:
    """(hostname, domain): spec.hostname or the pod name (at most 63 characters); the domain
    `<subdomain>.<ns>.svc.<cluster domain>` when spec.subdomain is set, else ""."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    hostname = str(spec.get("hostname") or meta.get("name") or "")
    if len(hostname) > 63:
        hostname = hostname[:63].rstrip("-.")
    domain = ""
    if spec.get("subdomain") and cluster_domain.strip("."):
        domain = f"{spec['subdomain']}.{meta.get('namespace') or 'default'}.svc.{cluster_domain.strip('.')}"
    return hostname, domain


def render_hosts(pod: dict[str, Any], pod_ips: list[str], cluster_domain: str) -> str:
    hostname, domain = pod_hostname(pod, cluster_domain)
    out = ["# Kubernetes-managed hosts file.",
           "127.0.0.1\tlocalhost",
           "::1\tlocalhost ip6-localhost ip6-loopback",
           "fe00::0\tip6-localnet",
           "fe00::0\tip6-mcastprefix",
           "fe00::1\tip6-allnodes",
           "fe00::2\tip6-allrouters"]
    for ip in pod_ips:
        out.append(f"{ip}\t{hostname}.{domain}\t{hostname}" if domain else f"{ip}\t{hostname}")
    aliases = [a for a in (pod.get("spec") or {}).get("hostAliases") or [] if isinstance(a, dict) and a.get("ip")]
    if aliases:
        out += ["", "# Entries added by HostAliases."]
        out += [f"{a['ip']}\t" + "\t".join(str(h) for h in a.get("hostnames") or []) for a in aliases]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- I/O


def _write_in_place(path: str, content: str) -> None:
    """Rewrite `path` if its content differs, keeping the inode: containers that bind-mounted the
    file see the change (a rename would leave them the old file), as the kubelet's WriteFile does."""
    try:
        with open(path) as f:
            if f.read() == content:
                return
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, 0o644)


class PodFiles:
    """Writes each pod's resolv.conf and etc-hosts under `<pods_dir>/<uid>/` and binds them into its containers."""

    def __init__(self, pods_dir: str, cluster_dns: list[str], cluster_domain: str = "cluster.local",
                 resolv_conf: str = RESOLV_CONF) -> None:
        self.pods_dir = os.path.abspath(pods_dir)
        self.cluster_dns = list(cluster_dns)
        self.cluster_domain = cluster_domain.strip(".")
        self.resolv_conf = resolv_conf

    def host_config(self, notes: list[Note]) -> DnsConfig | None:
        if not self.resolv_conf:
            return None
        try:
            with open(self.resolv_conf, errors="replace") as f:
                return parse_resolv_conf(f.read(_MAX_RESOLV_CONF_BYTES))
        except OSError as e:
            notes.append(("DNSConfigForming", f"cannot read the node's resolv.conf {self.resolv_conf}: "
                                              f"{e.strerror or e}; using an empty one"))
            return DnsConfig()

    def paths(self, uid: str) -> tuple[str, str]:
        d = os.path.join(self.pods_dir, uid)
        return os.path.join(d, "resolv.conf"), os.path.join(d, "etc-hosts")

    def binds(self, pod: dict[str, Any], container: dict[str, Any], pod_ip: str) -> tuple[list[str], list[Note]]:
        """Write the pod's files (when they changed) and return the container's bind strings and any warnings."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid or "/" in uid or uid.startswith("."):
            raise ContainerConfigError(f"unsafe pod uid {uid!r}")
        notes: list[Note] = []
        cfg, more = pod_dns_config(pod, self.cluster_dns, self.cluster_domain, self.host_config(notes))
        notes += more
        resolv, hosts = self.paths(uid)
        os.makedirs(os.path.dirname(resolv), mode=0o755, exist_ok=True)
        _write_in_place(resolv, render_resolv_conf(cfg))
        _write_in_place(hosts, render_hosts(pod, [pod_ip] if pod_ip else [], self.cluster_domain))
        mounted = {str(m.get("mountPath") or "").rstrip("/") for m in container.get("volumeMounts") or []
                   if isinstance(m, dict)}
        mode = "ro" if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") else "rw"
        out = [f"{src}:{dst}:{mode}" for src, dst in ((resolv, RESOLV_CONF), (hosts, ETC_HOSTS))
               if dst not in mounted and not (dst == ETC_HOSTS and not pod_ip)]
        return out, notes

    def teardown(self, uid: str) -> None:
        if not uid or "/" in uid or uid.startswith("."):
            return
        for path in self.paths(uid):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(os.path.join(self.pods_dir, uid))
        except OSError:
            pass  # gone already, or it still holds the pod's volumes (their teardown removes it)
