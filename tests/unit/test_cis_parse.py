"""The pure parts of scripts/cis-check (kubeling/lab/cis.py): command lines, unit files, socket tables."""

from __future__ import annotations

from pathlib import Path

from kubeling.lab import cis


def test_flags_in_every_spelling() -> None:
    flags = cis.parse_flags(["--a=1", "--b", "2", "--bare", "--empty", "", "--key-file", "k1", "--key-file=k2",
                             "--last"])
    assert flags == {"--a": ["1"], "--b": ["2"], "--bare": ["true"], "--empty": [""], "--key-file": ["k1", "k2"],
                     "--last": ["true"]}


def test_commands_are_recognised_by_kind() -> None:
    py = ["/r/.venv/bin/python", "-m", "kubeling.cli", "--log-level", "info", "server", "--listen", "1.2.3.4:6443",
          "--anonymous-auth=false"]
    assert cis.parse_command(py) == ("server", {"--listen": ["1.2.3.4:6443"], "--anonymous-auth": ["false"]})
    kind, flags = cis.parse_command(["/opt/venv/bin/kubeling", "agent", "--node-name", "n1"]) or ("", {})
    assert kind == "agent" and flags["--node-name"] == ["n1"]
    assert cis.parse_command(["/usr/bin/etcd", "--client-cert-auth=true"]) == (
        "etcd", {"--client-cert-auth": ["true"]})
    assert cis.parse_command(["/usr/bin/python3", "-m", "pytest", "server"]) is None
    assert cis.parse_command(["/r/.venv/bin/python", "-m", "kubeling.lab.supervisor", "--lab-dir", "x"]) is None
    assert cis.parse_command([]) is None


def test_systemd_exec_expansion() -> None:
    env = {"A": "a b", "B": "c  d", "E": ""}
    assert cis.expand_exec("/bin/x --n ${A} $B --m=${A}z $E tail", env) == [
        "/bin/x", "--n", "a b", "c", "d", "--m=a bz", "tail"]


def test_a_unit_with_continuations_and_an_environment_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x.env").write_text("# comment\nLISTEN=10.0.0.1:6443\nARGS=\"--store etcd://h:1\"\n")
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nEnvironmentFile=-/etc/x.env\nUser=etcd\n# ExecStart=/bin/false\n"
                    "ExecStart=/v/bin/kubeling server --listen ${LISTEN} \\\n  --profiling=false \\\n  $ARGS\n")
    argv, user = cis.read_unit(str(unit), str(tmp_path))
    assert user == "etcd"
    assert argv == ["/v/bin/kubeling", "server", "--listen", "10.0.0.1:6443", "--profiling=false", "--store",
                    "etcd://h:1"]


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2809 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0A38A8C0:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 0100007F:2809 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   3: 00000000:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0
"""


def test_listening_sockets_of_a_process() -> None:
    # only LISTEN rows (0A) whose inode belongs to the process: 127.0.0.1:10249 and 192.168.56.10:6443
    assert cis.listening_in(TCP, {"111", "222"}) == ["127.0.0.1:10249", "192.168.56.10:6443"]
    assert cis.listening_in(TCP, {"333"}) == ["0.0.0.0:53"]
    assert cis.hex_ip("00000000000000000000000001000000") == "[::1]"


def test_cipher_names_and_the_allowed_lists() -> None:
    assert cis.iana("ECDHE-ECDSA-AES128-GCM-SHA256") == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    assert cis.iana("ECDHE-RSA-CHACHA20-POLY1305") == "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
    assert cis.iana("AES256-GCM-SHA384") == "TLS_RSA_WITH_AES_256_GCM_SHA384"
    assert cis.iana("ECDHE-ECDSA-AES128-SHA") == "ECDHE-ECDSA-AES128-SHA"  # CBC: not in any list
    assert cis.allowed_suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", cis.KUBELET_STRONG)
    assert not cis.allowed_suite("ECDHE-ECDSA-AES128-SHA", cis.API_STRONG)
    # what kubeling's server contexts (apiserver and agent, kube/tls.py) allow passes the apiserver list
    suites = cis.configured_suites("kube.tls")
    assert suites and all(cis.allowed_suite(s, cis.API_STRONG) for s in suites)


def test_modes_at_most() -> None:
    assert cis.at_most(0o600, 0o600) and cis.at_most(0o400, 0o644) and cis.at_most(0o700, 0o700)
    assert not cis.at_most(0o640, 0o600) and not cis.at_most(0o755, 0o700) and not cis.at_most(0o1600, 0o600)
