"""`kubeling-cni`: the executable a CNI runtime calls (spec 1.1).

Environment: CNI_COMMAND (ADD, DEL, CHECK, VERSION, GC, STATUS), CNI_CONTAINERID,
CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH; network config on stdin.  Prints the
result JSON (ADD, VERSION) on stdout and exits 0, or prints an error JSON
{"cniVersion", "code", "msg", "details"} on stdout and exits 1.  It never
prints a traceback.  It acts in the network namespace it was started in.

Start-up time is most of an exec'd plugin's latency, so imports are lazy and
few: VERSION loads nothing but cni.cjson; ADD loads only stdlib modules that start
fast (see cni/netlink.py for why rtnetlink is spoken directly, and "Start-up" in
cni/README.md for what each avoided import costs).  KUBELING_CNI_TRACE=1 prints
per-phase timings on stderr (cni/trace.py).
"""

from __future__ import annotations

import gc
import os
import sys

from cni import cjson, trace  # cjson: json.loads/dumps without `import json` (~3 ms, see there)

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")


def _require(env: dict[str, str], name: str) -> str:
    from cni.errors import INVALID_ENV, CNIError
    value = env.get(name, "")
    if not value:
        raise CNIError(INVALID_ENV, f"required environment variable {name} is not set",
                       f"CNI_COMMAND={env.get('CNI_COMMAND', '')} needs {name}")
    return value


def run(env: dict[str, str], stdin: bytes) -> dict[str, Any] | None:
    """Execute one CNI command; returns the JSON to print (or None), raises CNIError."""
    from cni.errors import INVALID_ENV, CNIError
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, f"CNI_COMMAND {command!r} is not supported" if command
                       else "CNI_COMMAND is not set", f"expected one of {', '.join(COMMANDS)}")
    from cni import config as cfg
    if command == "VERSION":
        version = None
        if stdin.strip():
            try:
                obj = cjson.loads(stdin)
                if isinstance(obj, dict) and isinstance(obj.get("cniVersion"), str):
                    version = obj["cniVersion"]
            except ValueError:
                pass
        return {"cniVersion": version or cfg.LATEST_VERSION, "supportedVersions": list(cfg.SUPPORTED_VERSIONS)}

    trace.mark("imports: cni.errors, cni.config (ipaddress)")
    raw = cfg.decode(stdin)
    conf = cfg.parse(raw)
    trace.mark("config decoded and parsed")
    from cni import api, nsfd
    nsfd.allow_setns()  # this process is single-threaded and exits soon: setns() instead of helper forks
    trace.mark("imports: cni.api, cni.nsfd")
    if command == "ADD":
        return api.add(conf, _require(env, "CNI_CONTAINERID"), _require(env, "CNI_NETNS"),
                       _require(env, "CNI_IFNAME"), env.get("CNI_ARGS"))
    if command == "DEL":
        api.delete(conf, _require(env, "CNI_CONTAINERID"), env.get("CNI_NETNS"),
                   _require(env, "CNI_IFNAME"), env.get("CNI_ARGS"))
        return None
    if command == "CHECK":
        api.check(conf, _require(env, "CNI_CONTAINERID"), _require(env, "CNI_NETNS"),
                  _require(env, "CNI_IFNAME"), env.get("CNI_ARGS"))
        return None
    if command == "GC":
        api.gc(conf)
        return None
    api.status(conf)
    return None


def _error_version(stdin: bytes) -> str:
    from cni.config import LATEST_VERSION, SUPPORTED_VERSIONS
    try:
        obj = cjson.loads(stdin)
        v = obj.get("cniVersion") if isinstance(obj, dict) else None
        if v is None and isinstance(obj, dict) and isinstance(obj.get("plugins"), list):
            v = obj.get("cniVersion")
        return v if v in SUPPORTED_VERSIONS else LATEST_VERSION
    except (ValueError, AttributeError):
        return LATEST_VERSION


def main() -> None:
    # A run lives ~10 ms and makes no garbage cycles worth collecting; the
    # collector would only walk the freshly imported modules (~0.5 ms).
    gc.disable()
    from cni.errors import INTERNAL, IO_FAILURE, CNIError
    stdin = b""
    try:
        if os.environ.get("CNI_COMMAND") != "VERSION" or not sys.stdin.isatty():
            stdin = sys.stdin.buffer.read()
        trace.mark("stdin read")
        out = run(dict(os.environ), stdin)
    except CNIError as e:
        err = e
    except OSError as e:
        err = CNIError(IO_FAILURE, f"I/O failure: {e}", type(e).__name__)
    except Exception as e:  # noqa: BLE001 - the runtime must always get an error JSON, never a traceback
        err = CNIError(INTERNAL, f"internal error: {e}", type(e).__name__)
    else:
        if out is not None:
            sys.stdout.write(cjson.dumps(out) + "\n")
        trace.mark("result written")
        _exit(0)
    sys.stdout.write(cjson.dumps(err.to_dict(_error_version(stdin))) + "\n")
    _exit(1)


def _exit(code: int) -> None:
    """Flush and leave without the interpreter's teardown.

    Finalization (freeing every module and object, touching their pages again)
    costs a few ms per exec and does nothing the kernel does not do at exit:
    our fds (IPAM lock, netlink sockets) are closed and the flock dropped by
    the kernel.  Nothing is left in a Python buffer: both streams are flushed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
