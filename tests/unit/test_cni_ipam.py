"""host-local style IPAM store on a temp directory (no root needed)."""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import pytest

from cni import errors as E
from cni.config import parse_range
from cni.errors import CNIError
from cni.ipam import Store


def rng(subnet: str = "10.1.0.0/29", **kw: str) -> list:  # type: ignore[type-arg]
    return [parse_range({"subnet": subnet, **kw}, "test")]


def ip(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def test_allocation_skips_gateway_network_broadcast_and_round_robins(tmp_path: Path) -> None:
    r = rng()  # usable .1-.6, gateway .1
    with Store(str(tmp_path)) as s:
        got = [str(s.allocate(f"c{i}", "eth0", r)) for i in range(5)]
        assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
        with pytest.raises(CNIError) as ei:
            s.allocate("cx", "eth0", r)
        assert ei.value.code == E.IP_EXHAUSTED and "all 5 addresses are reserved" in ei.value.msg
        assert s.release("c1", "eth0") == [ip("10.1.0.3")]
        assert s.release("c1", "eth0") == []  # idempotent
        s.release("c0", "eth0")
        # round-robin: continues after the last reserved (.6), wraps to .2
        assert str(s.allocate("c9", "eth0", r)) == "10.1.0.2"
        assert str(s.allocate("c10", "eth0", r)) == "10.1.0.3"


def test_reservation_content_and_keying(tmp_path: Path) -> None:
    with Store(str(tmp_path)) as s:
        a = s.allocate("cid", "eth0", rng())
        b = s.allocate("cid", "eth1", rng())
        assert (tmp_path / str(a)).read_text() == "cid\neth0\n"
        assert [x.ip for x in s.find("cid", "eth1")] == [b]
        assert s.release("cid", "eth0") == [a]
        assert [x.ip for x in s.reservations()] == [b]


def test_requested_ip(tmp_path: Path) -> None:
    with Store(str(tmp_path)) as s:
        assert s.allocate("a", "eth0", rng(), requested=ip("10.1.0.5")) == ip("10.1.0.5")
        for bad in ("10.1.0.5", "10.1.0.1", "10.9.9.9"):
            with pytest.raises(CNIError) as ei:
                s.allocate("b", "eth0", rng(), requested=ip(bad))
            assert ei.value.code == E.IP_UNAVAILABLE


def test_range_start_end(tmp_path: Path) -> None:
    r = rng("10.1.0.0/24", rangeStart="10.1.0.100", rangeEnd="10.1.0.101")
    with Store(str(tmp_path)) as s:
        assert [str(s.allocate(c, "eth0", r)) for c in "ab"] == ["10.1.0.100", "10.1.0.101"]
        with pytest.raises(CNIError):
            s.allocate("c", "eth0", r)


def test_gc_keeps_only_valid_and_garbage_is_freed(tmp_path: Path) -> None:
    with Store(str(tmp_path)) as s:
        for c in ("a", "b", "c"):
            s.allocate(c, "eth0", rng())
    (tmp_path / "10.1.0.6").write_text("")  # a reservation with no readable owner
    (tmp_path / ".tmp-999-10.1.0.5").write_text("x")  # a crash leftover
    with Store(str(tmp_path)) as s:
        assert not (tmp_path / ".tmp-999-10.1.0.5").exists()
        freed = s.gc({("b", "eth0")})
        assert sorted(str(r.ip) for r in freed) == ["10.1.0.2", "10.1.0.4", "10.1.0.6"]
        assert [(r.container_id, r.ifname) for r in s.reservations()] == [("b", "eth0")]
        assert s.free_count(rng()) == 4


def test_lock_busy_is_try_again(tmp_path: Path) -> None:
    with Store(str(tmp_path)):
        with pytest.raises(CNIError) as ei:
            with Store(str(tmp_path), lock_timeout=0.05):
                pass
        assert ei.value.code == E.TRY_AGAIN


def test_threads_never_share_an_ip(tmp_path: Path) -> None:
    r = rng("10.1.0.0/24")
    got: list[str] = []

    def work(i: int) -> None:
        for j in range(10):
            with Store(str(tmp_path)) as s:
                got.append(str(s.allocate(f"t{i}-{j}", "eth0", r)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 80 and len(set(got)) == 80


def test_unwritable_dir_is_io_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(CNIError) as ei:
        with Store(str(f / "net")):
            pass
    assert ei.value.code == E.IO_FAILURE
    assert os.path.exists(f)
