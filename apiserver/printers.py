"""Server-side printing: meta.k8s.io/v1 Table responses for `kubectl get`.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and
prints the columns the server defines. The columns and cell rules follow
upstream's pkg/printers/internalversion/printers.go; the server always fills
the wide (priority 1) cells too, and kubectl shows them only with ``-o wide``.
Times are rendered with upstream's HumanDuration rules (``duration_short``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
Column = tuple[str, str, str, int]  # name, type, description, priority
Printer = Callable[[Obj, datetime], list[Any]]

NONE = "<none>"
UNKNOWN = "<unknown>"

_NAME_DESC = ("Name must be unique within a namespace. Is required when creating resources, although some "
              "resources may allow a client to request the generation of an appropriate name automatically. "
              "Name is primarily intended for creation idempotence and configuration definition. Cannot be "
              "updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names")
_AGE_DESC = ("CreationTimestamp is a timestamp representing the server time when this object was created. "
             "It is not guaranteed to be set in happens-before order across separate operations. Clients may "
             "not set this value. It is represented in RFC3339 form and is in UTC.")

NAME: Column = ("Name", "string", _NAME_DESC, 0)
AGE: Column = ("Age", "string", _AGE_DESC, 0)


# ---------------------------------------------------------------- durations


def duration_short(seconds: float) -> str:
    """A duration as kubectl shows it (k8s.io/apimachinery/pkg/util/duration.HumanDuration):
    ``5s``, ``119s``, ``3m2s``, ``45m``, ``5h3m``, ``20h``, ``2d3h``, ``30d``, ``3y40d``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> datetime | None:
    """RFC3339 (``2026-12-01T07:00:00Z``, with or without fractions) -> aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def since(value: Any, now: datetime) -> str:
    """translateTimestampSince: ``<unknown>`` for a missing time."""
    t = parse_time(value)
    if t is None:
        return UNKNOWN
    return duration_short((now - t).total_seconds())


# ---------------------------------------------------------------- helpers


def _d(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... with missing or null steps giving None."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: sorted ``k=v`` joined by commas, ``<none>`` when empty."""
    d = _dict(labels)
    if not d:
        return NONE
    return ",".join(f"{k}={d[k]}" for k in sorted(d))


def selector_string(selector: Any) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): requirements sorted by key."""
    sel = _dict(selector)
    reqs: list[tuple[str, str]] = []
    for k, v in _dict(sel.get("matchLabels")).items():
        reqs.append((k, f"{k}={v}"))
    for expr in _list(sel.get("matchExpressions")):
        key, op = _str(_d(expr, "key")), _str(_d(expr, "operator"))
        values = ",".join(sorted(str(v) for v in _list(_d(expr, "values"))))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op, f"{key} {op} ({values})")
        reqs.append((key, text))
    reqs.sort(key=lambda r: r[0])
    return ",".join(text for _, text in reqs)


def _containers_cells(pod_spec: Any) -> list[str]:
    """layoutContainerCells: container names and images, comma-joined."""
    containers = _list(_d(pod_spec, "containers"))
    return [",".join(_str(_d(c, "name")) for c in containers), ",".join(_str(_d(c, "image")) for c in containers)]


def _join_host_port(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        if ":" in host:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


def _more(items: list[str], more: bool, count: int, limit: int, empty: str) -> str:
    text = ",".join(items)
    if more:
        return f"{text} + {count - limit} more..."
    return text or empty


# ---------------------------------------------------------------- printers


def _pod(obj: Obj, now: datetime) -> list[Any]:
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    meta = _dict(obj.get("metadata"))
    restarts = 0
    restartable_restarts = 0
    total = len(_list(spec.get("containers")))
    ready = 0
    last_restart: datetime | None = None
    last_restartable_restart: datetime | None = None

    phase = _str(status.get("phase"))
    reason = _str(status.get("reason")) or phase
    conditions = _list(status.get("conditions"))
    for cond in conditions:
        if _d(cond, "type") == "PodScheduled" and _d(cond, "reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = {_str(_d(c, "name")): _dict(c) for c in _list(spec.get("initContainers"))}

    def restartable(name: str) -> bool:
        return _d(init_specs.get(name), "restartPolicy") == "Always"

    total += sum(1 for name in init_specs if restartable(name))

    def later(a: datetime | None, b: Any) -> datetime | None:
        t = parse_time(b)
        return t if t is not None and (a is None or t > a) else a

    initializing = False
    init_statuses = _list(status.get("initContainerStatuses"))
    n_init = len(_list(spec.get("initContainers")))
    for i, cs in enumerate(init_statuses):
        name = _str(_d(cs, "name"))
        restarts += _int(_d(cs, "restartCount"))
        last_term = _d(cs, "lastState", "terminated")
        if last_term:
            last_restart = later(last_restart, _d(last_term, "finishedAt"))
        if restartable(name):
            restartable_restarts += _int(_d(cs, "restartCount"))
            if last_term:
                last_restartable_restart = later(last_restartable_restart, _d(last_term, "finishedAt"))
        term = _d(cs, "state", "terminated")
        waiting = _d(cs, "state", "waiting")
        if term is not None and _int(_d(term, "exitCode")) == 0:
            continue
        if restartable(name) and _d(cs, "started") is True:
            if _d(cs, "ready") is True:
                ready += 1
            continue
        if term is not None:
            t_reason = _str(_d(term, "reason"))
            if t_reason:
                reason = "Init:" + t_reason
            elif _int(_d(term, "signal")):
                reason = f"Init:Signal:{_int(_d(term, 'signal'))}"
            else:
                reason = f"Init:ExitCode:{_int(_d(term, 'exitCode'))}"
        elif waiting is not None and _str(_d(waiting, "reason")) not in ("", "PodInitializing"):
            reason = "Init:" + _str(_d(waiting, "reason"))
        else:
            reason = f"Init:{i}/{n_init}"
        initializing = True
        break

    initialized = any(_d(c, "type") == "Initialized" and _d(c, "status") == "True" for c in conditions)
    if not initializing or initialized:
        restarts = restartable_restarts
        last_restart = last_restartable_restart
        has_running = False
        for cs in reversed(_list(status.get("containerStatuses"))):
            restarts += _int(_d(cs, "restartCount"))
            last_term = _d(cs, "lastState", "terminated")
            if last_term:
                last_restart = later(last_restart, _d(last_term, "finishedAt"))
            state = _dict(_d(cs, "state"))
            waiting, term = state.get("waiting"), state.get("terminated")
            if waiting is not None and _str(_d(waiting, "reason")):
                reason = _str(_d(waiting, "reason"))
            elif term is not None and _str(_d(term, "reason")):
                reason = _str(_d(term, "reason"))
            elif term is not None:
                sig = _int(_d(term, "signal"))
                reason = f"Signal:{sig}" if sig else f"ExitCode:{_int(_d(term, 'exitCode'))}"
            elif _d(cs, "ready") is True and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(_d(c, "type") == "Ready" and _d(c, "status") == "True" for c in conditions)
            reason = "Running" if pod_ready else "NotReady"

    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({duration_short((now - last_restart).total_seconds())} ago)"

    pod_ips = _list(status.get("podIPs"))
    ip = _str(_d(pod_ips[0], "ip")) if pod_ips else _str(status.get("podIP"))
    gates = _list(spec.get("readinessGates"))
    gates_text = NONE
    if gates:
        true_count = 0
        for gate in gates:
            for cond in conditions:
                if _d(cond, "type") == _d(gate, "conditionType"):
                    true_count += _d(cond, "status") == "True"
                    break
        gates_text = f"{true_count}/{len(gates)}"
    return [
        meta.get("name", ""), f"{ready}/{total}", reason, restarts_text, since(meta.get("creationTimestamp"), now),
        ip or NONE, _str(spec.get("nodeName")) or NONE, _str(status.get("nominatedNodeName")) or NONE, gates_text,
    ]


def _service_external_ip(obj: Obj) -> str:
    spec = _dict(obj.get("spec"))
    svc_type = _str(spec.get("type")) or "ClusterIP"
    external = [str(x) for x in _list(spec.get("externalIPs"))]
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else NONE
    if svc_type == "LoadBalancer":
        lb = [
            _str(_d(ing, "ip")) or _str(_d(ing, "hostname"))
            for ing in _list(_d(obj, "status", "loadBalancer", "ingress"))
        ]
        lb = [x for x in lb if x]
        if external:
            return ",".join(lb + external)
        return ",".join(lb) if lb else "<pending>"
    if svc_type == "ExternalName":
        return _str(spec.get("externalName"))
    return UNKNOWN


def port_string(ports: Any) -> str:
    """makePortString: ``80/TCP``, ``80:30080/TCP``, comma-joined."""
    pieces = []
    for p in _list(ports):
        proto = _str(_d(p, "protocol")) or "TCP"
        node_port = _int(_d(p, "nodePort"))
        port = _d(p, "port")
        pieces.append(f"{port}:{node_port}/{proto}" if node_port > 0 else f"{port}/{proto}")
    return ",".join(pieces)


def _service(obj: Obj, now: datetime) -> list[Any]:
    spec = _dict(obj.get("spec"))
    cluster_ips = _list(spec.get("clusterIPs"))
    cluster_ip = str(cluster_ips[0]) if cluster_ips else (_str(spec.get("clusterIP")) or NONE)
    return [
        _d(obj, "metadata", "name") or "", _str(spec.get("type")) or "ClusterIP", cluster_ip,
        _service_external_ip(obj), port_string(spec.get("ports")) or NONE,
        since(_d(obj, "metadata", "creationTimestamp"), now), format_labels(spec.get("selector")),
    ]


def _deployment(obj: Obj, now: datetime) -> list[Any]:
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    desired = spec.get("replicas")
    desired = 1 if desired is None else _int(desired)
    return [
        _d(obj, "metadata", "name") or "", f"{_int(status.get('readyReplicas'))}/{desired}",
        _int(status.get("updatedReplicas")), _int(status.get("availableReplicas")),
        since(_d(obj, "metadata", "creationTimestamp"), now),
        *_containers_cells(_d(spec, "template", "spec")), selector_string(spec.get("selector")),
    ]


def _replicaset(obj: Obj, now: datetime) -> list[Any]:
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    desired = spec.get("replicas")
    return [
        _d(obj, "metadata", "name") or "", 1 if desired is None else _int(desired), _int(status.get("replicas")),
        _int(status.get("readyReplicas")), since(_d(obj, "metadata", "creationTimestamp"), now),
        *_containers_cells(_d(spec, "template", "spec")), selector_string(spec.get("selector")),
    ]


def _daemonset(obj: Obj, now: datetime) -> list[Any]:
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    return [
        _d(obj, "metadata", "name") or "", _int(status.get("desiredNumberScheduled")),
        _int(status.get("currentNumberScheduled")), _int(status.get("numberReady")),
        _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable")),
        format_labels(_d(spec, "template", "spec", "nodeSelector")),
        since(_d(obj, "metadata", "creationTimestamp"), now),
        *_containers_cells(_d(spec, "template", "spec")), selector_string(spec.get("selector")),
    ]


def _job(obj: Obj, now: datetime) -> list[Any]:
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    succeeded = _int(status.get("succeeded"))
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{_int(spec.get('completions'))}"
    elif _int(spec.get("parallelism")) > 1:
        completions = f"{succeeded}/1 of {_int(spec.get('parallelism'))}"
    else:
        completions = f"{succeeded}/1"
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    duration = ""
    if start is not None:
        duration = duration_short(((end or now) - start).total_seconds())

    def has(cond_type: str) -> bool:
        return any(_d(c, "type") == cond_type and _d(c, "status") == "True"
                   for c in _list(status.get("conditions")))

    if has("Complete"):
        state = "Complete"
    elif has("Failed"):
        state = "Failed"
    elif _d(obj, "metadata", "deletionTimestamp"):
        state = "Terminating"
    elif has("Suspended"):
        state = "Suspended"
    elif has("FailureTarget"):
        state = "FailureTarget"
    else:
        state = "Running"
    return [
        _d(obj, "metadata", "name") or "", state, completions, duration,
        since(_d(obj, "metadata", "creationTimestamp"), now),
        *_containers_cells(_d(spec, "template", "spec")), selector_string(spec.get("selector")),
    ]


def node_roles(labels: Any) -> list[str]:
    """findNodeRoles: ``node-role.kubernetes.io/<role>`` keys and ``kubernetes.io/role`` values, sorted."""
    roles: set[str] = set()
    for k, v in _dict(labels).items():
        if k.startswith("node-role.kubernetes.io/"):
            role = k[len("node-role.kubernetes.io/"):]
            if role:
                roles.add(role)
        elif k == "kubernetes.io/role" and v:
            roles.add(str(v))
    return sorted(roles)


def _node(obj: Obj, now: datetime) -> list[Any]:
    status = _dict(obj.get("status"))
    states: list[str] = []
    for cond in _list(status.get("conditions")):
        if _d(cond, "type") == "Ready":
            states = ["Ready" if _d(cond, "status") == "True" else "NotReady"]
    if not states:
        states = ["Unknown"]
    if _d(obj, "spec", "unschedulable") is True:
        states.append("SchedulingDisabled")
    info = _dict(status.get("nodeInfo"))

    def address(kind: str) -> str:
        for a in _list(status.get("addresses")):
            if _d(a, "type") == kind:
                return _str(_d(a, "address")) or NONE
        return NONE

    return [
        _d(obj, "metadata", "name") or "", ",".join(states),
        ",".join(node_roles(_d(obj, "metadata", "labels"))) or NONE,
        since(_d(obj, "metadata", "creationTimestamp"), now), _str(info.get("kubeletVersion")),
        address("InternalIP"), address("ExternalIP"), _str(info.get("osImage")) or UNKNOWN,
        _str(info.get("kernelVersion")) or UNKNOWN, _str(info.get("containerRuntimeVersion")) or UNKNOWN,
    ]


def _namespace(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", _str(_d(obj, "status", "phase")),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def _configmap(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", len(_dict(obj.get("data"))) + len(_dict(obj.get("binaryData"))),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def _secret(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", _str(obj.get("type")), len(_dict(obj.get("data"))),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def format_endpoints(obj: Obj) -> str:
    """formatEndpoints: up to three ``ip:port`` then ``+ N more...``; ``<none>`` without subsets."""
    subsets = _list(obj.get("subsets"))
    if not subsets:
        return NONE
    items: list[str] = []
    limit, more, count = 3, False, 0
    for ss in subsets:
        addresses = _list(_d(ss, "addresses"))
        ports = _list(_d(ss, "ports"))
        if not ports:
            count += len(addresses)
            for a in addresses:
                if len(items) == limit:
                    more = True
                if not more:
                    items.append(_str(_d(a, "ip")))
            continue
        for p in ports:
            count += len(addresses)
            for a in addresses:
                if len(items) == limit:
                    more = True
                if not more:
                    items.append(_join_host_port(_str(_d(a, "ip")), _int(_d(p, "port"))))
    text = ",".join(items)
    return f"{text} + {count - limit} more..." if more else text


def _endpoints(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", format_endpoints(obj),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def _event(obj: Obj, now: datetime) -> list[Any]:
    first = since(obj.get("firstTimestamp"), now) if obj.get("firstTimestamp") else since(obj.get("eventTime"), now)
    last = since(obj.get("lastTimestamp"), now) if obj.get("lastTimestamp") else first
    count = _int(obj.get("count"))
    series = obj.get("series")
    if isinstance(series, dict):
        last = since(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1
    involved = _dict(obj.get("involvedObject"))
    kind = _str(involved.get("kind")).lower()
    target = f"{kind}/{involved['name']}" if _str(involved.get("name")) else kind
    component = _str(_d(obj, "source", "component")) or _str(obj.get("reportingComponent"))
    instance = _str(_d(obj, "source", "host")) or _str(obj.get("reportingInstance"))
    source = "" if not component else (component if not instance else f"{component}, {instance}")
    return [
        last, _str(obj.get("type")), _str(obj.get("reason")), target, _str(involved.get("fieldPath")), source,
        _str(obj.get("message")).strip(), first, count, _d(obj, "metadata", "name") or "",
    ]


def _serviceaccount(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", len(_list(obj.get("secrets"))),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def _lease(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", _str(_d(obj, "spec", "holderIdentity")),
            since(_d(obj, "metadata", "creationTimestamp"), now)]


def _endpointslice(obj: Obj, now: datetime) -> list[Any]:
    limit = 3
    ports: list[str] = []
    more, count = False, 0
    for p in _list(obj.get("ports")):
        if len(ports) < limit:
            if _d(p, "port") is not None:
                ports.append(str(_d(p, "port")))
            elif _d(p, "name") is not None:
                ports.append(_str(_d(p, "name")))
            else:
                ports.append("*")
        else:
            more = True
        count += 1
    ports_text = _more(ports, more, count, limit, "<unset>")
    addrs: list[str] = []
    more, count = False, 0
    for ep in _list(obj.get("endpoints")):
        for a in _list(_d(ep, "addresses")):
            if len(addrs) < limit:
                addrs.append(str(a))
            else:
                more = True
            count += 1
    return [_d(obj, "metadata", "name") or "", _str(obj.get("addressType")), ports_text,
            _more(addrs, more, count, limit, "<unset>"), since(_d(obj, "metadata", "creationTimestamp"), now)]


def _created_at(obj: Obj, _now: datetime) -> list[Any]:
    """The default table convertor's cells (roles, clusterroles): name and the RFC 3339 creation time."""
    created = parse_time(_d(obj, "metadata", "creationTimestamp"))
    when = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else UNKNOWN
    return [_d(obj, "metadata", "name") or "", when]


def subjects_strings(subjects: Any) -> tuple[list[str], list[str], list[str]]:
    """rbac.SubjectsStrings: users, groups and "namespace:name" service accounts of a binding."""
    users: list[str] = []
    groups: list[str] = []
    sas: list[str] = []
    for s in _list(subjects):
        kind, name = _str(_d(s, "kind")), _str(_d(s, "name"))
        if kind == "User":
            users.append(name)
        elif kind == "Group":
            groups.append(name)
        elif kind == "ServiceAccount":
            sas.append(f"{_str(_d(s, 'namespace'))}:{name}")
    return users, groups, sas


def _binding(obj: Obj, now: datetime) -> list[Any]:
    ref = _dict(obj.get("roleRef"))
    users, groups, sas = subjects_strings(obj.get("subjects"))
    return [_d(obj, "metadata", "name") or "", f"{_str(ref.get('kind'))}/{_str(ref.get('name'))}",
            since(_d(obj, "metadata", "creationTimestamp"), now), ", ".join(users), ", ".join(groups),
            ", ".join(sas)]


def _default(obj: Obj, now: datetime) -> list[Any]:
    return [_d(obj, "metadata", "name") or "", since(_d(obj, "metadata", "creationTimestamp"), now)]


_CONTAINERS: list[Column] = [
    ("Containers", "string", "Names of each container in the template.", 1),
    ("Images", "string", "Images referenced by each container in the template.", 1),
    ("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will "
                           "be the ones affected by this deployment.", 1),
]

PRINTERS: dict[str, tuple[list[Column], Printer]] = {
    "pods": ([
        NAME,
        ("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", 0),
        ("Status", "string", "The aggregate status of the containers in this pod.", 0),
        ("Restarts", "string", "The number of times the containers in this pod have been restarted and when "
                               "the last container in this pod has restarted.", 0),
        AGE,
        ("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if "
                         "not yet allocated.", 1),
        ("Node", "string", "NodeName is a request to schedule this pod onto a specific node.", 1),
        ("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on "
                                     "the node.", 1),
        ("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod "
                                      "readiness.", 1),
    ], _pod),
    "services": ([
        NAME,
        ("Type", "string", "type determines how the Service is exposed.", 0),
        ("Cluster-IP", "string", "clusterIP is the IP address of the service.", 0),
        ("External-IP", "string", "List of IP addresses for which nodes in the cluster will also accept "
                                  "traffic for this service.", 0),
        ("Port(s)", "string", "The list of ports that are exposed by this service.", 0),
        AGE,
        ("Selector", "string", "Route service traffic to pods with label keys and values matching this "
                               "selector.", 1),
    ], _service),
    "deployments": ([
        NAME,
        ("Ready", "string", "Number of the pod with ready state", 0),
        ("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have "
                                  "the desired template spec.", 0),
        ("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) "
                                 "targeted by this deployment.", 0),
        AGE, *_CONTAINERS,
    ], _deployment),
    "replicasets": ([
        NAME,
        ("Desired", "integer", "Replicas is the number of desired replicas.", 0),
        ("Current", "integer", "Replicas is the most recently observed number of replicas.", 0),
        ("Ready", "integer", "The number of ready replicas for this replica set.", 0),
        AGE, *_CONTAINERS,
    ], _replicaset),
    "daemonsets": ([
        NAME,
        ("Desired", "integer", "The total number of nodes that should be running the daemon pod.", 0),
        ("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed "
                               "to run the daemon pod.", 0),
        ("Ready", "integer", "numberReady is the number of nodes that should be running the daemon pod and "
                             "have one or more of the daemon pod running with a Ready Condition.", 0),
        ("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod", 0),
        ("Available", "integer", "The number of nodes that should be running the daemon pod and have one or "
                                 "more of the daemon pod running and available.", 0),
        ("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a "
                                    "node.", 0),
        AGE, *_CONTAINERS,
    ], _daemonset),
    "jobs": ([
        NAME,
        ("Status", "string", "Status of the job.", 0),
        ("Completions", "string", "The completion status of the job.", 0),
        ("Duration", "string", "Time required to complete the job.", 0),
        AGE, *_CONTAINERS,
    ], _job),
    "nodes": ([
        NAME,
        ("Status", "string", "The status of the node", 0),
        ("Roles", "string", "The roles of the node", 0),
        AGE,
        ("Version", "string", "Kubelet Version reported by the node.", 0),
        ("Internal-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, "
                                  "if available.", 1),
        ("External-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, "
                                  "if available.", 1),
        ("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 "
                               "(wheezy)).", 1),
        ("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. "
                                     "3.16.0-0.bpo.4-amd64).", 1),
        ("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime "
                                        "remote API (e.g. containerd://1.4.2).", 1),
    ], _node),
    "namespaces": ([
        NAME,
        ("Status", "string", "The status of the namespace", 0),
        AGE,
    ], _namespace),
    "configmaps": ([NAME, ("Data", "integer", "Data contains the configuration data.", 0), AGE], _configmap),
    "secrets": ([
        NAME,
        ("Type", "string", "The type of the secret", 0),
        ("Data", "integer", "The number of entries in the secret", 0),
        AGE,
    ], _secret),
    "endpoints": ([NAME, ("Endpoints", "string", "Endpoints of the service", 0), AGE], _endpoints),
    "events": ([
        ("Last Seen", "string", "Time when last event occurred", 0),
        ("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future.", 0),
        ("Reason", "string", "This should be a short, machine understandable string that gives the reason "
                             "for the transition into the object's current status.", 0),
        ("Object", "string", "The object that this event is about.", 0),
        ("Subobject", "string", "The subobject that this event is about.", 1),
        ("Source", "string", "The component reporting this event. Should be a short machine understandable "
                             "string.", 1),
        ("Message", "string", "A human-readable description of the status of this operation.", 0),
        ("First Seen", "string", "The time at which the event was first recorded.", 1),
        ("Count", "integer", "The number of times this event has occurred.", 1),
        ("Name", "string", _NAME_DESC, 1),
    ], _event),
    "serviceaccounts": ([
        NAME,
        ("Secrets", "integer", "Secrets is the list of secrets allowed to be used by pods running using this "
                               "ServiceAccount.", 0),
        AGE,
    ], _serviceaccount),
    "leases": ([NAME, ("Holder", "string", "The holder of the lease.", 0), AGE], _lease),
    "endpointslices": ([
        NAME,
        ("AddressType", "string", "The IP protocol for this slice", 0),
        ("Ports", "string", "The ports for this slice", 0),
        ("Endpoints", "string", "The endpoints for this slice", 0),
        AGE,
    ], _endpointslice),
}

_CREATED_AT: Column = ("Created At", "date", _AGE_DESC, 0)
_ROLE_REF_DESC = ("RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. "
                  "If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.")
_CLUSTER_ROLE_REF_DESC = ("RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot "
                          "be resolved, the Authorizer must return an error. This field is immutable.")


def _binding_columns(ref_desc: str, what: str) -> list[Column]:
    return [NAME, ("Role", "string", ref_desc, 0), AGE, ("Users", "string", f"Users in the {what}", 1),
            ("Groups", "string", f"Groups in the {what}", 1),
            ("ServiceAccounts", "string", f"ServiceAccounts in the {what}", 1)]


PRINTERS.update({
    "roles": ([NAME, _CREATED_AT], _created_at),
    "clusterroles": ([NAME, _CREATED_AT], _created_at),
    "rolebindings": (_binding_columns(_ROLE_REF_DESC, "roleBinding"), _binding),
    "clusterrolebindings": (_binding_columns(_CLUSTER_ROLE_REF_DESC, "clusterRoleBinding"), _binding),
})

DEFAULT: tuple[list[Column], Printer] = ([NAME, AGE], _default)


def columns(resource: str) -> list[dict[str, Any]]:
    """The columnDefinitions for a resource (plural name, optionally ``plural.group``)."""
    cols, _ = PRINTERS.get(resource.split(".", 1)[0], DEFAULT)
    return [
        {"name": name, "type": typ, "format": "name" if name == "Name" and prio == 0 else "", "description": desc,
         "priority": prio}
        for name, typ, desc, prio in cols
    ]


def partial_object_metadata(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": _dict(obj.get("metadata"))}


def to_table(
    resource: str,
    objs: list[Obj],
    *,
    include_object: str = "Metadata",
    list_metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of ``objs`` for ``resource`` (plural, e.g. "pods").

    include_object is the ``includeObject`` query parameter: "Metadata" (the
    default) puts PartialObjectMetadata in each row, "Object" the full object,
    "None" nothing. list_metadata is the list's metadata (resourceVersion,
    continue, remainingItemCount), copied as the Table's."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    _, printer = PRINTERS.get(resource.split(".", 1)[0], DEFAULT)
    rows: list[dict[str, Any]] = []
    for obj in objs:
        row: dict[str, Any] = {"cells": printer(obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_object_metadata(obj)
        rows.append(row)
    meta = {k: v for k, v in (list_metadata or {}).items()
            if k in ("resourceVersion", "continue", "remainingItemCount", "selfLink") and v not in (None, "")}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(resource),
        "rows": rows,
    }
