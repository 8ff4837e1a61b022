"""The shape of the Kubernetes types we serve: field names and JSON types.

The data (kube/api/schema_data.json) is generated at dev time by
scripts/gen-schema from the official client's models and loaded lazily here;
the runtime never imports the `kubernetes` package.

Each type maps JSON field names to a *descriptor*:

    string | int32 | int64 | double | boolean | date-time | byte
    int-or-string | quantity | any          (any = free-form JSON)
    []D      a list of D
    {}D      a map from string to D
    io.k8s.api.core.v1.PodSpec ...          another type

Two checks mirror what the upstream apiserver's JSON decoder reports:

- ``unknown_fields`` — the paths strict decoding names, e.g.
  ``spec.template.spec.containers[0].imagee``; upstream's message is
  ``strict decoding error: unknown field "spec.replicass", unknown field "..."``
  (see ``strict_decoding_error``). Paths have no leading dot, like upstream.
- ``type_errors`` — Go ``encoding/json`` type mismatches, e.g.
  ``json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas
  of type int32``. Go names the struct holding the field and the dotted path of
  field names without list indices or map keys. Upstream reports the first one;
  we return all in document order. Go's named string types (``v1.Protocol``) are
  reported as ``string`` here.

Upstream wraps either in ``<Kind> in version "<v>" cannot be handled as a
<Kind>: <detail>`` (see ``decode_error``), answered as 400 BadRequest.

The client models may know fields newer than the API version we mimic
(1.32); those are accepted, never flagged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).with_name("schema_data.json")

PRIMITIVES = frozenset(
    {"string", "int32", "int64", "double", "boolean", "date-time", "byte", "int-or-string", "quantity", "any"}
)

_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class SchemaData:
    kinds: dict[str, str]  # "apps/v1/Deployment" -> "io.k8s.api.apps.v1.Deployment"
    types: dict[str, dict[str, str]]  # type name -> {json field -> descriptor}
    required: dict[str, list[str]]  # type name -> required json fields


@functools.cache
def data() -> SchemaData:
    raw = json.loads(DATA_FILE.read_text())
    return SchemaData(kinds=raw["kinds"], types=raw["types"], required=raw.get("required", {}))


def type_name(api_version: str, kind: str) -> str | None:
    """The schema type for a kind, e.g. ("apps/v1", "Deployment") -> "io.k8s.api.apps.v1.Deployment"."""
    return data().kinds.get(f"{api_version}/{kind}")


def known_kind(api_version: str, kind: str) -> bool:
    return type_name(api_version, kind) is not None


def fields_of(type_name_: str) -> dict[str, str]:
    return data().types.get(type_name_, {})


def short(type_name_: str) -> str:
    """"io.k8s.api.core.v1.PodSpec" -> "PodSpec"."""
    return type_name_.rsplit(".", 1)[-1]


def go_type(desc: str) -> str:
    """The Go type string encoding/json would print for a descriptor."""
    if desc.startswith("[]"):
        return "[]" + go_type(desc[2:])
    if desc.startswith("{}"):
        inner = desc[2:]
        return "v1.ResourceList" if inner == "quantity" else "map[string]" + go_type(inner)
    return {
        "string": "string",
        "int32": "int32",
        "int64": "int64",
        "double": "float64",
        "boolean": "bool",
        "date-time": "v1.Time",
        "byte": "[]uint8",
        "int-or-string": "intstr.IntOrString",
        "quantity": "resource.Quantity",
        "any": "interface {}",
    }.get(desc) or "v1." + short(desc)


# ---------------------------------------------------------------- unknown fields


def unknown_fields(api_version: str, kind: str, obj: Any) -> list[str]:
    """Paths of fields ``obj`` has that its type does not, in document order.

    Paths look like upstream's: ``spec.replicass``,
    ``spec.template.spec.containers[0].imagee``, ``metadata.labels`` never
    (maps take any key). An unknown kind yields no paths."""
    tn = type_name(api_version, kind)
    if tn is None:
        return []
    out: list[str] = []
    _unknown(tn, obj, "", out)
    return out


def prune_unknown_fields(api_version: str, kind: str, obj: Any) -> list[str]:
    """Like unknown_fields, and removes those fields from ``obj`` where they were found (a path
    string cannot name keys like "" or "a.b" safely, so pruning never goes through one)."""
    tn = type_name(api_version, kind)
    if tn is None:
        return []
    out: list[str] = []
    _unknown(tn, obj, "", out, prune=True)
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unknown(desc: str, value: Any, path: str, out: list[str], prune: bool = False) -> None:
    if value is None:
        return
    if desc.startswith("[]"):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _unknown(desc[2:], item, f"{path}[{i}]", out, prune)
        return
    if desc.startswith("{}"):
        if isinstance(value, dict):
            for k, item in value.items():
                _unknown(desc[2:], item, _join(path, str(k)), out, prune)
        return
    if desc in PRIMITIVES or not isinstance(value, dict):
        return
    fields = fields_of(desc)
    doomed = []
    for name, item in value.items():
        sub = fields.get(name)
        if sub is None:
            out.append(_join(path, name))
            doomed.append(name)
        else:
            _unknown(sub, item, _join(path, name), out, prune)
    if prune:
        for name in doomed:
            del value[name]


def strict_decoding_error(paths: list[str]) -> str:
    """Upstream's text for unknown fields under fieldValidation=Strict."""
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in paths)


def unknown_field_warnings(paths: list[str]) -> list[str]:
    """Upstream's Warning header texts under fieldValidation=Warn (one per field)."""
    return [f'unknown field "{p}"' for p in paths]


def decode_error(api_version: str, kind: str, detail: str) -> str:
    """Upstream's 400 message wrapping a decoding failure."""
    version = api_version.rsplit("/", 1)[-1]
    return f'{kind} in version "{version}" cannot be handled as a {kind}: {detail}'


# ---------------------------------------------------------------- type errors


def _is_quantity(text: str) -> bool:
    from .quantity import QuantityError, parse_quantity

    try:
        parse_quantity(text)
    except QuantityError:
        return False
    return True


def type_errors(api_version: str, kind: str, obj: Any) -> list[str]:
    """Messages for values whose JSON type does not fit the field, in document order.

    Null is fine anywhere. An unknown kind yields no messages; unknown fields
    are not type errors (see ``unknown_fields``)."""
    tn = type_name(api_version, kind)
    if tn is None:
        return []
    out: list[str] = []
    if obj is not None and not isinstance(obj, dict):
        out.append(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type v1.{short(tn)}")
        return out
    _types(tn, obj, struct=short(tn), path="", out=out)
    return out


def _json_kind(value: Any) -> str:
    """How Go's decoder names the JSON value it could not store."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _go_number(value: int | float) -> str:
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    return str(value)


_B64 = re.compile(r"[A-Za-z0-9+/=\r\n]*")


def _base64_error(value: str) -> str | None:
    if not _B64.fullmatch(value):
        bad = next(i for i, c in enumerate(value) if not _B64.fullmatch(c))
        return f"illegal base64 data at input byte {bad}"
    try:
        base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {max(len(value) - 1, 0)}"
    return None


def _types(desc: str, value: Any, struct: str, path: str, out: list[str]) -> None:
    """Check ``value`` against ``desc``; ``struct``/``path`` name the Go field holding it."""
    if value is None:
        return

    def bad(what: str) -> None:
        out.append(f"json: cannot unmarshal {what} into Go struct field {struct}.{path} of type {go_type(desc)}")

    if desc.startswith("[]"):
        if not isinstance(value, list):
            bad(_json_kind(value))
            return
        for item in value:
            _types(desc[2:], item, struct, path, out)
        return
    if desc.startswith("{}"):
        if not isinstance(value, dict):
            bad(_json_kind(value))
            return
        for item in value.values():
            _types(desc[2:], item, struct, path, out)
        return
    if desc == "any":
        return
    if desc in ("string", "date-time"):
        if not isinstance(value, str):
            bad(_json_kind(value))
        return
    if desc == "byte":
        if not isinstance(value, str):
            bad(_json_kind(value))
        else:
            err = _base64_error(value)
            if err:
                out.append(err)
        return
    if desc in ("int32", "int64"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad(_json_kind(value))
            return
        lo, hi = _INT_RANGE[desc]
        if isinstance(value, float) or not lo <= value <= hi:
            bad("number " + _go_number(value))
        return
    if desc == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad(_json_kind(value))
        return
    if desc == "boolean":
        if not isinstance(value, bool):
            bad(_json_kind(value))
        return
    if desc == "int-or-string":
        if isinstance(value, bool) or not isinstance(value, int | str):
            # IntOrString decodes non-strings as int32
            out.append(f"json: cannot unmarshal {_json_kind(value)} into Go value of type int32")
        return
    if desc == "quantity":
        if isinstance(value, bool) or not isinstance(value, int | float | str) or (
                isinstance(value, str) and not _is_quantity(value)):
            out.append("quantities must match the regular expression "
                       "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
        return
    # a struct
    if not isinstance(value, dict):
        bad(_json_kind(value))
        return
    fields = fields_of(desc)
    inner = short(desc)
    for name, item in value.items():
        sub = fields.get(name)
        if sub is not None:
            _types(sub, item, inner, _join(path, name), out)
