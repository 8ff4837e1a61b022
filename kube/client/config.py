"""Where the apiserver is and how to prove who we are: kubeconfig loading.

`load_kubeconfig()` reads the file(s) kubectl would read (an explicit path,
else every file in $KUBECONFIG merged in order, else ~/.kube/config), picks a
context (the one named, else current-context) and returns a `ClientConfig`:
the server URL(s), TLS material (as file paths or inline PEM data), a bearer
token and the context's default namespace. Relative file paths in a
kubeconfig are relative to the file that names them, as in kubectl.

Several apiservers of one cluster (sharing one store) are named by a comma-separated
list in the cluster's `server` field, e.g. `server: http://10.0.0.1:8080,http://10.0.0.2:8080`
(kubeling's extension; kubectl itself wants one URL), or by `ClientConfig(servers=[...])`.
The clients fail over between them (kube/client/rest.py).

`in_cluster_config()` is client-go's InClusterConfig, for a process in a pod: the server is
https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, verified with the projected ca.crt, and
the credential is the projected token file (/var/run/secrets/kubernetes.io/serviceaccount/token),
which the agent rotates and the clients read again every minute.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

DEFAULT_KUBECONFIG = os.path.join("~", ".kube", "config")


class ConfigError(Exception):
    """The kubeconfig is missing, unreadable or does not say how to reach a server."""


def split_servers(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Server URLs from "URL" or "URL1,URL2" (or a list of those): stripped, trailing '/' dropped,
    duplicates removed, order kept."""
    parts = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in parts:
        for url in str(part).split(","):
            url = url.strip().rstrip("/")
            if url and url not in out:
                out.append(url)
    return tuple(out)


def check_server_url(url: str, where: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"{where}: server {url!r} must start with http:// or https://")


@dataclass(frozen=True)
class ClientConfig:
    """`server` is the first (preferred) apiserver, `servers` every one of them, in order of preference.
    Give either: `server` may also be a comma-separated list; a non-empty `servers` wins over `server`."""

    server: str = ""  # "https://10.0.0.1:6443" or "http://127.0.0.1:8080"
    namespace: str = "default"  # the context's namespace: used when a call names none
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM
    client_cert_file: str | None = None
    client_cert_data: bytes | None = None  # PEM
    client_key_file: str | None = None
    client_key_data: bytes | None = None  # PEM
    token: str | None = None
    token_file: str | None = None  # read at each client start (rotated tokens)
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    context: str = ""  # the context this came from, for messages
    servers: tuple[str, ...] = ()  # every apiserver URL, servers[0] == server

    def __post_init__(self) -> None:
        servers = split_servers(self.servers) or split_servers(self.server)
        if not servers:
            raise ConfigError("the client config has no server URL")
        for url in servers:
            check_server_url(url, "the client config")
        schemes = {u.lower().split("://", 1)[0] for u in servers}
        if len(schemes) > 1:
            raise ConfigError(f"the servers {', '.join(servers)} mix http and https: use one scheme for all")
        object.__setattr__(self, "servers", servers)
        object.__setattr__(self, "server", servers[0])

    def with_servers(self, servers: str | list[str] | tuple[str, ...]) -> ClientConfig:
        """The same credentials for other apiserver URL(s) ("URL1,URL2" or a list): an explicit override."""
        urls = split_servers(servers)
        for url in urls:
            check_server_url(url, "servers")
        return dataclasses.replace(self, server="", servers=urls)

    @property
    def is_tls(self) -> bool:
        return self.server.lower().startswith("https://")

    def bearer_token(self) -> str | None:
        if self.token:
            return self.token
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip() or None
            except OSError as e:
                raise ConfigError(f"cannot read the token file {self.token_file}: {e.strerror}") from None
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx's `verify=` wants: False to skip verification, else an SSLContext with
        the CA and client certificate loaded. For plain http this is never consulted."""
        if self.insecure_skip_tls_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data or self.ca_file:
            # Trust only the cluster's CA (as kubectl does), not the system store.
            try:
                if self.ca_data:
                    ctx = ssl.create_default_context(cadata=self.ca_data.decode("ascii", "replace"))
                else:
                    ctx = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"cannot load the certificate authority ({self.ca_file or 'inline data'}): "
                                  f"{e}") from None
        else:
            ctx = ssl.create_default_context()
        if self.client_cert_data or self.client_cert_file:
            _load_client_cert(ctx, self)
        return ctx


def _load_client_cert(ctx: ssl.SSLContext, cfg: ClientConfig) -> None:
    """ssl only loads certificate chains from files: inline data goes through a 0600 temp file that is
    removed at once."""
    tmp: list[str] = []
    try:
        cert, key = cfg.client_cert_file, cfg.client_key_file
        if cfg.client_cert_data:
            cert = _write_temp(cfg.client_cert_data, tmp)
        if cfg.client_key_data:
            key = _write_temp(cfg.client_key_data, tmp)
        if cert is None:
            return
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the client certificate/key: {e}") from None
    finally:
        for path in tmp:
            os.unlink(path)


def _write_temp(data: bytes, created: list[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="kubeling-client-", suffix=".pem")
    created.append(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# -- kubeconfig files -------------------------------------------------------------


def kubeconfig_paths(path: str | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """The files to read, in precedence order: the explicit path, else $KUBECONFIG, else ~/.kube/config."""
    if path:
        return [os.path.expanduser(path)]
    env = os.environ if env is None else env
    raw = env.get("KUBECONFIG", "")
    if raw:
        paths = [os.path.expanduser(p) for p in raw.split(os.pathsep) if p]
        if paths:
            return paths
    return [os.path.expanduser(DEFAULT_KUBECONFIG)]


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"kubeconfig {path} does not exist: pass a path or set KUBECONFIG") from None
    except OSError as e:
        raise ConfigError(f"cannot read kubeconfig {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} must be a mapping (kind: Config), not {type(doc).__name__}")
    return doc


def _named(doc: dict[str, Any], section: str, item: str, path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise ConfigError(f"kubeconfig {path}: {section} must be a list")
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise ConfigError(f"kubeconfig {path}: every entry of {section} needs a name")
        body = e.get(item) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"kubeconfig {path}: {section}[{e['name']}].{item} must be a mapping")
        body = dict(body)
        body["_dir"] = os.path.dirname(os.path.abspath(path))
        out[e["name"]] = body
    return out


class _Merged:
    """Several kubeconfig files merged as kubectl does: the first file to define a name or
    current-context wins."""

    def __init__(self, paths: list[str]) -> None:
        self.clusters: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.contexts: dict[str, dict[str, Any]] = {}
        self.current_context = ""
        found = False
        for path in paths:
            if len(paths) > 1 and not os.path.exists(path):
                continue  # kubectl skips missing files in a KUBECONFIG list
            doc = _read_yaml(path)
            found = True
            for name, body in _named(doc, "clusters", "cluster", path).items():
                self.clusters.setdefault(name, body)
            for name, body in _named(doc, "users", "user", path).items():
                self.users.setdefault(name, body)
            for name, body in _named(doc, "contexts", "context", path).items():
                self.contexts.setdefault(name, body)
            if not self.current_context and isinstance(doc.get("current-context"), str):
                self.current_context = doc["current-context"]
        if not found:
            raise ConfigError(f"none of the kubeconfig files exist: {os.pathsep.join(paths)}")


def _path(value: Any, base: str) -> str | None:
    if not value:
        return None
    p = os.path.expanduser(str(value))
    return p if os.path.isabs(p) else os.path.join(base, p)


def _data(value: Any, what: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"kubeconfig {what} is not valid base64") from None


def load_kubeconfig(path: str | None = None, context: str | None = None,
                    env: Mapping[str, str] | None = None) -> ClientConfig:
    """Read a kubeconfig the way kubectl does and return how to reach the server of `context`
    (default: current-context)."""
    paths = kubeconfig_paths(path, env)
    merged = _Merged(paths)
    where = os.pathsep.join(paths)
    ctx_name = context or merged.current_context
    if not ctx_name:
        if len(merged.contexts) == 1:
            ctx_name = next(iter(merged.contexts))
        else:
            raise ConfigError(f"kubeconfig {where} has no current-context: pass a context name")
    ctx = merged.contexts.get(ctx_name)
    if ctx is None:
        raise ConfigError(f"kubeconfig {where} has no context {ctx_name!r} (it has: "
                          f"{', '.join(sorted(merged.contexts)) or 'none'})")
    cluster_name = ctx.get("cluster")
    cluster = merged.clusters.get(str(cluster_name)) if cluster_name else None
    if cluster is None:
        raise ConfigError(f"kubeconfig {where}: context {ctx_name!r} names cluster {cluster_name!r}, which is not "
                          f"defined")
    user_name = ctx.get("user")
    user: dict[str, Any] = {}
    if user_name:
        if str(user_name) not in merged.users:
            raise ConfigError(f"kubeconfig {where}: context {ctx_name!r} names user {user_name!r}, which is not "
                              f"defined")
        user = merged.users[str(user_name)]
    servers = split_servers(str(cluster.get("server") or ""))
    if not servers:
        raise ConfigError(f"kubeconfig {where}: cluster {cluster_name!r} has no server URL")
    for url in servers:
        check_server_url(url, f"kubeconfig {where}")
    cdir, udir = cluster["_dir"], user.get("_dir", cluster["_dir"])
    return ClientConfig(
        servers=servers,
        namespace=str(ctx.get("namespace") or "default"),
        ca_file=_path(cluster.get("certificate-authority"), cdir),
        ca_data=_data(cluster.get("certificate-authority-data"), f"cluster {cluster_name!r} "
                                                                 "certificate-authority-data"),
        client_cert_file=_path(user.get("client-certificate"), udir),
        client_cert_data=_data(user.get("client-certificate-data"), f"user {user_name!r} client-certificate-data"),
        client_key_file=_path(user.get("client-key"), udir),
        client_key_data=_data(user.get("client-key-data"), f"user {user_name!r} client-key-data"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=_path(user.get("tokenFile"), udir),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
        context=ctx_name,
    )


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def in_cluster_config(env: Mapping[str, str] | None = None, token_dir: str = SERVICE_ACCOUNT_DIR) -> ClientConfig:
    """How a process in a pod reaches the apiserver (client-go's InClusterConfig): the kubernetes
    Service's address from the environment the agent sets, the token, ca.crt and namespace files the
    agent projects into token_dir."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and "
                          "KUBERNETES_SERVICE_PORT must be defined")
    token = os.path.join(token_dir, "token")
    if not os.path.isfile(token):
        raise ConfigError(f"unable to load in-cluster configuration: {token} does not exist (is "
                          "automountServiceAccountToken false?)")
    ca = os.path.join(token_dir, "ca.crt")
    namespace = "default"
    try:
        with open(os.path.join(token_dir, "namespace")) as f:
            namespace = f.read().strip() or "default"
    except OSError:
        pass
    server_host = f"[{host}]" if ":" in host else host
    return ClientConfig(server=f"https://{server_host}:{port}", namespace=namespace, token_file=token,
                        ca_file=ca if os.path.isfile(ca) else None, context="in-cluster")
