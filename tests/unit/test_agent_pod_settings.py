"""What every container gets besides its spec: the master service's variables (agent.env.service_env_vars,
resolve_env's service_env), the PIDs limit (--pod-max-pids), and kube.client's in-cluster config that
reads the variables with the projected files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.env import resolve_env, service_env_vars
from kube.client import ConfigError, in_cluster_config

KUBERNETES = {"metadata": {"name": "kubernetes", "namespace": "default"},
              "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}


def test_service_env_vars_as_upstream() -> None:
    assert service_env_vars(KUBERNETES) == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1"}
    assert service_env_vars({"metadata": {"name": "x"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}) == {}
    dashed = service_env_vars({"metadata": {"name": "my-db"}, "spec": {"clusterIP": "fd00::5", "ports": [
        {"name": "pg-main", "port": 5432}, {"port": 53, "protocol": "UDP"}]}})
    assert dashed["MY_DB_SERVICE_PORT_PG_MAIN"] == "5432" and dashed["MY_DB_PORT"] == "tcp://[fd00::5]:5432"
    assert dashed["MY_DB_PORT_53_UDP"] == "udp://[fd00::5]:53" and dashed["MY_DB_PORT_53_UDP_ADDR"] == "fd00::5"


def test_container_env_wins_and_may_reference_service_vars() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    c = {"name": "c", "env": [{"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
                              {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]}
    env = dict(e.split("=", 1) for e in resolve_env(pod, c, lambda n, k: None, lambda n, k: None,
                                                    service_env=service_env_vars(KUBERNETES)))
    assert env["API"] == "https://10.96.0.1:443"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"  # the container's own value
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_in_cluster_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("jwt\n")
    (tmp_path / "ca.crt").write_text("PEM")
    (tmp_path / "namespace").write_text("team-a")
    cfg = in_cluster_config({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, str(tmp_path))
    assert (cfg.server, cfg.namespace, cfg.ca_file) == ("https://10.96.0.1:443", "team-a", str(tmp_path / "ca.crt"))
    assert cfg.bearer_token() == "jwt"
    v6 = in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, str(tmp_path))
    assert v6.server == "https://[fd00::1]:443"
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"):
        in_cluster_config({}, str(tmp_path))
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        in_cluster_config({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"}, str(tmp_path / "none"))


def test_rotated_token_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kube.client import rest

    (tmp_path / "token").write_text("one")
    cfg = in_cluster_config({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}, str(tmp_path))
    with rest.Client(cfg) as c:
        assert c._c._headers["Authorization"] == "Bearer one"
        (tmp_path / "token").write_text("two")  # the agent rotated it
        assert c._c._headers["Authorization"] == "Bearer one"  # not before TOKEN_FILE_PERIOD
        monkeypatch.setattr(rest, "TOKEN_FILE_PERIOD", 0.0)
        assert c._c._headers["Authorization"] == "Bearer two"


def test_pod_max_pids_reaches_every_container() -> None:
    from agent.worker import DEFAULT_POD_MAX_PIDS, Hooks

    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"containers": [{"name": "c"}]}}
    c = pod["spec"]["containers"][0]  # type: ignore[index]
    assert Hooks().host_options(pod, c)["pids_limit"] == DEFAULT_POD_MAX_PIDS == 4096
    assert Hooks(pids_limit=77).host_options(pod, c)["pids_limit"] == 77
    assert "pids_limit" not in Hooks(pids_limit=-1).host_options(pod, c)  # --pod-max-pids -1: no limit
