"""`kubeling apiserver --etcd-cafile/--etcd-certfile/--etcd-keyfile` become the etcd store URL's TLS options."""

from __future__ import annotations

import pytest

from apiserver.store.etcd import parse_etcd_url
from kubeling.cli import build_parser, store_with_etcd_tls


def test_the_flags_become_the_urls_tls_options() -> None:
    url = store_with_etcd_tls("etcd://127.0.0.1:2379?prefix=/kl", "/p/ca crt", "/p/c.crt", "/p/c.key")
    opts = parse_etcd_url(url)
    assert (opts.cacert, opts.cert, opts.key, opts.prefix) == ("/p/ca crt", "/p/c.crt", "/p/c.key", "/kl")
    assert opts.tls
    assert store_with_etcd_tls("etcd://h:1", "", "", "") == "etcd://h:1"


@pytest.mark.parametrize(("store", "ca", "cert", "key", "message"), [
    ("", "/ca", "", "", "need --store etcd://"),
    ("sqlite:///x/state.db", "/ca", "", "", "need --store etcd://"),
    ("etcd://h:1", "", "/c", "", "together"),
    ("etcd://h:1?cacert=/a", "/b", "", "", "already sets cacert"),
])
def test_flags_that_do_not_fit_are_refused(store: str, ca: str, cert: str, key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store_with_etcd_tls(store, ca, cert, key)


def test_server_flags_parse() -> None:
    args = build_parser().parse_args(["server", "--profiling=false", "--scheduler-kubeconfig", "s.kc",
                                      "--controller-manager-kubeconfig", "c.kc", "--etcd-cafile", "ca"])
    assert (args.profiling, args.scheduler_kubeconfig, args.controller_manager_kubeconfig, args.etcd_cafile) == (
        False, "s.kc", "c.kc", "ca")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["apiserver", "--profiling=maybe"])
