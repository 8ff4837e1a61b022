"""Decode Kubernetes protobuf request bodies (application/vnd.kubernetes.protobuf) into JSON dicts.

kubectl's typed-client commands (`kubectl create namespace|configmap|secret|deployment|
service|serviceaccount|job ...`) send their object as protobuf, not JSON. The body is

    "k8s\\x00" + runtime.Unknown{1: typeMeta{1: apiVersion, 2: kind}, 2: raw,
                                 3: contentEncoding, 4: contentType}

where `raw` is the protobuf encoding of the Go type (k8s.io.api.core.v1.Namespace, ...).
This module reads the wire format with a small generic reader driven by the field table
in protobuf_fields.json (generated from upstream generated.proto by
scripts/gen-protobuf-fields) and returns the same dict a JSON client would have sent.

Go/gogo-protobuf facts the decoder restores:
- every non-pointer field is written even when zero; JSON's omitempty drops those, so a
  zero scalar is dropped unless the table marks the field "ptr" (replicas: 0 stays);
- messages are kept even when empty (`emptyDir: {}`, `resources: {}`, as Go's JSON does),
  except zero Time / IntOrString / RawExtension, which JSON writes as null or 0 and which
  mean "unset";
- "inline" fields are Go embedded structs whose fields JSON puts in the parent object;
- special messages: Time/MicroTime -> RFC 3339 string, Duration -> Go duration string,
  IntOrString -> int or string, Quantity -> string, RawExtension/FieldsV1 -> parsed JSON.
Unknown field numbers are skipped, as protobuf readers do.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"

META = "k8s.io.apimachinery.pkg.apis.meta.v1"
TIME = f"{META}.Time"
MICRO_TIME = f"{META}.MicroTime"
DURATION = f"{META}.Duration"
FIELDS_V1 = f"{META}.FieldsV1"
INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"
RAW_EXTENSION = "k8s.io.apimachinery.pkg.runtime.RawExtension"

MAX_DEPTH = 64  # nesting limit: real objects stay far below; hostile input cannot recurse forever

_VARINT_TYPES = {"int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool"}
_FIXED64_TYPES = {"double", "fixed64", "sfixed64"}
_FIXED32_TYPES = {"float", "fixed32", "sfixed32"}
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "start-group", 4: "end-group", 5: "32-bit"}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_GO_ZERO_TIME_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, Go's zero time.Time

Field = tuple[str, str, str]  # (json name, type, flag)


class ProtobufError(ValueError):
    """The body is not a well-formed Kubernetes protobuf object this server can read."""


@cache
def _table() -> tuple[dict[str, str], dict[str, dict[int, Field]]]:
    data = json.loads((Path(__file__).with_name("protobuf_fields.json")).read_text())
    messages = {name: {int(n): (f[0], f[1], f[2]) for n, f in fields.items()}
                for name, fields in data["messages"].items()}
    return dict(data["packages"]), messages


def message_type(api_version: str, kind: str) -> str | None:
    """The protobuf message name for apiVersion/kind, or None if the table has no schema for it."""
    packages, messages = _table()
    package = packages.get(api_version)
    if package and f"{package}.{kind}" in messages:
        return f"{package}.{kind}"
    # meta/v1 option types (DeleteOptions, ...) are registered in every group version
    if api_version and f"{META}.{kind}" in messages:
        return f"{META}.{kind}"
    return None


def decode_k8s_protobuf(raw: bytes) -> dict[str, Any]:
    """Turn a "k8s\\x00"-prefixed protobuf body into the equivalent JSON object (a dict)."""
    if not raw.startswith(MAGIC):
        raise ProtobufError("the body is not Kubernetes protobuf: it does not start with the 4-byte "
                            "magic 'k8s\\x00'; send application/json instead")
    api_version = kind = content_encoding = content_type = ""
    payload = b""
    for num, wire, value in _fields(raw[len(MAGIC):], "runtime.Unknown"):
        if num == 1:
            for tnum, twire, tvalue in _fields(_need(value, wire, 2, "runtime.Unknown.typeMeta"), "TypeMeta"):
                if tnum == 1:
                    api_version = _string(_need(tvalue, twire, 2, "TypeMeta.apiVersion"), "TypeMeta.apiVersion")
                elif tnum == 2:
                    kind = _string(_need(tvalue, twire, 2, "TypeMeta.kind"), "TypeMeta.kind")
        elif num == 2:
            payload = _need(value, wire, 2, "runtime.Unknown.raw")
        elif num == 3:
            content_encoding = _string(_need(value, wire, 2, "runtime.Unknown.contentEncoding"), "contentEncoding")
        elif num == 4:
            content_type = _string(_need(value, wire, 2, "runtime.Unknown.contentType"), "contentType")
    if content_encoding:
        raise ProtobufError(f"protobuf body with contentEncoding {content_encoding!r} is not supported")
    if content_type and content_type.split(";")[0].strip() != MEDIA_TYPE:
        raise ProtobufError(f"protobuf envelope holds a {content_type!r} payload; only protobuf is supported")
    if not api_version or not kind:
        raise ProtobufError("protobuf body has no apiVersion/kind in its runtime.Unknown envelope")
    mtype = message_type(api_version, kind)
    if mtype is None:
        raise ProtobufError(f"no protobuf schema for {api_version} {kind} on this server; send it as "
                            "application/json instead")
    out: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    obj = _message(payload, mtype, 0)
    assert isinstance(obj, dict)
    obj.pop("apiVersion", None)
    obj.pop("kind", None)
    out.update(obj)
    return out


# -- wire format -------------------------------------------------------------------


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError(f"{where}: truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"{where}: varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes, where: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field: int for varints, bytes otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, where)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ProtobufError(f"{where}: field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, where)
            yield num, wire, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ProtobufError(f"{where}: truncated {_WIRE_NAMES[wire]} field {num}")
            yield num, wire, buf[pos:pos + size]
            pos += size
        elif wire == 2:
            length, pos = _varint(buf, pos, where)
            if pos + length > end:
                raise ProtobufError(f"{where}: field {num} says {length} bytes but only {end - pos} remain")
            yield num, wire, buf[pos:pos + length]
            pos += length
        else:
            raise ProtobufError(f"{where}: unsupported wire type {_WIRE_NAMES.get(wire, wire)} "
                                f"for field {num}")


def _need(value: Any, wire: int, want: int, where: str) -> Any:
    if wire != want:
        raise ProtobufError(f"{where}: expected a {_WIRE_NAMES[want]} field, got {_WIRE_NAMES.get(wire, wire)}")
    return value


def _string(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError(f"{where}: string is not valid UTF-8") from None


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _scalar(ftype: str, wire: int, value: Any, where: str) -> list[Any]:
    """Decode one wire value of a scalar type; a packed repeated field gives several."""
    if ftype in ("string", "bytes"):
        data = _need(value, wire, 2, where)
        return [_string(data, where) if ftype == "string" else base64.b64encode(data).decode("ascii")]
    if wire == 2 and (ftype in _VARINT_TYPES or ftype in _FIXED64_TYPES or ftype in _FIXED32_TYPES):
        return _packed(ftype, value, where)
    if ftype in _VARINT_TYPES:
        v = _need(value, wire, 0, where)
        if ftype == "bool":
            return [v != 0]
        if ftype in ("int32", "int64"):
            v = _signed64(v)
            if ftype == "int32" and not -(1 << 31) <= v < 1 << 31:
                raise ProtobufError(f"{where}: value {v} does not fit int32")
            return [v]
        if ftype in ("sint32", "sint64"):
            return [(v >> 1) ^ -(v & 1)]
        return [v & 0xFFFFFFFF if ftype == "uint32" else v]
    if ftype in _FIXED64_TYPES:
        data = _need(value, wire, 1, where)
        return [struct.unpack("<" + {"double": "d", "fixed64": "Q", "sfixed64": "q"}[ftype], data)[0]]
    if ftype in _FIXED32_TYPES:
        data = _need(value, wire, 5, where)
        return [struct.unpack("<" + {"float": "f", "fixed32": "I", "sfixed32": "i"}[ftype], data)[0]]
    raise ProtobufError(f"{where}: unknown scalar type {ftype}")


def _packed(ftype: str, data: bytes, where: str) -> list[Any]:
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        if ftype in _VARINT_TYPES:
            v, pos = _varint(data, pos, where)
            out += _scalar(ftype, 0, v, where)
        else:
            size = 8 if ftype in _FIXED64_TYPES else 4
            if pos + size > len(data):
                raise ProtobufError(f"{where}: truncated packed {ftype} list")
            out += _scalar(ftype, 1 if size == 8 else 5, data[pos:pos + size], where)
            pos += size
    return out


# -- messages ----------------------------------------------------------------------


def _value(ftype: str, wire: int, value: Any, where: str, depth: int) -> list[Any]:
    if ftype in _VARINT_TYPES or ftype in _FIXED64_TYPES or ftype in _FIXED32_TYPES or ftype in ("string", "bytes"):
        return _scalar(ftype, wire, value, where)
    return [_message(_need(value, wire, 2, where), ftype, depth + 1)]


def _is_zero(v: Any) -> bool:
    return v is None or v == "" or (v is False) or (type(v) in (int, float) and v == 0)


def _message(buf: bytes, mtype: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtobufError(f"{mtype}: objects nested deeper than {MAX_DEPTH} levels")
    special = _SPECIAL.get(mtype)
    if special is not None:
        return special(buf, mtype, depth)
    fields = _table()[1].get(mtype)
    if fields is None:
        raise ProtobufError(f"no protobuf schema for message {mtype}")
    out: dict[str, Any] = {}
    for num, wire, value in _fields(buf, mtype):
        field = fields.get(num)
        if field is None:
            continue  # a newer field this table does not know: skip it, as protobuf readers do
        name, ftype, flag = field
        where = f"{mtype}.{name}"
        if flag == "repeated":
            out.setdefault(name, []).extend(_value(ftype, wire, value, where, depth))
        elif flag == "map":
            key, item = _map_entry(_need(value, wire, 2, where), ftype, where, depth)
            out.setdefault(name, {})[key] = item
        elif flag == "inline":
            inner = _message(_need(value, wire, 2, where), ftype, depth + 1)
            if isinstance(inner, dict):
                out.update(inner)
        else:
            v = _value(ftype, wire, value, where, depth)[-1]
            if flag != "ptr" and _is_zero(v):
                out.pop(name, None)  # gogo writes zero non-pointer fields; JSON's omitempty drops them
            elif v is None:
                out.pop(name, None)
            else:
                out[name] = v
    return out


def _map_entry(buf: bytes, vtype: str, where: str, depth: int) -> tuple[str, Any]:
    key = ""
    item: Any = None
    for num, wire, value in _fields(buf, where):
        if num == 1:
            key = _string(_need(value, wire, 2, f"{where} key"), f"{where} key")
        elif num == 2:
            item = _value(vtype, wire, value, f"{where}[{key!r}]", depth)[-1]
    if item is None:  # an absent value is the type's zero value
        item = {"string": "", "bytes": ""}.get(vtype, 0 if vtype in _VARINT_TYPES else "")
        if vtype not in _VARINT_TYPES and vtype not in ("string", "bytes") and vtype != QUANTITY:
            item = _message(b"", vtype, depth + 1)
    return key, item


def _ints(buf: bytes, mtype: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for num, wire, value in _fields(buf, mtype):
        if wire == 0:
            out[num] = _signed64(value)
    return out


def _time(buf: bytes, mtype: str, depth: int) -> str | None:
    v = _ints(buf, mtype)
    seconds, nanos = v.get(1, 0), v.get(2, 0)
    if (seconds == 0 and nanos == 0) or seconds == _GO_ZERO_TIME_SECONDS:
        return None  # Go's zero time: JSON null, i.e. unset
    if not 0 <= nanos < 1_000_000_000:
        raise ProtobufError(f"{mtype}: nanos {nanos} out of range")
    try:
        t = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise ProtobufError(f"{mtype}: seconds {seconds} out of range") from None
    if mtype == MICRO_TIME:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(buf: bytes, mtype: str, depth: int) -> str:
    return go_duration(_ints(buf, mtype).get(1, 0))


def go_duration(ns: int) -> str:
    """Format nanoseconds the way Go's time.Duration.String does ("1h2m3.5s", "150ms", "0s")."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim_fraction(ns, size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim_fraction(rest, 1_000_000_000) + "s"


def _trim_fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def _int_or_string(buf: bytes, mtype: str, depth: int) -> int | str | None:
    kind, int_val, str_val = 0, 0, ""
    for num, wire, value in _fields(buf, mtype):
        if num == 1:
            kind = _signed64(_need(value, wire, 0, f"{mtype}.type"))
        elif num == 2:
            int_val = _scalar("int32", wire, value, f"{mtype}.intVal")[-1]
        elif num == 3:
            str_val = _string(_need(value, wire, 2, f"{mtype}.strVal"), f"{mtype}.strVal")
    if kind == 1:
        return str_val
    if kind != 0:
        raise ProtobufError(f"{mtype}: unknown type {kind} (0 is int, 1 is string)")
    return int_val


def _quantity(buf: bytes, mtype: str, depth: int) -> str:
    text = ""
    for num, wire, value in _fields(buf, mtype):
        if num == 1:
            text = _string(_need(value, wire, 2, f"{mtype}.string"), f"{mtype}.string")
    return text


def _raw_json(buf: bytes, mtype: str, depth: int) -> Any:
    raw = b""
    for num, wire, value in _fields(buf, mtype):
        if num == 1:
            raw = _need(value, wire, 2, f"{mtype}.raw")
    if not raw:
        return None
    if raw.startswith(MAGIC):
        return decode_k8s_protobuf(raw)
    try:
        return json.loads(raw)
    except ValueError:
        raise ProtobufError(f"{mtype}: embedded object is neither JSON nor Kubernetes protobuf") from None


_SPECIAL = {
    TIME: _time,
    MICRO_TIME: _time,
    DURATION: _duration,
    INT_OR_STRING: _int_or_string,
    QUANTITY: _quantity,
    RAW_EXTENSION: _raw_json,
    FIELDS_V1: _raw_json,
}
