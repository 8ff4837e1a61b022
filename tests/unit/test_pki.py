"""kube/pki.py and `kubeling pki`: what a cluster PKI holds, file modes, idempotence, clear errors."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kube import pki
from kube.client.config import load_kubeconfig


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cert(path: Path) -> x509.Certificate:
    return pki.load_cert(str(path))


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_cluster(str(d), ["192.168.56.10", "control.example"], server="https://192.168.56.10:6443")
    return d


def test_init_makes_every_file_with_its_mode(cluster: Path) -> None:
    assert mode(cluster) == 0o700
    expected = ["ca", "apiserver", "apiserver-kubelet-client", "admin", "scheduler", "controller-manager", "proxy",
                "dns"]
    for stem in expected:
        assert mode(cluster / f"{stem}.crt") == 0o644, stem
        assert mode(cluster / f"{stem}.key") == 0o600, stem
    for ident in ("admin", "scheduler", "controller-manager", "proxy", "dns"):
        assert mode(cluster / f"{ident}.kubeconfig") == 0o600
    assert mode(cluster / "sa.key") == 0o600 and mode(cluster / "sa.pub") == 0o644
    assert not [p for p in cluster.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_subjects_usages_and_signatures(cluster: Path) -> None:
    ca = cert(cluster / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    want = {
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        "admin": ("kubeling-admin", ("system:masters",)),
        "scheduler": ("system:kube-scheduler", ()),
        "controller-manager": ("system:kube-controller-manager", ()),
        "proxy": ("system:kube-proxy", ()),
        "dns": ("system:kubeling-dns", ()),
    }
    for stem, subject in want.items():
        c = cert(cluster / f"{stem}.crt")
        assert pki.subject_of(c) == subject, stem
        assert pki.signed_by(c, ca), stem
        eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH], stem
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = pki.load_private_key(str(cluster / "admin.key"))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def test_apiserver_sans_and_validity(cluster: Path) -> None:
    c = cert(cluster / "apiserver.crt")
    dns, ips = pki.cert_sans(c)
    assert {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            "localhost", "control.example"} <= dns
    assert {"10.96.0.1", "127.0.0.1", "192.168.56.10"} <= ips
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < c.not_valid_after_utc - now <= dt.timedelta(days=365)
    ca = cert(cluster / "ca.crt")
    assert dt.timedelta(days=3649) < ca.not_valid_after_utc - now <= dt.timedelta(days=3650)


def test_kubeconfigs_embed_the_credentials(cluster: Path) -> None:
    cfg = load_kubeconfig(str(cluster / "scheduler.kubeconfig"))
    assert cfg.server == "https://192.168.56.10:6443"
    assert cfg.ca_data == (cluster / "ca.crt").read_bytes()
    assert cfg.client_cert_data == (cluster / "scheduler.crt").read_bytes()
    assert cfg.client_key_data == (cluster / "scheduler.key").read_bytes()


def test_second_init_keeps_everything(cluster: Path) -> None:
    before = {p.name: p.read_bytes() for p in cluster.iterdir() if p.is_file()}
    report = pki.init_cluster(str(cluster), ["192.168.56.10", "control.example"],
                              server="https://192.168.56.10:6443")
    assert not report.created and not report.reissued
    assert {p.name: p.read_bytes() for p in cluster.iterdir() if p.is_file()} == before


def test_missing_cert_is_added_and_the_rest_kept(cluster: Path) -> None:
    ca_before = (cluster / "ca.crt").read_bytes()
    sched_before = (cluster / "scheduler.crt").read_bytes()
    (cluster / "admin.crt").unlink()
    report = pki.init_cluster(str(cluster), ["192.168.56.10", "control.example"],
                              server="https://192.168.56.10:6443")
    assert "admin.crt" in report.created and "admin.key" in report.created
    assert (cluster / "ca.crt").read_bytes() == ca_before
    assert (cluster / "scheduler.crt").read_bytes() == sched_before
    assert pki.signed_by(cert(cluster / "admin.crt"), cert(cluster / "ca.crt"))
    # the kubeconfig follows the new certificate
    assert load_kubeconfig(str(cluster / "admin.kubeconfig")).client_cert_data == (cluster / "admin.crt").read_bytes()


def test_a_new_san_reissues_only_the_serving_cert(cluster: Path) -> None:
    admin_before = (cluster / "admin.crt").read_bytes()
    report = pki.init_cluster(str(cluster), ["192.168.56.10", "control.example", "10.1.2.3"],
                              server="https://192.168.56.10:6443")
    assert report.reissued == ["apiserver.crt", "apiserver.key"]
    assert "10.1.2.3" in pki.cert_sans(cert(cluster / "apiserver.crt"))[1]
    assert (cluster / "admin.crt").read_bytes() == admin_before


def test_a_cert_about_to_expire_or_from_another_ca_is_reissued(cluster: Path, tmp_path: Path) -> None:
    ca_key = pki.load_private_key(str(cluster / "ca.key"))
    ca = cert(cluster / "ca.crt")
    _, short = pki.issue(ca_key, ca, pki.CertSpec("proxy", "system:kube-proxy", client=True), days=2)
    (cluster / "proxy.crt").write_bytes(pki.cert_pem(short))
    other_key, other_ca = pki.create_ca("someone-else")
    _, foreign = pki.issue(other_key, other_ca, pki.CertSpec("dns", "system:kubeling-dns", client=True))
    (cluster / "dns.crt").write_bytes(pki.cert_pem(foreign))
    report = pki.init_cluster(str(cluster), ["192.168.56.10", "control.example"],
                              server="https://192.168.56.10:6443")
    assert {"proxy.crt", "dns.crt"} <= set(report.reissued)
    assert pki.signed_by(cert(cluster / "dns.crt"), ca)
    assert cert(cluster / "proxy.crt").not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init_cluster(str(d))
    (d / "ca.key").unlink()
    with pytest.raises(pki.PKIError, match="ca.crt exists without ca.key"):
        pki.init_cluster(str(d))


def test_node_credentials(cluster: Path) -> None:
    pki.add_node(str(cluster), "node1", "192.168.56.11", server="https://192.168.56.10:6443")
    node = cluster / "nodes" / "node1"
    assert mode(cluster / "nodes") == 0o700 and mode(node) == 0o700
    ca = cert(cluster / "ca.crt")
    client = cert(node / "client.crt")
    assert pki.subject_of(client) == ("system:node:node1", ("system:nodes",)) and pki.signed_by(client, ca)
    serving = cert(node / "serving.crt")
    assert pki.cert_sans(serving) == ({"node1"}, {"192.168.56.11"})
    assert mode(node / "client.key") == 0o600 and mode(node / "kubeconfig") == 0o600
    cfg = load_kubeconfig(str(node / "kubeconfig"))
    assert cfg.client_cert_data == (node / "client.crt").read_bytes()
    again = pki.add_node(str(cluster), "node1", "192.168.56.11", server="https://192.168.56.10:6443")
    assert not again.created and not again.reissued


@pytest.mark.parametrize("call, message", [
    (lambda d: pki.init_cluster(d, ["not a name!"]), "neither an IP address nor a DNS name"),
    (lambda d: pki.init_cluster(d, cluster_ip="10.96.0"), "cluster IP"),
    (lambda d: pki.init_cluster(d, server="http://127.0.0.1:6443"), "https://"),
    (lambda d: pki.add_node(d, "node1", "1.2.3.4"), "has no CA"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, call, message: str) -> None:
    with pytest.raises(pki.PKIError, match=message):
        call(str(tmp_path / "pki"))
    assert not (tmp_path / "pki" / "ca.key").exists(), "bad input must not leave a half-made PKI"


def test_bad_node_input(cluster: Path) -> None:
    with pytest.raises(pki.PKIError, match="DNS-1123"):
        pki.add_node(str(cluster), "Node_1", "1.2.3.4")
    with pytest.raises(pki.PKIError, match="node IP"):
        pki.add_node(str(cluster), "node1", "1.2.3")


def test_write_kubeconfig_embedded_or_by_path(tmp_path: Path, cluster: Path) -> None:
    embedded, by_path = tmp_path / "a.kubeconfig", tmp_path / "b.kubeconfig"
    pki.write_kubeconfig(str(embedded), "https://10.0.0.1:6443", ca_data=(cluster / "ca.crt").read_bytes(),
                         cert_data=(cluster / "admin.crt").read_bytes(), key_data=(cluster / "admin.key").read_bytes())
    pki.write_kubeconfig(str(by_path), "https://10.0.0.1:6443", ca_file=str(cluster / "ca.crt"),
                         cert_file=str(cluster / "admin.crt"), key_file=str(cluster / "admin.key"))
    a, b = load_kubeconfig(str(embedded)), load_kubeconfig(str(by_path))
    assert a.ca_data == (cluster / "ca.crt").read_bytes() and a.ca_file is None
    assert b.ca_file == str(cluster / "ca.crt") and b.client_key_file == str(cluster / "admin.key")
    assert mode(embedded) == 0o600 and mode(by_path) == 0o600
    token = tmp_path / "t.kubeconfig"
    pki.write_kubeconfig(str(token), "https://10.0.0.1:6443", ca_file=str(cluster / "ca.crt"), token="abc")
    assert load_kubeconfig(str(token)).bearer_token() == "abc"


def kubeling(*args: str) -> subprocess.CompletedProcess[str]:
    # a subprocess: the CLI's main() sets up logging on the stream it is given, which must outlive the test
    return subprocess.run([sys.executable, "-m", "kubeling.cli", *args], capture_output=True, text=True, timeout=30)


def test_cli(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    p = kubeling("pki", "init", "--dir", str(d), "--apiserver-san", "10.0.0.7")
    assert p.returncode == 0 and "created 23" in p.stdout, p.stderr
    assert "10.0.0.7" in pki.cert_sans(cert(d / "apiserver.crt"))[1]
    assert kubeling("pki", "node", "--dir", str(d), "--node-name", "n1", "--node-ip", "10.0.0.8").returncode == 0
    assert (d / "nodes" / "n1" / "kubeconfig").exists()
    p = kubeling("pki", "node", "--dir", str(d), "--node-name", "n1", "--node-ip", "nope")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(err) == 1 and "node IP 'nope' is not an IP address" in err[0], p.stderr
