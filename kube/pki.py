"""The cluster's PKI: a CA, the certificates every component proves itself with, kubeconfigs.

    report = init_cluster("/var/lib/kubeling/pki", apiserver_sans=["192.168.56.10"])
    add_node("/var/lib/kubeling/pki", "node1", "192.168.56.11")
    write_kubeconfig("x.kubeconfig", "https://10.0.0.1:6443", ca_data=..., cert_data=..., key_data=...)

Layout of a PKI directory (mode 0700; keys and kubeconfigs 0600, certificates 0644):

    ca.crt ca.key                              the cluster CA (10 years)
    apiserver.crt apiserver.key                the apiserver's serving certificate
    apiserver-kubelet-client.crt/.key          the apiserver as a client of the agents
    sa.key sa.pub                              the service-account token signing key pair
    admin|scheduler|controller-manager|proxy|dns .crt/.key/.kubeconfig   client identities
    nodes/NAME/client.crt/.key, serving.crt/.key, kubeconfig             one agent's identity

Keys are ECDSA P-256 (certificates signed with ECDSA-SHA256, tokens ES256): a key is made in about a
millisecond where RSA 2048 takes tens to hundreds (init makes a dozen, at the apiserver's first start),
signatures and handshakes are cheaper, and Go (kubectl), OpenSSL and upstream's token verifier all take
them; kubeadm offers the same choice (ECDSA-P256) besides its RSA default.

Everything is idempotent: an existing CA or certificate is kept; a missing one is made. A leaf
certificate that no longer fits its purpose (not signed by this CA, other subject, a wanted SAN missing,
expired or expiring within a week) is reissued with a new key, and the report says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_ALGORITHM = "ECDSA P-256"
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=7)  # a leaf closer than this to its end is reissued
BACKDATE = dt.timedelta(minutes=5)  # notBefore slack for clocks a little behind ours
CA_NAME = "kubeling-ca"
CLUSTER_NAME = "kubeling"
DEFAULT_SERVER = "https://127.0.0.1:6443"
DEFAULT_CLUSTER_IP = "10.96.0.1"
SERVICE_DNS_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                     "kubernetes.default.svc.cluster.local")

KEY_MODE, CERT_MODE, DIR_MODE, KUBECONFIG_MODE = 0o600, 0o644, 0o700, 0o600

_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PKIError(Exception):
    """Bad input or an unusable PKI directory; the message says what to do."""


@dataclass(frozen=True)
class CertSpec:
    """One certificate to have: the file stem (relative to the PKI dir) and what it must say."""

    stem: str  # "apiserver" -> apiserver.crt + apiserver.key; "nodes/n1/client" -> nodes/n1/client.crt ...
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False  # extendedKeyUsage serverAuth
    client: bool = False  # extendedKeyUsage clientAuth


@dataclass(frozen=True)
class Identity:
    """A client identity with a kubeconfig of its own: name.crt/.key/.kubeconfig."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()


MASTERS = "system:masters"
NODES = "system:nodes"
CLIENT_IDENTITIES = (
    Identity("admin", "kubeling-admin", (MASTERS,)),
    Identity("scheduler", "system:kube-scheduler"),
    Identity("controller-manager", "system:kube-controller-manager"),
    Identity("proxy", "system:kube-proxy"),
    Identity("dns", "system:kubeling-dns"),
)
APISERVER_KUBELET_CLIENT = CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", (MASTERS,),
                                    client=True)


@dataclass
class Report:
    """What an init did, file by file (paths relative to the PKI dir)."""

    directory: str
    created: list[str] = field(default_factory=list)
    reissued: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for what, names in (("created", self.created), ("reissued", self.reissued), ("kept", self.kept)):
            if names:
                parts.append(f"{what} {len(names)}: {', '.join(names)}")
        return f"{self.directory}: " + ("; ".join(parts) or "nothing to do")


# -- validation ---------------------------------------------------------------------------


def check_san(value: str) -> str:
    """An IP address or a DNS name, normalised; PKIError otherwise."""
    v = value.strip()
    try:
        return str(ipaddress.ip_address(v.strip("[]")))
    except ValueError:
        pass
    name = v.lower().rstrip(".")
    if len(name) > 253 or not _DNS_NAME.match(name):
        raise PKIError(f"SAN {value!r} is neither an IP address nor a DNS name (e.g. control.example or 10.0.0.1)")
    return name


def check_node_name(name: str) -> str:
    if not name or len(name) > 253 or not _DNS_NAME.match(name) or name.startswith("*"):
        raise PKIError(f"node name {name!r} must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')")
    return name


def check_ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        raise PKIError(f"{what} {value!r} is not an IP address") from None


def split_sans(values: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(dns names, ip addresses), normalised and de-duplicated in order."""
    dns: list[str] = []
    ips: list[str] = []
    for v in values:
        s = check_san(v)
        target = ips if _is_ip(s) else dns
        if s not in target:
            target.append(s)
    return tuple(dns), tuple(ips)


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


# -- keys and certificates ----------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def create_ca(common_name: str = CA_NAME, days: int = CA_DAYS,
              key: PrivateKey | None = None) -> tuple[PrivateKey, x509.Certificate]:
    key = key or generate_key()
    now = _now()
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca_key: PrivateKey, ca_cert: x509.Certificate, spec: CertSpec, days: int = CERT_DAYS,
          key: PrivateKey | None = None) -> tuple[PrivateKey, x509.Certificate]:
    """A leaf certificate for spec, signed by the CA (a new key unless one is given)."""
    key = key or generate_key()
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organizations)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                       critical=False)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def load_cert(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise PKIError(f"cannot read the certificate {path}: {e.strerror}") from None
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate") from None


def load_private_key(path: str) -> PrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise PKIError(f"cannot read the key {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise PKIError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{path}: only ECDSA and RSA keys are supported")
    return key


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def cert_sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """(dns names, ip addresses as strings) of a certificate."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(ext.get_values_for_type(x509.DNSName)), {str(i) for i in ext.get_values_for_type(x509.IPAddress)}


def subject_of(cert: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    """(common name, organizations) of a certificate's subject."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (str(cns[0].value) if cns else ""), tuple(str(o.value) for o in orgs)


def _why_unfit(cert: x509.Certificate, spec: CertSpec, ca_cert: x509.Certificate) -> str:
    """'' when cert still serves spec, else why not."""
    if not signed_by(cert, ca_cert):
        return "not signed by the CA"
    cn, orgs = subject_of(cert)
    if cn != spec.common_name or set(orgs) != set(spec.organizations):
        return "another subject"
    dns, ips = cert_sans(cert)
    missing = (set(spec.dns_names) - dns) | (set(spec.ip_addresses) - ips)
    if missing:
        return f"SAN {', '.join(sorted(missing))} missing"
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return "expired or about to expire"
    return ""


# -- files --------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write a file so that readers see the old or the new content, never a part; mode set before rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_dir(path: str) -> str:
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)
    except FileExistsError:
        raise PKIError(f"{path} exists and is not a directory") from None
    except OSError as e:
        raise PKIError(f"cannot use the directory {path}: {e.strerror}") from None
    return path


class PKIDir:
    """One PKI directory: load, keep or make the CA and the certificates in it."""

    def __init__(self, directory: str) -> None:
        self.dir = ensure_dir(directory)
        self.report = Report(self.dir)
        self._ca: tuple[PrivateKey, x509.Certificate] | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def ca(self) -> tuple[PrivateKey, x509.Certificate]:
        """The CA: loaded if ca.crt and ca.key exist, made if neither does."""
        if self._ca is not None:
            return self._ca
        have_crt, have_key = self._exists("ca.crt"), self._exists("ca.key")
        if have_crt and have_key:
            key, cert = load_private_key(self.path("ca.key")), load_cert(self.path("ca.crt"))
            if cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo) != \
                    key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
                raise PKIError(f"{self.path('ca.key')} does not belong to {self.path('ca.crt')}")
            if cert.not_valid_after_utc < _now():
                raise PKIError(f"the CA {self.path('ca.crt')} has expired: make a new PKI directory")
            self.report.kept += ["ca.crt", "ca.key"]
        elif have_crt or have_key:
            there, missing = ("ca.crt", "ca.key") if have_crt else ("ca.key", "ca.crt")
            raise PKIError(f"{self.path(there)} exists without {missing}: restore {missing} or remove {there}")
        else:
            key, cert = create_ca()
            write_atomic(self.path("ca.key"), key_pem(key), KEY_MODE)
            write_atomic(self.path("ca.crt"), cert_pem(cert), CERT_MODE)
            self.report.created += ["ca.crt", "ca.key"]
        self._ca = (key, cert)
        return self._ca

    def ensure_cert(self, spec: CertSpec) -> tuple[str, str]:
        """(cert path, key path) for spec: kept when it still fits, else (re)issued."""
        ca_key, ca_cert = self.ca()
        crt, key = spec.stem + ".crt", spec.stem + ".key"
        parent = ""
        for part in os.path.dirname(spec.stem).split("/"):
            if part:
                parent = os.path.join(parent, part)
                ensure_dir(self.path(parent))  # each level 0700, not only the last
        why = "missing"
        if self._exists(crt) and self._exists(key):
            why = _why_unfit(load_cert(self.path(crt)), spec, ca_cert)
            if not why:
                load_private_key(self.path(key))  # readable and a key: else PKIError now, not at serving time
                self.report.kept += [crt, key]
                return self.path(crt), self.path(key)
        k, cert = issue(ca_key, ca_cert, spec)
        write_atomic(self.path(key), key_pem(k), KEY_MODE)
        write_atomic(self.path(crt), cert_pem(cert), CERT_MODE)
        (self.report.created if why == "missing" else self.report.reissued).extend([crt, key])
        return self.path(crt), self.path(key)

    def ensure_sa_keys(self) -> tuple[str, str]:
        """(sa.key, sa.pub): the service-account token signing key pair."""
        key_path, pub_path = self.path("sa.key"), self.path("sa.pub")
        if os.path.exists(key_path):
            key = load_private_key(key_path)
            self.report.kept.append("sa.key")
        else:
            key = generate_key()
            write_atomic(key_path, key_pem(key), KEY_MODE)
            self.report.created.append("sa.key")
        pub = public_key_pem(key)
        if _read(pub_path) == pub:
            self.report.kept.append("sa.pub")
        else:
            self.report.created.append("sa.pub")
            write_atomic(pub_path, pub, CERT_MODE)
        return key_path, pub_path

    def ensure_kubeconfig(self, name: str, server: str, cert: str, key: str, user: str) -> str:
        """A self-contained kubeconfig (CA, cert and key embedded): written when its content changed."""
        path = self.path(name)
        text = kubeconfig_yaml(server, user=user, ca_data=_read(self.path("ca.crt")),
                               cert_data=_read(cert), key_data=_read(key))
        if _read(path) == text.encode():
            self.report.kept.append(name)
        else:
            (self.report.reissued if os.path.exists(path) else self.report.created).append(name)
            write_atomic(path, text.encode(), KUBECONFIG_MODE)
        return path


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PKIError(f"cannot read {path}: {e.strerror}") from None


# -- what a cluster needs -----------------------------------------------------------------


def apiserver_spec(sans: Iterable[str] = (), cluster_ip: str = DEFAULT_CLUSTER_IP) -> CertSpec:
    dns, ips = split_sans([*SERVICE_DNS_NAMES, "localhost", check_ip(cluster_ip, "cluster IP"), "127.0.0.1", *sans])
    return CertSpec("apiserver", "kube-apiserver", dns_names=dns, ip_addresses=ips, server=True)


def init_cluster(directory: str, apiserver_sans: Iterable[str] = (), cluster_ip: str = DEFAULT_CLUSTER_IP,
                 server: str = DEFAULT_SERVER) -> Report:
    """`kubeling pki init`: the CA, the apiserver's certificates, the SA key pair, and a certificate and
    kubeconfig (pointing at server) for each client identity. Idempotent."""
    spec = apiserver_spec(apiserver_sans, cluster_ip)  # validate before touching the disk
    _check_server(server)
    pki = PKIDir(directory)
    pki.ca()
    pki.ensure_cert(spec)
    pki.ensure_cert(APISERVER_KUBELET_CLIENT)
    pki.ensure_sa_keys()
    for ident in CLIENT_IDENTITIES:
        crt, key = pki.ensure_cert(CertSpec(ident.name, ident.common_name, ident.organizations, client=True))
        pki.ensure_kubeconfig(ident.name + ".kubeconfig", server, crt, key, user=ident.name)
    return pki.report


def node_dir(directory: str, node_name: str) -> str:
    return os.path.join(os.path.abspath(directory), "nodes", node_name)


def add_node(directory: str, node_name: str, node_ip: str, server: str = DEFAULT_SERVER) -> Report:
    """`kubeling pki node`: an agent's client certificate (system:node:NAME in system:nodes), its serving
    certificate (SANs: the name and the IP) and a kubeconfig, under nodes/NAME/. Needs the CA (init first)."""
    name = check_node_name(node_name)
    ip = check_ip(node_ip, "node IP")
    _check_server(server)
    directory = os.path.abspath(directory)
    if not (os.path.exists(os.path.join(directory, "ca.crt")) and os.path.exists(os.path.join(directory, "ca.key"))):
        raise PKIError(f"{directory} has no CA: run `kubeling pki init --dir {directory}` first")
    pki = PKIDir(directory)
    pki.ca()
    stem = f"nodes/{name}/"
    crt, key = pki.ensure_cert(CertSpec(stem + "client", f"system:node:{name}", (NODES,), client=True))
    pki.ensure_cert(CertSpec(stem + "serving", name, dns_names=(name,), ip_addresses=(ip,), server=True))
    pki.ensure_kubeconfig(stem + "kubeconfig", server, crt, key, user=f"system:node:{name}")
    return pki.report


def _check_server(server: str) -> None:
    if not server.startswith("https://"):
        raise PKIError(f"server {server!r} must be an https:// URL, e.g. {DEFAULT_SERVER}")


# -- kubeconfigs --------------------------------------------------------------------------


def kubeconfig_yaml(server: str, *, user: str = "admin", cluster: str = CLUSTER_NAME, context: str = CLUSTER_NAME,
                    namespace: str = "default",
                    ca_file: str | None = None, ca_data: bytes | None = None,
                    cert_file: str | None = None, cert_data: bytes | None = None,
                    key_file: str | None = None, key_data: bytes | None = None,
                    token: str | None = None, token_file: str | None = None) -> str:
    """A kubeconfig as kubectl reads it. *_data is PEM, embedded as base64 (certificate-authority-data,
    client-certificate-data, client-key-data); *_file is referenced by path."""
    cluster_body: dict[str, Any] = {"server": server}
    if ca_data:
        cluster_body["certificate-authority-data"] = base64.b64encode(ca_data).decode()
    elif ca_file:
        cluster_body["certificate-authority"] = ca_file
    user_body: dict[str, Any] = {}
    for k_data, k_file, data, path in (("client-certificate-data", "client-certificate", cert_data, cert_file),
                                        ("client-key-data", "client-key", key_data, key_file)):
        if data:
            user_body[k_data] = base64.b64encode(data).decode()
        elif path:
            user_body[k_file] = path
    if token:
        user_body["token"] = token
    elif token_file:
        user_body["tokenFile"] = token_file
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_body}],
        "users": [{"name": user, "user": user_body}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user, "namespace": namespace}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_kubeconfig(path: str, server: str, **kw: Any) -> None:
    """kubeconfig_yaml(server, **kw) written atomically, mode 0600."""
    write_atomic(path, kubeconfig_yaml(server, **kw).encode(), KUBECONFIG_MODE)
