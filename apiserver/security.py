"""How the apiserver serves: TLS, who may authenticate how, and the admin kubeconfig it writes.

Secure by default. With no TLS flags the apiserver keeps a PKI in DATA_DIR/pki (`kubeling pki init`
on every start: what exists is kept, what is missing made), serves HTTPS with its apiserver.crt,
verifies client certificates against its ca.crt, signs service-account tokens with sa.key, and writes
DATA_DIR/admin.kubeconfig with the CA and the admin client certificate. --client-ca-file,
--service-account-key-file and --service-account-signing-key-file override single pieces.

With --tls-cert-file and --tls-private-key-file the operator owns the PKI: nothing is generated,
client certificates are asked for only with --client-ca-file, tokens are verified with
--service-account-key-file (default: the signing key's public half) and issued only with
--service-account-signing-key-file. DATA_DIR/admin.kubeconfig is then the operator's to provide.

--insecure-serving is the loud opt-out: plain HTTP, no authentication, every request is
system:insecure (system:masters), logged as a warning at start.

Agents (the apiserver as their client, for logs, exec, attach, port-forward; nodeproxy.KubeletClient):
HTTPS, verifying each agent's serving certificate against --kubelet-certificate-authority (for the
endpoint's IP or name) and presenting --kubelet-client-certificate / --kubelet-client-key, upstream's
flags. With the PKI in DATA_DIR/pki they default to its ca.crt and apiserver-kubelet-client.crt/.key.
With an operator PKI and no --kubelet-certificate-authority the agents' certificates are not verified
(upstream's behaviour), said in a warning at start. --insecure-serving talks plain HTTP to agents
unless --kubelet-client-certificate is given.

TLS: 1.2 or newer; TLS 1.2 only with ECDHE key exchange and AEAD ciphers (AES-GCM, ChaCha20-Poly1305),
TLS 1.3 suites are all of that kind; no compression, no renegotiation; ALPN http/1.1.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from kube import pki, tls

from .auth.authn import Authenticator, TokenIssuer
from .auth.tokens import (
    DEFAULT_ISSUER,
    KeyFileError,
    PublicKey,
    TokenSigner,
    TokenVerifier,
    load_public_keys,
    load_signing_key,
)
from .nodeproxy import KubeletClient

log = logging.getLogger("kubeling.apiserver")

class SecurityError(Exception):
    """A setting or file the operator must fix; printed as one line."""


@dataclass
class SecurityConfig:
    """The flags, upstream's names: --tls-cert-file, --tls-private-key-file, --client-ca-file,
    --service-account-key-file (repeatable), --service-account-signing-key-file,
    --service-account-issuer, --api-audiences, --anonymous-auth, --insecure-serving."""

    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    client_ca_file: str = ""
    service_account_key_files: tuple[str, ...] = ()
    service_account_signing_key_file: str = ""
    service_account_issuer: str = DEFAULT_ISSUER
    api_audiences: tuple[str, ...] = ()  # default: the issuer
    service_account_max_token_expiration: int = 0  # seconds, 0 = no cap
    anonymous_auth: bool = False
    insecure_serving: bool = False
    kubelet_certificate_authority: str = ""
    kubelet_client_certificate: str = ""
    kubelet_client_key: str = ""


@dataclass
class Security:
    insecure: bool
    ssl_context: ssl.SSLContext | None = None
    scheme: str = "http"
    verifier: TokenVerifier | None = None
    issuer: TokenIssuer | None = None
    anonymous: bool = False
    server_url: str = ""
    admin_credentials: dict[str, Any] = field(default_factory=dict)  # kube.pki.kubeconfig_yaml's *_data kwargs
    pki_dir: str = ""
    kubelet: KubeletClient = field(default_factory=KubeletClient)  # how to reach agents

    def authenticator(self, registry: Any) -> Authenticator:
        return Authenticator(registry, verifier=self.verifier, anonymous=self.anonymous, insecure=self.insecure)


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    try:
        return tls.server_context(cert_file, key_file, client_ca_file)
    except tls.TLSConfigError as e:
        raise SecurityError(str(e)) from None


def kubelet_client_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """The client side of apiserver -> agent TLS: verify the agent against ca_file ('' = do not verify, as
    upstream without --kubelet-certificate-authority) and present cert_file/key_file when given."""
    if ca_file:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise SecurityError(f"cannot load --kubelet-certificate-authority {ca_file}: {e}") from None
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        for path in (cert_file, key_file):
            if not os.path.exists(path):
                raise SecurityError(f"cannot load the kubelet client certificate: {path} does not exist")
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as e:
            raise SecurityError(f"cannot load --kubelet-client-certificate {cert_file} / --kubelet-client-key "
                                f"{key_file}: {e}") from None
    return ctx


def _kubelet_client(cfg: SecurityConfig, pki_dir: str) -> KubeletClient:
    """How to reach agents, from the --kubelet-* flags (defaults from pki_dir when the apiserver keeps one)."""
    if bool(cfg.kubelet_client_certificate) != bool(cfg.kubelet_client_key):
        raise SecurityError("give --kubelet-client-certificate and --kubelet-client-key together")
    ca, cert, key = cfg.kubelet_certificate_authority, cfg.kubelet_client_certificate, cfg.kubelet_client_key
    if pki_dir:
        ca = ca or os.path.join(pki_dir, "ca.crt")
        if not cert:
            cert = os.path.join(pki_dir, pki.APISERVER_KUBELET_CLIENT.stem + ".crt")
            key = os.path.join(pki_dir, pki.APISERVER_KUBELET_CLIENT.stem + ".key")
    if not ca:
        log.warning("no --kubelet-certificate-authority: the agents' serving certificates are not verified")
    if not cert:
        log.warning("no --kubelet-client-certificate: agents that require client certificates refuse logs, exec "
                    "and port-forward")
    return KubeletClient("https", kubelet_client_context(ca, cert, key))


def _first_service_ip(service_cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(service_cidr, strict=False)[1])
    except (ValueError, IndexError):
        raise SecurityError(f"--service-cidr {service_cidr!r} is not a usable CIDR") from None


def _auto_sans(host: str) -> list[str]:
    sans = []
    if host not in ("", "0.0.0.0", "::"):
        sans.append(host)
    name = socket.gethostname()
    try:
        sans.append(pki.check_san(name))
    except pki.PKIError:
        pass  # a hostname that is no DNS name: leave it out
    return sans


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _verifier_and_issuer(cfg: SecurityConfig, key_files: list[str], signing_file: str) -> tuple[
        TokenVerifier | None, TokenIssuer | None]:
    audiences = cfg.api_audiences or (cfg.service_account_issuer,)
    try:
        signer = TokenSigner(load_signing_key(signing_file), cfg.service_account_issuer) if signing_file else None
        keys: list[PublicKey] = []
        for path in key_files:
            keys += load_public_keys(path)
    except KeyFileError as e:
        raise SecurityError(str(e)) from None
    if signer is not None and not keys:
        keys = [signer.key.public_key()]
    verifier = TokenVerifier(keys, [cfg.service_account_issuer], audiences) if keys else None
    issuer = TokenIssuer(signer, tuple(audiences), cfg.service_account_max_token_expiration) if signer else None
    if signer is not None and verifier is not None and signer.kid not in verifier.keys:
        log.warning("the service-account signing key is not among the verification keys: tokens this apiserver "
                    "issues will not authenticate here")
    return verifier, issuer


def resolve(cfg: SecurityConfig, data_dir: str, host: str, port: int, service_cidr: str) -> Security:
    """Check the flags, make or load the PKI, and say how to serve."""
    if cfg.insecure_serving:
        given = [f for f, v in (("--tls-cert-file", cfg.tls_cert_file), ("--client-ca-file", cfg.client_ca_file),
                                ("--anonymous-auth", cfg.anonymous_auth)) if v]
        if given:
            raise SecurityError(f"--insecure-serving serves plain HTTP without authentication: drop {given[0]}")
        sec = Security(insecure=True)
        if cfg.kubelet_client_certificate or cfg.kubelet_client_key:  # a test apiserver talking to TLS agents
            sec.kubelet = _kubelet_client(cfg, "")
        return sec
    if bool(cfg.tls_cert_file) != bool(cfg.tls_private_key_file):
        raise SecurityError("give --tls-cert-file and --tls-private-key-file together (or neither, to use the "
                            "PKI the apiserver keeps in DATA_DIR/pki)")
    server = f"https://{url_host(host)}:{port}"
    sec = Security(insecure=False, scheme="https", anonymous=cfg.anonymous_auth, server_url=server)
    if cfg.tls_cert_file:
        cert, key, client_ca = cfg.tls_cert_file, cfg.tls_private_key_file, cfg.client_ca_file
        signing = cfg.service_account_signing_key_file
        key_files = list(cfg.service_account_key_files) or ([signing] if signing else [])
        if not client_ca:
            log.warning("no --client-ca-file: client certificates are not accepted, only service-account tokens")
    else:
        pki_dir = sec.pki_dir = os.path.join(data_dir, "pki")
        try:
            report = pki.init_cluster(pki_dir, _auto_sans(host), _first_service_ip(service_cidr), server)
        except pki.PKIError as e:
            raise SecurityError(f"the apiserver's PKI in {pki_dir}: {e}") from None
        if report.created or report.reissued:
            log.info("pki %s", report.summary())
        cert, key = os.path.join(pki_dir, "apiserver.crt"), os.path.join(pki_dir, "apiserver.key")
        client_ca = cfg.client_ca_file or os.path.join(pki_dir, "ca.crt")
        signing = cfg.service_account_signing_key_file or os.path.join(pki_dir, "sa.key")
        key_files = list(cfg.service_account_key_files) or [os.path.join(pki_dir, "sa.pub")]
        sec.admin_credentials = {
            "user": "admin",
            "ca_data": _read(os.path.join(pki_dir, "ca.crt")),
            "cert_data": _read(os.path.join(pki_dir, "admin.crt")),
            "key_data": _read(os.path.join(pki_dir, "admin.key")),
        }
    sec.ssl_context = server_ssl_context(cert, key, client_ca)
    sec.verifier, sec.issuer = _verifier_and_issuer(cfg, key_files, signing)
    sec.kubelet = _kubelet_client(cfg, sec.pki_dir)
    return sec


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- flags --------------------------------------------------------------------------------


def add_args(p: Any) -> None:
    """The security flags of `kubeling apiserver` and `kubeling server` (an argparse parser)."""
    g = p.add_argument_group("security (default: HTTPS with a PKI kept in DATA_DIR/pki; see --insecure-serving)")
    g.add_argument("--tls-cert-file", default="", metavar="FILE",
                   help="serving certificate (PEM); with --tls-private-key-file, no PKI is generated")
    g.add_argument("--tls-private-key-file", default="", metavar="FILE", help="the serving certificate's key")
    g.add_argument("--client-ca-file", default="", metavar="FILE",
                   help="CA bundle that client certificates must chain to (CN = user, O = groups)")
    g.add_argument("--service-account-key-file", action="append", default=[], metavar="FILE",
                   help="PEM public (or private) key(s) that verify service-account tokens (repeatable)")
    g.add_argument("--service-account-signing-key-file", default="", metavar="FILE",
                   help="private key that signs the service-account tokens this apiserver issues")
    g.add_argument("--service-account-issuer", default=DEFAULT_ISSUER, metavar="URL",
                   help="the iss of issued tokens, and the only one accepted (default %(default)s)")
    g.add_argument("--api-audiences", default="", metavar="AUD[,AUD]",
                   help="audiences a token must name to authenticate here (default: the issuer)")
    g.add_argument("--service-account-max-token-expiration", type=int, default=0, metavar="SECONDS",
                   help="cap on the lifetime of requested tokens (default 0: none)")
    g.add_argument("--anonymous-auth", type=tls.bool_flag, nargs="?", const=True, default=False, metavar="BOOL",
                   help="serve requests without credentials as system:anonymous (default false)")
    g.add_argument("--kubelet-certificate-authority", default="", metavar="FILE",
                   help="CA bundle that agents' serving certificates must chain to (default with the generated "
                        "PKI: its ca.crt; else agents are not verified)")
    g.add_argument("--kubelet-client-certificate", default="", metavar="FILE",
                   help="client certificate the apiserver presents to agents (default with the generated PKI: "
                        "apiserver-kubelet-client.crt)")
    g.add_argument("--kubelet-client-key", default="", metavar="FILE", help="its key")
    g.add_argument("--insecure-serving", action="store_true",
                   help="DANGER: plain HTTP, no authentication or authorization, every request is an admin. "
                        "For tests and throwaway local clusters only")


def from_args(args: Any) -> SecurityConfig:
    return SecurityConfig(
        tls_cert_file=args.tls_cert_file, tls_private_key_file=args.tls_private_key_file,
        client_ca_file=args.client_ca_file, service_account_key_files=tuple(args.service_account_key_file),
        service_account_signing_key_file=args.service_account_signing_key_file,
        service_account_issuer=args.service_account_issuer,
        api_audiences=tuple(a.strip() for a in args.api_audiences.split(",") if a.strip()),
        service_account_max_token_expiration=args.service_account_max_token_expiration,
        anonymous_auth=args.anonymous_auth, insecure_serving=args.insecure_serving,
        kubelet_certificate_authority=args.kubelet_certificate_authority,
        kubelet_client_certificate=args.kubelet_client_certificate, kubelet_client_key=args.kubelet_client_key)
