"""Container environment: env, valueFrom and envFrom resolved as the kubelet does.

Upstream: ``kubelet_pods.go`` ``makeEnvironmentVariables``.  Order and
precedence follow it: envFrom sources first (in order, later keys win), then
``env`` in order; a ``value`` may reference any variable defined before it as
``$(NAME)`` (``$$`` escapes a ``$``, unknown references stay literal).
The master service's variables (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, KUBERNETES_PORT_443_TCP...,
from the default/kubernetes Service, as the kubelet always sets them) come from ``service_env_vars`` via
``service_env``: they can be referenced as ``$(VAR)`` and the container's own variables win.  Other
services' link variables (enableServiceLinks) are not produced.

Errors use upstream's wording, because users see them in ``kubectl describe``:
``configmap "cfg" not found``, ``couldn't find key k in ConfigMap default/cfg``.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from agent.errors import ContainerConfigError
from kube.api.quantity import QuantityError, parse_quantity

Getter = Callable[[str, str], "dict[str, Any] | None"]

__all__ = ["resolve_env", "expand", "field_value", "resource_value", "secret_values", "configmap_values",
           "service_env_vars"]

# validation.IsEnvVarName (the classic, non-relaxed rule).
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUBSCRIPT_RE = re.compile(r"^(metadata\.(?:labels|annotations))\[['\"]?(.*?)['\"]?\]$")


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """``$(VAR)`` expansion exactly as upstream's third_party/forked/golang/expansion.

    ``$$`` -> ``$``; ``$(NAME)`` -> its value, or itself when NAME is unknown;
    a ``$`` followed by anything else, or an unclosed ``$(``, stays as written.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close < 0:
                    out.append("$(")
                else:
                    name = text[cursor + 2:close]
                    value = lookup(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _format_map(m: Mapping[str, Any]) -> str:
    """fieldpath.FormatMap: sorted ``k="v"`` lines."""
    return "\n".join(f'{k}="{m[k]}"' for k in sorted(m))


def field_value(pod: dict[str, Any], field_path: str, *, pod_ips: list[str] | None = None,
                host_ip: str | None = None) -> str:
    """The value of a fieldRef (downward API) for `pod`; ContainerConfigError for an unsupported path."""
    meta = _dict(pod.get("metadata"))
    spec = _dict(pod.get("spec"))
    status = _dict(pod.get("status"))
    if pod_ips is None:
        pod_ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
        if not pod_ips and status.get("podIP"):
            pod_ips = [str(status["podIP"])]
    if host_ip is None:
        host_ip = str(status.get("hostIP") or "")
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: str(meta.get("name") or ""),
        "metadata.namespace": lambda: str(meta.get("namespace") or ""),
        "metadata.uid": lambda: str(meta.get("uid") or ""),
        "metadata.labels": lambda: _format_map(_dict(meta.get("labels"))),
        "metadata.annotations": lambda: _format_map(_dict(meta.get("annotations"))),
        "spec.nodeName": lambda: str(spec.get("nodeName") or ""),
        "spec.serviceAccountName": lambda: str(spec.get("serviceAccountName") or ""),
        "status.hostIP": lambda: host_ip or "",
        "status.hostIPs": lambda: host_ip or "",
        "status.podIP": lambda: pod_ips[0] if pod_ips else "",
        "status.podIPs": lambda: ",".join(pod_ips or []),
    }
    if field_path in simple:
        return simple[field_path]()
    m = _SUBSCRIPT_RE.match(field_path)
    if m:
        which = "labels" if m.group(1).endswith("labels") else "annotations"
        return str(_dict(meta.get(which)).get(m.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldPath: {field_path}")


def _quantity(v: Any, default: str = "0") -> Decimal:
    try:
        return parse_quantity(v if v is not None else default)
    except QuantityError as e:
        raise ContainerConfigError(f"invalid quantity {v!r}: {e}") from None


def node_allocatable() -> dict[str, str]:
    """What a limit-less container may use: the node's CPUs and memory (upstream: node allocatable)."""
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"cpu": str(os.cpu_count() or 1), "memory": str(mem)}


def resource_value(pod: dict[str, Any], container: dict[str, Any], ref: dict[str, Any],
                   allocatable: Mapping[str, str] | None = None) -> str:
    """resourceFieldRef as upstream's ExtractContainerResourceValue (limits default to node allocatable)."""
    target = container
    wanted = ref.get("containerName")
    if wanted and wanted != container.get("name"):
        found = [c for key in ("containers", "initContainers") for c in _dict(pod.get("spec")).get(key) or []
                 if isinstance(c, dict) and c.get("name") == wanted]
        if not found:
            raise ContainerConfigError(f"container {wanted} not found in pod")
        target = found[0]
    resources = _dict(target.get("resources"))
    limits = _dict(resources.get("limits"))
    requests = _dict(resources.get("requests"))
    resource = str(ref.get("resource") or "")
    divisor = _quantity(ref.get("divisor"), "1")
    if divisor == 0:
        divisor = Decimal(1)
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise ContainerConfigError(f"unsupported container resource : {resource}")
    if kind == "limits":
        raw = limits.get(name)
        if raw is None and name in ("cpu", "memory"):
            raw = (allocatable or node_allocatable()).get(name)
    else:
        raw = requests.get(name, limits.get(name))  # apiserver defaults requests to limits
    value = _quantity(raw)
    if name == "cpu":
        milli = math.ceil(value * 1000)
        return str(math.ceil(Decimal(milli) / math.ceil(divisor * 1000)))
    return str(math.ceil(math.ceil(value) / math.ceil(divisor)))


def configmap_values(cm: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(cm.get("data")).items()}


def secret_values(secret: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's data, base64-decoded (stringData too, should a raw object carry it)."""
    out: dict[str, bytes] = {}
    for k, v in _dict(secret.get("data")).items():
        try:
            out[str(k)] = base64.b64decode(str(v), validate=True)
        except (binascii.Error, ValueError):
            raise ContainerConfigError(f"secret data key {k} is not valid base64") from None
    for k, v in _dict(secret.get("stringData")).items():
        out[str(k)] = str(v).encode()
    return out


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="surrogateescape")


def service_env_vars(service: dict[str, Any]) -> dict[str, str]:
    """A Service's docker-link style variables, as upstream's envvars.FromServices: {} for a headless one."""
    meta, spec = _dict(service.get("metadata")), _dict(service.get("spec"))
    ip = str(spec.get("clusterIP") or "")
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict) and p.get("port")]
    if not ip or ip == "None" or not ports:
        return {}
    name = str(meta.get("name") or "").upper().replace("-", "_")
    host = f"[{ip}]" if ":" in ip else ip
    out = {f"{name}_SERVICE_HOST": ip, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
    for p in ports:
        if p.get("name"):
            out[f"{name}_SERVICE_PORT_{str(p['name']).upper().replace('-', '_')}"] = str(p["port"])
    first_proto = str(ports[0].get("protocol") or "TCP").lower()
    out[f"{name}_PORT"] = f"{first_proto}://{host}:{ports[0]['port']}"
    for p in ports:
        proto = str(p.get("protocol") or "TCP")
        prefix = f"{name}_PORT_{p['port']}_{proto.upper()}"
        out[prefix] = f"{proto.lower()}://{host}:{p['port']}"
        out[f"{prefix}_PROTO"] = proto.lower()
        out[f"{prefix}_PORT"] = str(p["port"])
        out[f"{prefix}_ADDR"] = ip
    return out


def resolve_env(pod: dict[str, Any], container: dict[str, Any], get_configmap: Getter, get_secret: Getter, *,
                pod_ips: list[str] | None = None, host_ip: str | None = None,
                allocatable: Mapping[str, str] | None = None,
                service_env: Mapping[str, str] | None = None) -> list[str]:
    """The container's environment as ``["K=V", ...]`` (envFrom first, then env; later duplicates win;
    then the service variables the container did not define).

    `pod_ips`/`host_ip` override status.podIP(s)/hostIP (the agent knows them before the status patch).
    Raises ContainerConfigError for a missing non-optional ConfigMap, Secret or key.
    """
    namespace = str(_dict(pod.get("metadata")).get("namespace") or "default")
    env: dict[str, str] = {}
    configmaps: dict[str, dict[str, Any] | None] = {}
    secrets: dict[str, dict[str, Any] | None] = {}

    def configmap(name: str) -> dict[str, Any] | None:
        if name not in configmaps:
            configmaps[name] = get_configmap(namespace, name)
        return configmaps[name]

    def secret(name: str) -> dict[str, Any] | None:
        if name not in secrets:
            secrets[name] = get_secret(namespace, name)
        return secrets[name]

    for source in container.get("envFrom") or []:
        if not isinstance(source, dict):
            continue
        prefix = str(source.get("prefix") or "")
        values: dict[str, str]
        if isinstance(source.get("configMapRef"), dict):
            ref = source["configMapRef"]
            name = str(ref.get("name") or "")
            cm = configmap(name)
            if cm is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'configmap "{name}" not found')
            values = configmap_values(cm)
        elif isinstance(source.get("secretRef"), dict):
            ref = source["secretRef"]
            name = str(ref.get("name") or "")
            s = secret(name)
            if s is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'secret "{name}" not found')
            values = {k: _text(v) for k, v in secret_values(s).items()}
        else:
            continue
        for k, v in values.items():
            key = prefix + k
            if _ENV_NAME_RE.match(key):  # upstream skips invalid names (and records an event)
                env[key] = v

    for var in container.get("env") or []:
        if not isinstance(var, dict) or not var.get("name"):
            continue
        name = str(var["name"])
        value_from = var.get("valueFrom")
        if not isinstance(value_from, dict):
            env[name] = expand(str(var.get("value") or ""), lambda k: env.get(k, (service_env or {}).get(k)))
            continue
        value = _value_from(pod, container, value_from, namespace, configmap, secret,
                            pod_ips=pod_ips, host_ip=host_ip, allocatable=allocatable)
        if value is not None:
            env[name] = value
    for k, v in (service_env or {}).items():
        env.setdefault(k, v)
    return [f"{k}={v}" for k, v in env.items()]


def _value_from(pod: dict[str, Any], container: dict[str, Any], src: dict[str, Any], namespace: str,
                configmap: Callable[[str], dict[str, Any] | None], secret: Callable[[str], dict[str, Any] | None],
                *, pod_ips: list[str] | None, host_ip: str | None,
                allocatable: Mapping[str, str] | None) -> str | None:
    """One valueFrom; None when an optional source or key is missing (the variable is left out)."""
    if isinstance(src.get("fieldRef"), dict):
        return field_value(pod, str(src["fieldRef"].get("fieldPath") or ""), pod_ips=pod_ips, host_ip=host_ip)
    if isinstance(src.get("resourceFieldRef"), dict):
        return resource_value(pod, container, src["resourceFieldRef"], allocatable)
    if isinstance(src.get("configMapKeyRef"), dict):
        ref = src["configMapKeyRef"]
        name, key, optional = str(ref.get("name") or ""), str(ref.get("key") or ""), bool(ref.get("optional"))
        cm = configmap(name)
        if cm is None:
            if optional:
                return None
            raise ContainerConfigError(f'configmap "{name}" not found')
        data = configmap_values(cm)
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in ConfigMap {namespace}/{name}")
        return data[key]
    if isinstance(src.get("secretKeyRef"), dict):
        ref = src["secretKeyRef"]
        name, key, optional = str(ref.get("name") or ""), str(ref.get("key") or ""), bool(ref.get("optional"))
        s = secret(name)
        if s is None:
            if optional:
                return None
            raise ContainerConfigError(f'secret "{name}" not found')
        sdata = secret_values(s)
        if key not in sdata:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in Secret {namespace}/{name}")
        return _text(sdata[key])
    return None
