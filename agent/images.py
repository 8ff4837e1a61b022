"""Local images for the agent and its tests, built from busybox-static with `docker import`.

No registry is reachable here, so `kubeling/pause:1` (holds the pod's namespaces, exits 0 on
SIGTERM) and `kubeling/test:1` (busybox applets: sh, httpd, nc, cat, sleep, tar, wget, ...) are
made from a rootfs tarball built in memory. Idempotent: an image that exists is left alone.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tarfile
import time
from typing import Any

log = logging.getLogger("kubeling.agent.images")

BUSYBOX = "/usr/bin/busybox"
PAUSE_IMAGE = "kubeling/pause:1"
TEST_IMAGE = "kubeling/test:1"
# PID 1 in the pause container: wait forever, exit 0 on SIGTERM (the trap runs between waits).
PAUSE_CMD = ["/bin/sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait; done']


def _applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [a for a in out.split() if a and "/" not in a and a != "busybox"]


def rootfs_tar() -> bytes:
    """A minimal busybox rootfs: /bin/busybox, one symlink per applet, /etc/passwd, empty dirs."""
    buf = io.BytesIO()
    now = time.time()

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, now
        tar.addfile(ti)

    def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, now
        tar.addfile(ti, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "var", "var/www", "root", "usr", "usr/bin"):
            add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            add_file(tar, "bin/busybox", f.read(), 0o755)
        for applet in _applets():
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, "busybox", 0o777, now
            tar.addfile(ti)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_file(tar, "var/www/index.html", b"kubeling\n")
    return buf.getvalue()


def _changes(cmd: list[str]) -> list[str]:
    import json
    return ["ENV PATH=/bin:/usr/bin", "WORKDIR /", f"CMD {json.dumps(cmd)}"]


def ensure_images(docker_client: Any | None = None) -> list[str]:
    """Build the pause and test images unless they exist; return the ones built."""
    import docker
    import docker.errors

    if not os.path.exists(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    dc = docker_client or docker.from_env(timeout=120)
    built: list[str] = []
    data: bytes | None = None
    for ref, cmd in ((PAUSE_IMAGE, PAUSE_CMD), (TEST_IMAGE, ["/bin/sh"])):
        try:
            dc.images.get(ref)
            continue
        except docker.errors.ImageNotFound:
            pass
        data = data or rootfs_tar()
        repo, tag = ref.rsplit(":", 1)
        dc.api.import_image_from_data(data, repository=repo, tag=tag, changes=_changes(cmd))
        log.info("image built ref=%s", ref)
        built.append(ref)
    return built


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    print(" ".join(ensure_images()) or "images present")
