"""The three PATCH formats the apiserver accepts, on plain JSON values.

* ``application/merge-patch+json``: RFC 7386 JSON merge patch.
* ``application/json-patch+json``: RFC 6902 JSON patch (with RFC 6901 pointers).
* ``application/strategic-merge-patch+json``: Kubernetes strategic merge patch,
  the format kubectl apply/edit/patch send. Lists are merged by a key or as a
  set when the API type says so (``patchStrategy``/``patchMergeKey`` tags),
  and ``$``-directives steer the merge. The type facts live in ``SMP_TYPES``.

None of these functions mutates its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PatchError",
    "json_merge_patch",
    "json_patch",
    "strategic_merge_patch",
    "parse_pointer",
    "ListStrategy",
    "SMP_TYPES",
    "SMP_ROOTS",
]


class PatchError(ValueError):
    """A patch that is malformed or cannot be applied to the object."""


# ==========================================================================
# RFC 7386 JSON merge patch


def json_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# ==========================================================================
# RFC 6902 JSON patch


def parse_pointer(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer into unescaped reference tokens ("" is the whole document)."""
    if not isinstance(pointer, str):
        raise PatchError(f"a JSON pointer must be a string, got {type(pointer).__name__}")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f'JSON pointer "{pointer}" must be empty or start with "/"')
    tokens = pointer[1:].split("/")
    for t in tokens:
        rest = t.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise PatchError(
                f'JSON pointer "{pointer}" has an invalid escape: "~" must be followed by 0 or 1'
            )
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _list_index(token: str, length: int, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f'invalid array index "{token}" in path "{pointer}"')
    idx = int(token)
    limit = length if allow_end else length - 1
    if idx > limit:
        raise PatchError(f'array index {idx} out of range (length {length}) in path "{pointer}"')
    return idx


def _resolve(doc: Any, tokens: list[str], pointer: str) -> Any:
    cur = doc
    for t in tokens:
        if isinstance(cur, dict):
            if t not in cur:
                raise PatchError(f'doc is missing path: "{pointer}"')
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_list_index(t, len(cur), pointer, allow_end=False)]
        else:
            raise PatchError(f'doc is missing path: "{pointer}": cannot descend into a scalar')
    return cur


def _json_equal(a: Any, b: Any) -> bool:
    """JSON value equality: numbers compare numerically but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _op_add(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(last, len(parent), pointer, allow_end=True), value)
    else:
        raise PatchError(f'cannot add at "{pointer}": the parent is not an object or array')
    return doc


def _op_remove(doc: Any, tokens: list[str], pointer: str) -> tuple[Any, Any]:
    """Returns (new doc, removed value)."""
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f'unable to remove nonexistent key: "{last}" (path "{pointer}")')
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_list_index(last, len(parent), pointer, allow_end=False))
    raise PatchError(f'cannot remove "{pointer}": the parent is not an object or array')


def json_patch(target: Any, ops: list[Any]) -> Any:
    """Apply an RFC 6902 JSON patch (a list of operations) to a copy of ``target``."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for n, op in enumerate(ops):
        if not isinstance(op, Mapping):
            raise PatchError(f"operation {n} is not an object")
        kind = op.get("op")
        if "path" not in op:
            raise PatchError(f'operation {n} ("{kind}") is missing "path"')
        pointer = op["path"]
        tokens = parse_pointer(pointer)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f'operation {n} ("{kind}") is missing "value"')
        if kind == "add":
            doc = _op_add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind == "remove":
            doc, _ = _op_remove(doc, tokens, pointer)
        elif kind == "replace":
            _resolve(doc, tokens, pointer)  # must exist
            if tokens:
                doc, _ = _op_remove(doc, tokens, pointer)
            doc = _op_add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f'operation {n} ("{kind}") is missing "from"')
            src = op["from"]
            src_tokens = parse_pointer(src)
            if kind == "move":
                if tokens[: len(src_tokens)] == src_tokens and len(tokens) > len(src_tokens):
                    raise PatchError(f'cannot move "{src}" into its own child "{pointer}"')
                if tokens == src_tokens:
                    _resolve(doc, tokens, pointer)
                    continue
                doc, value = _op_remove(doc, src_tokens, src)
            else:
                value = copy.deepcopy(_resolve(doc, src_tokens, src))
            doc = _op_add(doc, tokens, value, pointer)
        elif kind == "test":
            actual = _resolve(doc, tokens, pointer)
            if not _json_equal(actual, op["value"]):
                raise PatchError(f'testing value "{pointer}" failed: test failed')
        else:
            raise PatchError(
                f'operation {n}: unsupported op "{kind}" (want add, remove, replace, move, copy or test)'
            )
    return doc


# ==========================================================================
# strategic merge patch


@dataclass(frozen=True)
class ListStrategy:
    """How SMP treats one field: ``child`` is the type of the value (of the
    list elements, for lists); ``merge`` says a list merges instead of being
    replaced; ``key`` is the merge key ("" for a set of primitives)."""

    child: str = ""
    merge: bool = False
    key: str = ""


def _t(child: str) -> ListStrategy:
    return ListStrategy(child=child)


def _keyed(key: str, child: str = "") -> ListStrategy:
    return ListStrategy(child=child, merge=True, key=key)


_PRIMITIVE_SET = ListStrategy(merge=True)
_CONDITIONS = _keyed("type")

# Facts from the k8s.io/api struct tags (patchStrategy:"merge" patchMergeKey:"...").
# Lists that are not listed here replace (e.g. PodSpec.tolerations,
# NodeSpec.taints, EndpointSlice endpoints, Endpoints subsets).
SMP_TYPES: dict[str, dict[str, ListStrategy]] = {
    "ObjectMeta": {
        "finalizers": _PRIMITIVE_SET,
        "ownerReferences": _keyed("uid"),
    },
    "PodTemplateSpec": {"metadata": _t("ObjectMeta"), "spec": _t("PodSpec")},
    "PodSpec": {
        "containers": _keyed("name", "Container"),
        "initContainers": _keyed("name", "Container"),
        "ephemeralContainers": _keyed("name", "Container"),
        "volumes": _keyed("name"),  # merge,retainKeys
        "imagePullSecrets": _keyed("name"),
        "hostAliases": _keyed("ip"),
        "topologySpreadConstraints": _keyed("topologyKey"),
        "schedulingGates": _keyed("name"),
        "resourceClaims": _keyed("name"),  # merge,retainKeys
    },
    "Container": {
        "ports": _keyed("containerPort"),
        "env": _keyed("name"),
        "volumeMounts": _keyed("mountPath"),
        "volumeDevices": _keyed("devicePath"),
    },
    "PodStatus": {
        "conditions": _CONDITIONS,
        "podIPs": _keyed("ip"),
        "hostIPs": _keyed("ip"),
        "resourceClaimStatuses": _keyed("name"),
    },
    "WithConditions": {"conditions": _CONDITIONS},
    "WorkloadSpec": {"template": _t("PodTemplateSpec")},  # Deployment/ReplicaSet/DaemonSet/Job spec
    "ServiceSpec": {"ports": _keyed("port")},  # listMapKeys port+protocol; SMP key is "port"
    "NodeSpec": {"podCIDRs": _PRIMITIVE_SET},
    "NodeStatus": {"conditions": _CONDITIONS, "addresses": _keyed("type")},
    "ServiceAccount": {"metadata": _t("ObjectMeta"), "secrets": _keyed("name")},
}


def _root(spec: str = "", status: str = "") -> dict[str, ListStrategy]:
    fields = {"metadata": _t("ObjectMeta")}
    if spec:
        fields["spec"] = _t(spec)
    if status:
        fields["status"] = _t(status)
    return fields


SMP_ROOTS: dict[str, dict[str, ListStrategy]] = {
    "Pod": _root("PodSpec", "PodStatus"),
    "PodTemplate": {"metadata": _t("ObjectMeta"), "template": _t("PodTemplateSpec")},
    "Deployment": _root("WorkloadSpec", "WithConditions"),
    "ReplicaSet": _root("WorkloadSpec", "WithConditions"),
    "DaemonSet": _root("WorkloadSpec", "WithConditions"),
    "StatefulSet": _root("WorkloadSpec", "WithConditions"),
    "Job": _root("WorkloadSpec", "WithConditions"),
    "Service": _root("ServiceSpec", "WithConditions"),
    "Node": _root("NodeSpec", "NodeStatus"),
    "Namespace": _root("", "WithConditions"),
    "ServiceAccount": SMP_TYPES["ServiceAccount"],
}

_DELETE = object()  # merge result meaning "remove this value"
_SET_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"


def _is_directive_key(k: str) -> bool:
    return k in ("$patch", "$retainKeys") or k.startswith(_SET_ORDER) or k.startswith(_DELETE_FROM)


def _strip(value: Any) -> Any:
    """A copy of a patch value with every directive removed (for values that replace)."""
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not _is_directive_key(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, Mapping) and set(v) == {"$patch"})]
    return copy.deepcopy(value)


def _fields(type_name: str) -> dict[str, ListStrategy]:
    return SMP_TYPES.get(type_name, {})


def _merge_map(
    original: Mapping[str, Any], patch: Mapping[str, Any], fields: Mapping[str, ListStrategy]
) -> Any:
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise PatchError(f'unknown patch directive "$patch: {directive}" (want replace, merge or delete)')

    result: dict[str, Any] = copy.deepcopy(dict(original))

    retain = patch.pop("$retainKeys", None)
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise PatchError("$retainKeys must be a list of field names")
        for k in patch:
            if not _is_directive_key(k) and patch[k] is not None and k not in retain:
                raise PatchError(f'field "{k}" is in the patch but not in its $retainKeys list {retain}')
        result = {k: v for k, v in result.items() if k in retain}

    orders: dict[str, Any] = {}
    for k in [k for k in patch if k.startswith(_SET_ORDER)]:
        orders[k[len(_SET_ORDER) :]] = patch.pop(k)
    for k in [k for k in patch if k.startswith(_DELETE_FROM)]:
        name, remove = k[len(_DELETE_FROM) :], patch.pop(k)
        if not isinstance(remove, list):
            raise PatchError(f"{k} must be a list of values to delete")
        if isinstance(result.get(name), list):
            result[name] = [v for v in result[name] if not any(_json_equal(v, r) for r in remove)]

    for key, pv in patch.items():
        if pv is None:
            result.pop(key, None)
            continue
        strat = fields.get(key, ListStrategy())
        ov = result.get(key)
        if isinstance(pv, Mapping):
            if ov is None or isinstance(ov, Mapping):
                merged = _merge_map(ov or {}, pv, _fields(strat.child))
            else:  # the type changed: take the patch (a delete still deletes)
                merged = _DELETE if pv.get("$patch") == "delete" else _strip(pv)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(pv, list):
            result[key] = _merge_list(ov if isinstance(ov, list) else [], pv, strat, key)
        else:
            result[key] = copy.deepcopy(pv)

    for name, order in orders.items():
        strat = fields.get(name, ListStrategy())
        if not isinstance(order, list):
            raise PatchError(f"{_SET_ORDER}{name} must be a list")
        if strat.merge and isinstance(result.get(name), list):
            original_list = original.get(name)
            result[name] = _apply_order(
                result[name], order, original_list if isinstance(original_list, list) else [], strat.key
            )
    return result


def _is_replace_marker(v: Any) -> bool:
    return isinstance(v, Mapping) and v.get("$patch") == "replace"


def _merge_list(original: list[Any], patch: list[Any], strat: ListStrategy, name: str) -> list[Any]:
    if not strat.merge:
        return _strip(patch)  # type: ignore[no-any-return]
    if any(_is_replace_marker(v) for v in patch):
        return [_strip(v) for v in patch if not _is_replace_marker(v)]
    if not strat.key:  # a set of primitives: union, first occurrence wins
        out: list[Any] = []
        for v in copy.deepcopy(original) + [_strip(v) for v in patch]:
            if not any(_json_equal(v, seen) for seen in out):
                out.append(v)
        return out
    key = strat.key
    item_fields = _fields(strat.child)
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, Mapping):
            raise PatchError(f"{name}: list items must be objects with merge key {key!r}, got {item!r}")
        if key not in item:
            raise PatchError(f"map: {dict(item)} does not contain declared merge key: {key}")
        kv = item[key]
        idx = next(
            (i for i, o in enumerate(result) if isinstance(o, Mapping) and _json_equal(o.get(key), kv)), None
        )
        if idx is None:
            merged = _merge_map({}, item, item_fields)
            if merged is not _DELETE:
                result.append(merged)
            continue
        merged = _merge_map(result[idx], item, item_fields)
        if merged is _DELETE:  # delete every entry with this key
            result = [o for o in result if not (isinstance(o, Mapping) and _json_equal(o.get(key), kv))]
        else:
            result[idx] = merged
    return result


def _index_of(keys: list[Any], k: Any) -> int:
    for i, x in enumerate(keys):
        if _json_equal(x, k):
            return i
    return -1


def _apply_order(merged: list[Any], order: list[Any], original: list[Any], key: str) -> list[Any]:
    """Put the items named in $setElementOrder in that order and interleave
    the others (server-only items) where they sat in the original list."""

    def key_of(v: Any) -> Any:
        if key:
            return v.get(key) if isinstance(v, Mapping) else None
        return v

    order_keys = [key_of(o) for o in order]
    server_keys = [key_of(o) for o in original]
    listed = [v for v in merged if _index_of(order_keys, key_of(v)) >= 0]
    listed.sort(key=lambda v: _index_of(order_keys, key_of(v)))
    others = [v for v in merged if _index_of(order_keys, key_of(v)) < 0]
    out: list[Any] = []
    i = j = 0
    while i < len(others) or j < len(listed):
        if j >= len(listed):
            out.append(others[i])
            i += 1
        elif i >= len(others):
            out.append(listed[j])
            j += 1
        else:
            li, ri = _index_of(server_keys, key_of(others[i])), _index_of(server_keys, key_of(listed[j]))
            if li >= 0 and ri >= 0 and li < ri:
                out.append(others[i])
                i += 1
            else:
                out.append(listed[j])
                j += 1
    return out


def strategic_merge_patch(original: dict[str, Any], patch: dict[str, Any], kind: str) -> dict[str, Any]:
    """Apply a strategic merge patch to an object of the given Kind.

    Kinds without known list strategies (ConfigMap, Secret, Event, ...) still
    get map merging and the directives; all their lists replace.
    """
    if not isinstance(patch, Mapping):
        raise PatchError("a strategic merge patch must be a JSON object")
    if not isinstance(original, Mapping):
        raise PatchError("the object to patch must be a JSON object")
    fields = SMP_ROOTS.get(kind, {"metadata": _t("ObjectMeta")})
    merged = _merge_map(original, patch, fields)
    if merged is _DELETE:
        return {}
    return merged  # type: ignore[no-any-return]
