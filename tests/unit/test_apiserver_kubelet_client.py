"""apiserver.security: how the apiserver reaches agents (--kubelet-certificate-authority,
--kubelet-client-certificate, --kubelet-client-key; defaults from DATA_DIR/pki)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from apiserver import security
from apiserver.nodeproxy import PLAIN, KubeletClient, kubelet_client


def test_secure_apiserver_defaults_to_its_pki(tmp_path: Path) -> None:
    sec = security.resolve(security.SecurityConfig(), str(tmp_path), "127.0.0.1", 6443, "10.96.0.0/12")
    k = sec.kubelet
    assert k.tls and k.url("10.0.0.5:10250", "/pods") == "https://10.0.0.5:10250/pods"
    assert k.url("10.0.0.5:10250", "/exec/a/b/c?x=1", websocket=True) == "wss://10.0.0.5:10250/exec/a/b/c?x=1"
    ctx = k.ssl_context
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c["subject"] == ((("commonName", "kubeling-ca"),),) for c in ctx.get_ca_certs())


def test_insecure_apiserver_speaks_plain_http_unless_given_a_client_certificate(tmp_path: Path) -> None:
    sec = security.resolve(security.SecurityConfig(insecure_serving=True), str(tmp_path), "127.0.0.1", 6443,
                           "10.96.0.0/12")
    assert sec.kubelet == KubeletClient() and not sec.kubelet.tls
    pki_sec = security.resolve(security.SecurityConfig(), str(tmp_path / "d"), "127.0.0.1", 6443, "10.96.0.0/12")
    d = Path(pki_sec.pki_dir)
    cfg = security.SecurityConfig(insecure_serving=True, kubelet_certificate_authority=str(d / "ca.crt"),
                                  kubelet_client_certificate=str(d / "apiserver-kubelet-client.crt"),
                                  kubelet_client_key=str(d / "apiserver-kubelet-client.key"))
    assert security.resolve(cfg, str(tmp_path), "127.0.0.1", 6443, "10.96.0.0/12").kubelet.tls


def test_bad_kubelet_flags_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(security.SecurityError, match="together"):
        security.resolve(security.SecurityConfig(kubelet_client_certificate="/x.crt"), str(tmp_path), "127.0.0.1",
                         6443, "10.96.0.0/12")
    with pytest.raises(security.SecurityError, match="/nonexistent.crt does not exist"):
        security.resolve(security.SecurityConfig(kubelet_client_certificate="/nonexistent.crt",
                                                 kubelet_client_key="/nonexistent.key"),
                         str(tmp_path), "127.0.0.1", 6443, "10.96.0.0/12")


def test_kubelet_client_of_an_app_state() -> None:
    class State:
        pass

    s = State()
    assert kubelet_client(s) is PLAIN
    s.kubelet = KubeletClient("https", None)  # type: ignore[attr-defined]
    assert kubelet_client(s).tls
