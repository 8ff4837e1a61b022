"""The executable on bad input: spec error JSON, non-zero exit, no traceback, nothing written (no root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = str(Path(sys.executable).parent / "kubeling-cni")

pytestmark = pytest.mark.skipif(not os.path.exists(PLUGIN), reason="kubeling-cni not installed: pip install -e .")


def run(env: dict[str, str], stdin: bytes) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    p = subprocess.run([PLUGIN], input=stdin, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, timeout=30)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr.decode()


def test_version() -> None:
    rc, out, _ = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert rc == 0 and out["cniVersion"] == "0.4.0" and "1.1.0" in out["supportedVersions"]
    rc, out, _ = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and out["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("stdin,code", [
    (b"not json", 6),
    (b'{"cniVersion": "1.1.0", "name": "n", "ipam": {"subnet": "10.0.0.0/24"}}', 7),
    (b'{"cniVersion": "7.0.0", "name": "n", "type": "kubeling-cni", "ipam": {"subnet": "10.0.0.0/24"}}', 1),
    (b'{"cniVersion": "1.1.0", "name": "n", "type": "kubeling-cni", "ipam": {"subnet": "10.0.0.0/99"}}', 7),
])
def test_bad_stdin(tmp_path: Path, stdin: bytes, code: int) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent", "CNI_IFNAME": "eth0"}
    rc, out, err = run(env, stdin)
    assert rc == 1 and out["code"] == code and out["msg"] and "cniVersion" in out
    assert "Traceback" not in err


def test_missing_command_and_env(tmp_path: Path) -> None:
    rc, out, _ = run({}, b"{}")
    assert rc == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "kubeling-cni",
            "ipam": {"subnet": "10.0.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    rc, out, _ = run({"CNI_COMMAND": "ADD"}, json.dumps(conf).encode())
    assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    assert not (tmp_path / "ipam").exists()
