"""Kubeconfig loading: path / KUBECONFIG / contexts, TLS material, tokens, clear errors."""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from kube.client.config import ClientConfig, ConfigError, kubeconfig_paths, load_kubeconfig
from kube.client.rest import Client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ADMIN = """apiVersion: v1
kind: Config
clusters:
- name: kubeling
  cluster:
    server: http://127.0.0.1:6443
users:
- name: admin
  user: {}
contexts:
- name: kubeling
  context:
    cluster: kubeling
    user: admin
    namespace: default
current-context: kubeling
preferences: {}
"""

FULL = """apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority: pki/ca.crt
    tls-server-name: kubernetes
- name: lab
  cluster:
    server: https://192.168.56.10:6443
    certificate-authority-data: @CA@
    insecure-skip-tls-verify: true
users:
- name: ops
  user:
    client-certificate: /abs/ops.crt
    client-key: pki/ops.key
- name: robot
  user:
    token: s3cret
- name: inline
  user:
    client-certificate-data: @CERT@
    client-key-data: @KEY@
contexts:
- name: prod
  context: {cluster: prod, user: ops, namespace: kube-system}
- name: lab
  context: {cluster: lab, user: robot}
- name: inline
  context: {cluster: lab, user: inline}
current-context: prod
""".replace("@CA@", b64(b"CA PEM")).replace("@CERT@", b64(b"CERT PEM")).replace("@KEY@", b64(b"KEY PEM"))


def write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


def test_admin_kubeconfig_as_the_apiserver_writes_it(tmp_path: Path) -> None:
    cfg = load_kubeconfig(write(tmp_path, "admin.kubeconfig", ADMIN))
    assert cfg.server == "http://127.0.0.1:6443"
    assert cfg.namespace == "default"
    assert cfg.context == "kubeling"
    assert not cfg.is_tls
    assert cfg.token is None and cfg.ca_file is None and cfg.client_cert_file is None
    assert not cfg.insecure_skip_tls_verify


def test_current_context_with_file_paths_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    path = write(tmp_path, "conf/config", FULL)
    cfg = load_kubeconfig(path)
    assert cfg.context == "prod"
    assert cfg.server == "https://10.0.0.1:6443"  # trailing slash dropped
    assert cfg.namespace == "kube-system"
    assert cfg.ca_file == str(tmp_path / "conf" / "pki" / "ca.crt")
    assert cfg.client_cert_file == "/abs/ops.crt"
    assert cfg.client_key_file == str(tmp_path / "conf" / "pki" / "ops.key")
    assert cfg.tls_server_name == "kubernetes"
    assert cfg.is_tls


def test_named_context_with_inline_data_and_token(tmp_path: Path) -> None:
    path = write(tmp_path, "config", FULL)
    lab = load_kubeconfig(path, context="lab")
    assert lab.server == "https://192.168.56.10:6443"
    assert lab.ca_data == b"CA PEM"
    assert lab.insecure_skip_tls_verify
    assert lab.token == "s3cret" and lab.bearer_token() == "s3cret"
    assert lab.namespace == "default"
    inline = load_kubeconfig(path, context="inline")
    assert inline.client_cert_data == b"CERT PEM" and inline.client_key_data == b"KEY PEM"


def test_kubeconfig_env_merges_files_first_wins(tmp_path: Path) -> None:
    first = write(tmp_path, "a", """
clusters:
- name: c1
  cluster: {server: "http://first:1"}
contexts:
- name: x
  context: {cluster: c1}
""")
    second = write(tmp_path, "b", """
clusters:
- name: c1
  cluster: {server: "http://second:2"}
- name: c2
  cluster: {server: "http://second:3"}
contexts:
- name: y
  context: {cluster: c2, namespace: team}
current-context: y
""")
    env = {"KUBECONFIG": os.pathsep.join([first, str(tmp_path / "missing"), second])}
    cfg = load_kubeconfig(env=env)
    assert cfg.context == "y" and cfg.server == "http://second:3" and cfg.namespace == "team"
    assert load_kubeconfig(env=env, context="x").server == "http://first:1"


def test_paths_precedence(tmp_path: Path) -> None:
    assert kubeconfig_paths("/x/y", {"KUBECONFIG": "/a"}) == ["/x/y"]
    assert kubeconfig_paths(None, {"KUBECONFIG": f"/a{os.pathsep}/b"}) == ["/a", "/b"]
    assert kubeconfig_paths(None, {}) == [os.path.expanduser("~/.kube/config")]


def test_token_file_is_read(tmp_path: Path) -> None:
    write(tmp_path, "token", "abc\n")
    path = write(tmp_path, "config", """
clusters: [{name: c, cluster: {server: "http://h:1"}}]
users: [{name: u, user: {tokenFile: token}}]
contexts: [{name: k, context: {cluster: c, user: u}}]
current-context: k
""")
    cfg = load_kubeconfig(path)
    assert cfg.bearer_token() == "abc"


@pytest.mark.parametrize("text, message", [
    ("clusters: []\ncontexts: []\n", "no current-context"),
    ("current-context: nope\ncontexts: [{name: a, context: {cluster: c}}]\n", "no context 'nope'"),
    ("current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n", "cluster 'c', which is not defined"),
    ("current-context: a\nclusters: [{name: c, cluster: {}}]\ncontexts: [{name: a, context: {cluster: c}}]\n",
     "has no server URL"),
    ("current-context: a\nclusters: [{name: c, cluster: {server: 'h:1'}}]\n"
     "contexts: [{name: a, context: {cluster: c}}]\n", "must start with http"),
    ("current-context: a\nclusters: [{name: c, cluster: {server: 'http://h', certificate-authority-data: '%%%'}}]\n"
     "contexts: [{name: a, context: {cluster: c}}]\n", "not valid base64"),
    ("current-context: a\nclusters: [{name: c, cluster: {server: 'http://h'}}]\n"
     "contexts: [{name: a, context: {cluster: c, user: ghost}}]\n", "user 'ghost'"),
    ("- just a list\n", "must be a mapping"),
    ("key: [unclosed\n", "not valid YAML"),
])
def test_errors_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(write(tmp_path, "config", text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_kubeconfig(str(tmp_path / "nope"))


def test_client_from_kubeconfig_uses_namespace_and_token(tmp_path: Path) -> None:
    path = write(tmp_path, "config", FULL)
    client = Client.from_kubeconfig(path, context="lab")
    try:
        assert client.server == "https://192.168.56.10:6443"
        assert client.namespace == "default"
        assert client._c._headers["Authorization"] == "Bearer s3cret"
        assert client._c._verify.verify_mode == ssl.CERT_NONE  # insecure-skip-tls-verify
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_ssl_context_loads_real_pem_material(tmp_path: Path) -> None:
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=kubeling-test"], check=True, capture_output=True,
                   timeout=60)
    by_file = ClientConfig(server="https://h:1", ca_file=str(crt), client_cert_file=str(crt),
                           client_key_file=str(key))
    ctx = by_file.ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1
    by_data = ClientConfig(server="https://h:1", ca_data=crt.read_bytes(), client_cert_data=crt.read_bytes(),
                           client_key_data=key.read_bytes())
    ctx2 = by_data.ssl_context()
    assert isinstance(ctx2, ssl.SSLContext) and len(ctx2.get_ca_certs()) == 1
    bad = ClientConfig(server="https://h:1", ca_data=b"not a pem")
    with pytest.raises(ConfigError, match="certificate authority"):
        bad.ssl_context()
