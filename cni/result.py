"""Result JSON in the shape of the requested cniVersion (pure).

1.x:   {"cniVersion", "interfaces": [{"name","mac","sandbox"?}],
        "ips": [{"address","gateway","interface"}], "routes": [{"dst","gw"?}], "dns": {}}
0.3.x / 0.4.0: the same, and every "ips" entry carries "version": "4"|"6".
"""

from __future__ import annotations

import ipaddress

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any


def is_v1(cni_version: str) -> bool:
    return not cni_version.startswith("0.")


def _copy(v: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists, scalars); copy.deepcopy costs an import."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def convert(result: dict[str, Any], cni_version: str) -> dict[str, Any]:
    """Re-shape a result (of any supported version) for `cni_version`."""
    out = _copy(result)
    out["cniVersion"] = cni_version
    ips = out.get("ips") or []
    for ip in ips:
        if is_v1(cni_version):
            ip.pop("version", None)
        else:
            try:
                ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
            except (KeyError, ValueError):
                ip.setdefault("version", "4")
    out["ips"] = ips
    out.setdefault("interfaces", [])
    out.setdefault("routes", [])
    out.setdefault("dns", {})
    return out


def merge(prev: dict[str, Any] | None, interfaces: list[dict[str, Any]], ips: list[dict[str, Any]],
          routes: list[dict[str, Any]], dns: dict[str, Any], cni_version: str) -> dict[str, Any]:
    """Our attachment appended to a chain's prevResult (interface indexes shifted)."""
    base = convert(prev or {}, cni_version)
    offset = len(base["interfaces"])
    base["interfaces"].extend(interfaces)
    for ip in ips:
        ip = dict(ip)
        if "interface" in ip:
            ip["interface"] += offset
        base["ips"].append(ip)
    for r in routes:
        if r not in base["routes"]:
            base["routes"].append(r)
    if dns:
        merged = dict(base.get("dns") or {})
        merged.update(dns)
        base["dns"] = merged
    return convert(base, cni_version)
