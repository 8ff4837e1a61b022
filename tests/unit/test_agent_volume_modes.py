"""agent.volumes: secret file modes, tmpfs mounts (FakeMounter), the service-account token volume, GC."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.volumes import (
    PROJECTED,
    SA_MOUNT_PATH,
    SA_VOLUME,
    FakeMounter,
    VolumeManager,
    VolumeSetupError,
    parse_mountinfo,
    unmount_all,
)
from kube.api.defaults import apply_defaults

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class Tokens:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str, tuple[str, ...], int]] = []
        self.forgotten: list[str] = []
        self.fail = ""

    def token(self, ns: str, sa: str, *, pod_name: str, pod_uid: str, audiences: Any = (),
              expiration_seconds: int = 0) -> str:
        from agent.tokens import TokenError
        if self.fail:
            raise TokenError(self.fail)
        self.asked.append((ns, sa, pod_name, tuple(audiences), expiration_seconds))
        return f"jwt-for-{sa}-{len(self.asked)}"

    def forget_pod(self, uid: str) -> None:
        self.forgotten.append(uid)


def manager(root: Path, *, tokens: Tokens | None = None, sa: dict[str, Any] | None = None,
            mounter: FakeMounter | None = None) -> VolumeManager:
    secrets = {("ns", "db"): {"data": {}, "stringData": {"password": "s3cret", "user": "app"}}}
    return VolumeManager(str(root), lambda ns, n: None, lambda ns, n: secrets.get((ns, n)), mounter=mounter,
                         tokens=tokens, ca_data=CA, get_service_account=lambda ns, n: sa)


def pod(volumes: list[dict[str, Any]] | None = None, uid: str = "uid-1", **spec: Any) -> dict[str, Any]:
    p = {"metadata": {"name": "app", "namespace": "ns", "uid": uid},
         "spec": {"volumes": volumes or [], "containers": [{"name": "c", "image": "x"}], **spec}}
    return p


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secret_files_are_0400_unless_asked_otherwise(tmp_path: Path) -> None:
    api_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "ns", "uid": "uid-1"},
               "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": [
                   {"name": "plain", "secret": {"secretName": "db"}},
                   {"name": "wide", "secret": {"secretName": "db", "defaultMode": 0o440}},
                   {"name": "item", "secret": {"secretName": "db", "items": [{"key": "user", "path": "u", "mode": 0o600},
                                                                             {"key": "password", "path": "p"}]}},
                   {"name": "cm", "configMap": {"name": "x", "optional": True}}]}}
    apply_defaults("pods", api_pod)  # as the apiserver stores it
    assert [v.get("secret", v.get("configMap"))["defaultMode"] for v in api_pod["spec"]["volumes"]] == \
        [0o400, 0o440, 0o400, 0o644]
    paths = manager(tmp_path).setup(api_pod)
    assert mode(f"{paths['plain']}/password") == 0o400 and Path(paths["plain"], "password").read_text() == "s3cret"
    assert mode(f"{paths['wide']}/user") == 0o440
    assert (mode(f"{paths['item']}/u"), mode(f"{paths['item']}/p")) == (0o600, 0o400)
    # a spec that reached the agent without defaulting: still 0400
    raw = manager(tmp_path / "raw").setup(pod([{"name": "s", "secret": {"secretName": "db"}}]))
    assert mode(f"{raw['s']}/user") == 0o400


def test_secret_and_projected_volumes_get_a_tmpfs_each_and_lose_it_on_teardown(tmp_path: Path) -> None:
    mounter = FakeMounter()
    vm = manager(tmp_path, mounter=mounter)
    p = pod([{"name": "s", "secret": {"secretName": "db"}}, {"name": "e", "emptyDir": {}},
             {"name": "proj", "projected": {"sources": [{"secret": {"name": "db"}}]}},
             {"name": "cm", "configMap": {"name": "x", "optional": True}}])
    paths = vm.setup(p)
    assert mounter.mounted == {os.path.realpath(paths["s"]), os.path.realpath(paths["proj"])}
    vm.setup(p)  # re-sync: no second mount
    assert [c for c in mounter.calls if c[0] == "mount"] == [("mount", paths["s"]), ("mount", paths["proj"])]
    assert vm.known() == ["uid-1"]
    vm.teardown("uid-1")
    assert mounter.mounted == set() and not (tmp_path / "pods/uid-1").exists()
    assert vm.known() == []


def test_teardown_unmounts_what_an_earlier_agent_mounted(tmp_path: Path) -> None:
    """After a restart nothing is remembered: the mounts below the pod's volumes dir are found again."""
    mounter = FakeMounter()
    manager(tmp_path, mounter=mounter).setup(pod([{"name": "s", "secret": {"secretName": "db"}}], uid="old"))
    fresh = manager(tmp_path, mounter=mounter)  # the restarted agent
    assert fresh.known() == ["old"]
    fresh.teardown("old")
    assert mounter.mounted == set() and fresh.known() == []
    # unmount_all: everything below a root (lab down, fixtures), deepest first
    manager(tmp_path, mounter=mounter).setup(pod([{"name": "s", "secret": {"secretName": "db"}}], uid="u2"))
    assert len(unmount_all(str(tmp_path), mounter)) == 1 and not mounter.mounted


def test_service_account_volume_token_ca_namespace(tmp_path: Path) -> None:
    tokens, mounter = Tokens(), FakeMounter()
    vm = manager(tmp_path, tokens=tokens, mounter=mounter)
    p = pod(serviceAccountName="reader")
    paths = vm.setup(p)
    sa_dir = paths[SA_VOLUME]
    assert sa_dir == str(tmp_path / "pods/uid-1/volumes" / PROJECTED / SA_VOLUME)
    assert os.path.realpath(sa_dir) in mounter.mounted
    assert Path(sa_dir, "token").read_text() == "jwt-for-reader-1"
    assert Path(sa_dir, "ca.crt").read_bytes() == CA and Path(sa_dir, "namespace").read_text() == "ns"
    assert {f: mode(f"{sa_dir}/{f}") for f in ("token", "ca.crt", "namespace")} == \
        {"token": 0o644, "ca.crt": 0o644, "namespace": 0o644}
    assert tokens.asked == [("ns", "reader", "app", (), 3607)]
    # mounted read-only into every container, unless it mounts something there itself
    assert vm.binds_for(p["spec"]["containers"][0], paths) == [f"{sa_dir}:{SA_MOUNT_PATH}:ro"]
    own = {"name": "c2", "volumeMounts": [{"name": "e", "mountPath": SA_MOUNT_PATH + "/"}]}
    assert vm.binds_for(own, {**paths, "e": "/x"}) == [f"/x:{SA_MOUNT_PATH}/:rw"]
    # every sync writes it again: a new token shows up as a new version
    vm.setup(p)
    assert Path(sa_dir, "token").read_text() == "jwt-for-reader-2"
    vm.teardown("uid-1")
    assert tokens.forgotten == ["uid-1"] and not mounter.mounted


def test_token_owned_by_the_pods_single_non_root_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    vm = manager(tmp_path, tokens=Tokens())
    sa_dir = vm.setup(pod(securityContext={"runAsUser": 1234}))[SA_VOLUME]
    st = os.stat(f"{sa_dir}/token")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1234, 0o600)
    mixed = pod(uid="uid-2", securityContext={"runAsUser": 1234},
                containers=[{"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"runAsUser": 5}}])
    st = os.stat(f"{vm.setup(mixed)[SA_VOLUME]}/token")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)


def test_automount_opt_out_on_the_pod_or_its_service_account(tmp_path: Path) -> None:
    tokens = Tokens()
    assert SA_VOLUME not in manager(tmp_path, tokens=tokens).setup(pod(automountServiceAccountToken=False))
    quiet = manager(tmp_path, tokens=tokens, sa={"metadata": {"name": "default"}, "automountServiceAccountToken": False})
    assert SA_VOLUME not in quiet.setup(pod(uid="u2"))
    assert SA_VOLUME in quiet.setup(pod(uid="u3", automountServiceAccountToken=True))  # the pod's word wins
    assert SA_VOLUME not in manager(tmp_path).setup(pod(uid="u4"))  # no token manager (insecure cluster)
    assert tokens.asked == [("ns", "default", "app", (), 3607)]


def test_projected_service_account_token_source(tmp_path: Path) -> None:
    tokens = Tokens()
    vm = manager(tmp_path, tokens=tokens)
    p = pod([{"name": "vault", "projected": {"defaultMode": 0o440, "sources": [
        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 7200, "path": "vault/token"}},
        {"secret": {"name": "db", "items": [{"key": "user", "path": "user"}]}}]}}], automountServiceAccountToken=False)
    paths = vm.setup(p)
    assert Path(paths["vault"], "vault/token").read_text() == "jwt-for-default-1"
    assert mode(f"{paths['vault']}/vault/token") == 0o440
    assert tokens.asked == [("ns", "default", "app", ("vault",), 7200)]
    with pytest.raises(VolumeSetupError, match='volume "vault" : this agent cannot request service-account tokens'):
        manager(tmp_path / "insecure").setup(p)


def test_token_failure_is_a_failed_mount_naming_the_volume(tmp_path: Path) -> None:
    tokens = Tokens()
    tokens.fail = 'failed to fetch token: serviceaccounts "reader" not found'
    with pytest.raises(VolumeSetupError) as e:
        manager(tmp_path, tokens=tokens).setup(pod(uid="abcdef-1", serviceAccountName="reader"))
    assert e.value.message == ('MountVolume.SetUp failed for volume "kube-api-access-abcde" : failed to fetch token: '
                               'serviceaccounts "reader" not found')
    assert e.value.event_reason == "FailedMount"


def test_parse_mountinfo_unescapes_paths() -> None:
    line = ("36 35 0:45 / /var/lib/x\\040y/pods/a rw,nosuid,nodev shared:1 - tmpfs kubeling-tmpfs rw,mode=755\n"
            "37 35 98:0 / /mnt rw - ext4 /dev/sda1 rw\n")
    assert parse_mountinfo(line) == [("/var/lib/x y/pods/a", "tmpfs", "kubeling-tmpfs"), ("/mnt", "ext4", "/dev/sda1")]
