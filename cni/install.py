"""Install kubeling-cni into a CNI bin dir and its network config into a conf dir.

    python -m cni.install [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                          [--subnet 10.244.1.0/24] [--name kubeling] [--bridge kl0] [--data-dir DIR]

The installed executable is a two-line launcher run with `python -I -S`: the
exec path needs only the standard library and this package, and skipping
site (with its .pth hooks; an editable install's finder alone costs ~11 ms)
cuts start-up from ~17 ms to ~6 ms.  Files are written atomically (temp +
rename), so a runtime never execs or reads a half-written file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"


def launcher_text(python: str | None = None, package_root: str | None = None) -> str:
    python = python or sys.executable
    root = package_root or str(Path(__file__).resolve().parents[1])
    return (f"#!{python} -IS\n"
            f"import sys; sys.path.insert(0, {root!r})\n"
            "from cni.main import main; main()\n")


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_plugin(bin_dir: str = DEFAULT_BIN_DIR, name: str = "kubeling-cni", python: str | None = None) -> Path:
    dest = Path(bin_dir) / name
    _atomic_write(dest, launcher_text(python), 0o755)
    return dest


def network_config(name: str, subnet: str, bridge: str = "kl0", data_dir: str | None = None,
                   ip_masq: bool = True, mtu: int = 1500) -> dict[str, Any]:
    ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
    if data_dir:
        ipam["dataDir"] = data_dir
    return {"cniVersion": "1.1.0", "name": name,
            "plugins": [{"type": "kubeling-cni", "bridge": bridge, "isGateway": True, "isDefaultGateway": True,
                         "ipMasq": ip_masq, "hairpinMode": True, "mtu": mtu, "ipam": ipam}]}


def install_config(conf_dir: str, conf: dict[str, Any], filename: str = "10-kubeling.conflist") -> Path:
    dest = Path(conf_dir) / filename
    _atomic_write(dest, json.dumps(conf, indent=2) + "\n", 0o644)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=DEFAULT_BIN_DIR)
    ap.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    ap.add_argument("--subnet", help="the node's podCIDR; without it no config is written")
    ap.add_argument("--name", default="kubeling")
    ap.add_argument("--bridge", default="kl0")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--python", default=None,
                    help="interpreter for the launcher (default: this one); the exec path needs only the "
                         "standard library, so a statically linked build such as Debian's /usr/bin/python3 "
                         "(same 3.x) works and runs an ADD ~1 ms faster than a --enable-shared pyenv build")
    args = ap.parse_args()
    print(install_plugin(args.bin_dir, python=args.python))
    if args.subnet:
        print(install_config(args.conf_dir, network_config(args.name, args.subnet, args.bridge, args.data_dir)))


if __name__ == "__main__":
    main()
