"""Object validation with upstream's field errors and messages.

``validate_object`` checks a (defaulted) object for create, ``validate_update``
adds the immutability rules, ``validate_status_update`` checks a write to the
status subresource. Every check returns ``FieldError`` values whose type,
field path and message follow k8s.io/apimachinery ``field.Error`` and the
rules of k8s.io/kubernetes ``pkg/apis/*/validation``, so kubectl and clients
print what they print against a real cluster, e.g.::

    spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive

Objects are expected to be defaulted first (``kube.api.defaults``); fields
that defaulting fills in are accepted when missing. Bad input of the wrong
JSON type is reported, never raised.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeGuard

from kube.api.quantity import QuantityError, format_quantity, is_binary_quantity, parse_quantity
from kube.api.selectors import SelectorError, label_selector_from_dict

__all__ = [
    "FieldError",
    "REQUIRED",
    "INVALID",
    "NOT_SUPPORTED",
    "DUPLICATE",
    "TOO_LONG",
    "TOO_MANY",
    "FORBIDDEN",
    "NOT_FOUND",
    "validate_object",
    "validate_update",
    "validate_status_update",
    "validate_object_meta",
    "validate_pod_spec",
    "validate_labels",
    "validate_label_selector",
    "dns1123_label_errors",
    "dns1123_subdomain_errors",
    "dns1035_label_errors",
    "qualified_name_errors",
    "label_value_errors",
    "env_var_name_errors",
    "config_map_key_errors",
    "port_name_errors",
    "ip_errors",
    "format_errors",
]

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
FORBIDDEN = "FieldValueForbidden"
NOT_FOUND = "FieldValueNotFound"

_TYPE_TEXT = {
    REQUIRED: "Required value",
    INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    DUPLICATE: "Duplicate value",
    TOO_LONG: "Too long",
    TOO_MANY: "Too many",
    FORBIDDEN: "Forbidden",
    NOT_FOUND: "Not found",
}
_NO_VALUE_TYPES = (REQUIRED, FORBIDDEN, TOO_LONG)


class _Omit:
    """Marks a FieldError whose value must not be printed (e.g. secret data)."""

    def __repr__(self) -> str:
        return "<omitted>"


OMIT = _Omit()


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _render_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return _go_quote(v)
    try:
        return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(v)


@dataclass(frozen=True)
class FieldError:
    type: str
    field: str
    detail: str
    value: object = None

    def message(self) -> str:
        """The error without the field, as upstream's ErrorBody: 'Invalid value: "x": detail'."""
        text = _TYPE_TEXT.get(self.type, self.type)
        if self.type not in _NO_VALUE_TYPES and self.value is not OMIT:
            text = f"{text}: {_render_value(self.value)}"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text

    def cause(self) -> dict[str, str]:
        return {"reason": self.type, "message": self.message(), "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message()}"


def format_errors(errors: Iterable[FieldError]) -> str:
    """The aggregate text upstream puts after 'X "name" is invalid: '."""
    errs = list(errors)
    if len(errs) == 1:
        return str(errs[0])
    return "[" + ", ".join(str(e) for e in errs) + "]"


# ---- constructors (mirroring field.Required, field.Invalid, ...)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(REQUIRED, path, detail, "")


def invalid(path: str, value: object, detail: str) -> FieldError:
    return FieldError(INVALID, path, detail, value)


def not_supported(path: str, value: object, valid: Iterable[str]) -> FieldError:
    detail = "supported values: " + ", ".join(_go_quote(v) for v in valid)
    return FieldError(NOT_SUPPORTED, path, detail, value)


def duplicate(path: str, value: object) -> FieldError:
    return FieldError(DUPLICATE, path, "", value)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(FORBIDDEN, path, detail, "")


def too_long(path: str, max_len: int) -> FieldError:
    unit = "byte" if max_len == 1 else "bytes"
    return FieldError(TOO_LONG, path, f"may not be more than {max_len} {unit}", OMIT)


def too_many(path: str, actual: int, max_items: int) -> FieldError:
    unit = "item" if max_items == 1 else "items"
    return FieldError(TOO_MANY, path, f"must have at most {max_items} {unit}", actual)


def not_found(path: str, value: object) -> FieldError:
    return FieldError(NOT_FOUND, path, "", value)


def immutable(path: str, value: object) -> FieldError:
    return invalid(path, value, "field is immutable")


# ==========================================================================
# string rules (apimachinery pkg/util/validation), upstream wording


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    text = msg + " (e.g. "
    for i, e in enumerate(examples):
        if i > 0:
            text += " or "
        text += f"'{e}', "
    return text + f"regex used for validation is '{fmt}')"


def _max_len_error(n: int) -> str:
    return f"must be no more than {n} characters"


NONNEGATIVE = "must be greater than or equal to 0"
POSITIVE = "must be greater than 0"
PORT_RANGE = "must be between 1 and 65535, inclusive"

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_MSG = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
_LABEL_VALUE_FMT = f"({_QNAME_FMT})?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
    "start with an alphabetic character, and end with an alphanumeric character"
)
_ENV_VAR_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_ENV_VAR_MSG = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', "
    "and must not start with a digit"
)
_CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"
_CONFIG_KEY_MSG = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
_PERCENT_FMT = "[0-9]+%"
_PERCENT_MSG = "a valid percent string must be a numeric string followed by an ending '%'"
_IP_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


def _full(fmt: str) -> re.Pattern[str]:
    return re.compile(f"^(?:{fmt})$")


_QNAME_RE = _full(_QNAME_FMT)
_LABEL_VALUE_RE = _full(_LABEL_VALUE_FMT)
_DNS1123_LABEL_RE = _full(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = _full(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = _full(_DNS1035_LABEL_FMT)
_ENV_VAR_RE = _full(_ENV_VAR_FMT)
_CONFIG_KEY_RE = _full(_CONFIG_KEY_FMT)
_PERCENT_RE = _full(_PERCENT_FMT)
_PORT_NAME_CHARS_RE = re.compile(r"^[-a-z0-9]+$")
_PORT_NAME_LETTER_RE = re.compile(r"[a-z]")


def dns1123_label_errors(v: str) -> list[str]:
    errs = []
    if len(v) > 63:
        errs.append(_max_len_error(63))
    if not _DNS1123_LABEL_RE.match(v):
        errs.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def dns1123_subdomain_errors(v: str) -> list[str]:
    errs = []
    if len(v) > 253:
        errs.append(_max_len_error(253))
    if not _DNS1123_SUBDOMAIN_RE.match(v):
        errs.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def dns1035_label_errors(v: str) -> list[str]:
    errs = []
    if len(v) > 63:
        errs.append(_max_len_error(63))
    if not _DNS1035_LABEL_RE.match(v):
        errs.append(_regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def qualified_name_errors(v: str) -> list[str]:
    """IsQualifiedName: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    parts = v.split("/")
    errs: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in dns1123_subdomain_errors(prefix))
    else:
        return [
            "a qualified name "
            + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len_error(63))
    if not _QNAME_RE.match(name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def label_value_errors(v: str) -> list[str]:
    errs = []
    if len(v) > 63:
        errs.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.match(v):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _chdir_prefix_errors(v: str) -> list[str]:
    if v == ".":
        return ["must not be '.'"]
    if v == "..":
        return ["must not be '..'"]
    if v.startswith(".."):
        return ["must not start with '..'"]
    return []


def env_var_name_errors(v: str) -> list[str]:
    errs = []
    if not _ENV_VAR_RE.match(v):
        errs.append(_regex_error(_ENV_VAR_MSG, _ENV_VAR_FMT, "my.env-name", "MY_ENV.NAME", "MyEnvName1"))
    return errs + _chdir_prefix_errors(v)


def config_map_key_errors(v: str) -> list[str]:
    errs = []
    if len(v) > 253:
        errs.append(_max_len_error(253))
    if not _CONFIG_KEY_RE.match(v):
        errs.append(_regex_error(_CONFIG_KEY_MSG, _CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    return errs + _chdir_prefix_errors(v)


def port_name_errors(v: str) -> list[str]:
    """IsValidPortName (IANA_SVC_NAME)."""
    errs = []
    if len(v) > 15:
        errs.append(_max_len_error(15))
    if not _PORT_NAME_CHARS_RE.match(v):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER_RE.search(v):
        errs.append("must contain at least one letter (a-z)")
    if "--" in v:
        errs.append("must not contain consecutive hyphens")
    if v.startswith("-") or v.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def ip_errors(v: str) -> list[str]:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return [_IP_MSG]
    return []


def _ipv4_errors(v: str) -> list[str]:
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        return ["must be a valid IPv4 address"]
    return []


def _ipv6_errors(v: str) -> list[str]:
    try:
        ipaddress.IPv6Address(v)
    except ValueError:
        return ["must be a valid IPv6 address"]
    return []


def _cidr_errors(v: str) -> list[str]:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return ["must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
    return []


def _mask_trailing_dash(name: str) -> str:
    """generateName prefixes may end in '-': check them as if that were a letter."""
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


# ==========================================================================
# small helpers for untrusted JSON


def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


class _Errs(list[FieldError]):
    """An error list with shorthand adders."""

    def add_msgs(self, path: str, value: object, msgs: Iterable[str]) -> None:
        for m in msgs:
            self.append(invalid(path, value, m))

    def unique_label_name(self, path: str, name: Any, seen: set[str], *, required_: bool = True) -> None:
        """A list element's `name`: present, a DNS-1123 label, not seen before in the list."""
        if not name:
            if required_:
                self.append(required(path, ""))
        elif not isinstance(name, str):
            self.append(invalid(path, name, "must be a string"))
        else:
            self.add_msgs(path, name, dns1123_label_errors(name))
            if name in seen:
                self.append(duplicate(path, name))
            seen.add(name)

    def check_type(self, path: str, value: Any, want: type | tuple[type, ...], what: str) -> bool:
        """True when value is of the wanted JSON type; reports an error otherwise."""
        if isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
            self.append(invalid(path, value, f"must be {what}"))
            return False
        if not isinstance(value, want):
            self.append(invalid(path, value, f"must be {what}"))
            return False
        return True

    def nonnegative(self, path: str, value: Any) -> None:
        if value is None:
            return
        if not _is_int(value):
            self.append(invalid(path, value, "must be an integer"))
        elif value < 0:
            self.append(invalid(path, value, NONNEGATIVE))

    def positive(self, path: str, value: Any) -> None:
        if value is None:
            return
        if not _is_int(value):
            self.append(invalid(path, value, "must be an integer"))
        elif value <= 0:
            self.append(invalid(path, value, POSITIVE))

    def port(self, path: str, value: Any, *, allow_zero: bool = False) -> None:
        if value is None or (allow_zero and value == 0):
            return
        if not _is_int(value):
            self.append(invalid(path, value, "must be an integer"))
        elif not 1 <= value <= 65535:
            self.append(invalid(path, value, PORT_RANGE))

    def port_num_or_name(self, path: str, value: Any) -> None:
        if _is_int(value):
            self.port(path, value)
        elif isinstance(value, str):
            self.add_msgs(path, value, port_name_errors(value))
        else:
            self.append(invalid(path, value, "must be an integer port number or a port name"))

    def enum(self, path: str, value: Any, valid: list[str], *, required_if_empty: bool = False) -> None:
        if value is None or value == "":
            if required_if_empty:
                self.append(required(path, ""))
            return
        if value not in valid:
            self.append(not_supported(path, value, valid))


# ==========================================================================
# metadata


TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
NameFn = Callable[[str], list[str]]

_STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion"}


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if labels is None:
        return errs
    if not isinstance(labels, dict):
        errs.append(invalid(path, labels, "must be a map of string keys to string values"))
        return errs
    for k, v in labels.items():
        errs.add_msgs(path, k, qualified_name_errors(k))
        if not isinstance(v, str):
            errs.append(invalid(path, v, "label values must be strings"))
        else:
            errs.add_msgs(path, v, label_value_errors(v))
    return errs


def validate_annotations(annotations: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if annotations is None:
        return errs
    if not isinstance(annotations, dict):
        errs.append(invalid(path, annotations, "must be a map of string keys to string values"))
        return errs
    total = 0
    for k, v in annotations.items():
        errs.add_msgs(path, k, qualified_name_errors(k.lower()))
        if not isinstance(v, str):
            errs.append(invalid(path, v, "annotation values must be strings"))
            continue
        total += len(k.encode()) + len(v.encode())
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT))
    return errs


def _validate_owner_references(refs: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if refs is None:
        return errs
    if not isinstance(refs, list):
        errs.append(invalid(path, refs, "must be a list of owner references"))
        return errs
    controllers = []
    for ref in refs:
        if not isinstance(ref, dict):
            errs.append(invalid(path, ref, "must be an object"))
            continue
        api_version = _str(ref.get("apiVersion"))
        version = api_version.rsplit("/", 1)[-1]
        if not version:
            errs.append(invalid(path + ".apiVersion", version, "version must not be empty"))
        if not _str(ref.get("kind")):
            errs.append(invalid(path + ".kind", _str(ref.get("kind")), "kind must not be empty"))
        if not _str(ref.get("name")):
            errs.append(invalid(path + ".name", _str(ref.get("name")), "name must not be empty"))
        if not _str(ref.get("uid")):
            errs.append(invalid(path + ".uid", _str(ref.get("uid")), "uid must not be empty"))
        if ref.get("controller") is True:
            controllers.append(ref)
    if len(controllers) > 1:
        names = ", ".join(f"{_str(r.get('kind'))}/{_str(r.get('name'))}" for r in controllers)
        errs.append(
            invalid(
                path,
                refs,
                f'Only one reference can have Controller set to true. Found "true" in references for {names}',
            )
        )
    return errs


def _validate_finalizer_name(name: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if not isinstance(name, str):
        errs.append(invalid(path, name, "finalizer names must be strings"))
        return errs
    errs.add_msgs(path, name, qualified_name_errors(name))
    if not errs and "/" not in name and name not in _STANDARD_FINALIZERS:
        errs.append(
            invalid(path, name, "name is neither a standard finalizer name nor is it fully qualified")
        )
    return errs


def _validate_finalizers(finalizers: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if finalizers is None:
        return errs
    if not isinstance(finalizers, list):
        errs.append(invalid(path, finalizers, "must be a list of strings"))
        return errs
    for f in finalizers:
        errs.extend(_validate_finalizer_name(f, path))
    if "orphan" in finalizers and "foregroundDeletion" in finalizers:
        errs.append(invalid(path, finalizers, "finalizer orphan and foregroundDeletion cannot be both set"))
    return errs


def validate_object_meta(
    meta: Any, namespaced: bool, name_fn: NameFn, path: str = "metadata"
) -> list[FieldError]:
    errs = _Errs()
    if not isinstance(meta, dict):
        if meta is not None:
            errs.append(invalid(path, meta, "must be an object"))
        meta = {}
    name = meta.get("name")
    generate = meta.get("generateName")
    if generate:
        if not isinstance(generate, str):
            errs.append(invalid(f"{path}.generateName", generate, "must be a string"))
        else:
            errs.add_msgs(f"{path}.generateName", generate, name_fn(_mask_trailing_dash(generate)))
    if not name:
        if not generate:
            errs.append(required(f"{path}.name", "name or generateName is required"))
    elif not isinstance(name, str):
        errs.append(invalid(f"{path}.name", name, "must be a string"))
    else:
        errs.add_msgs(f"{path}.name", name, name_fn(name))
    ns = meta.get("namespace")
    if namespaced:
        if not ns:
            errs.append(required(f"{path}.namespace", ""))
        elif not isinstance(ns, str):
            errs.append(invalid(f"{path}.namespace", ns, "must be a string"))
        else:
            errs.add_msgs(f"{path}.namespace", ns, dns1123_label_errors(ns))
    elif ns:
        errs.append(forbidden(f"{path}.namespace", "not allowed on this type"))
    gen = meta.get("generation")
    if gen is not None:
        errs.nonnegative(f"{path}.generation", gen)
    errs.extend(validate_labels(meta.get("labels"), f"{path}.labels"))
    errs.extend(validate_annotations(meta.get("annotations"), f"{path}.annotations"))
    errs.extend(_validate_owner_references(meta.get("ownerReferences"), f"{path}.ownerReferences"))
    errs.extend(_validate_finalizers(meta.get("finalizers"), f"{path}.finalizers"))
    return errs


def validate_object_meta_update(new: Any, old: Any, path: str = "metadata") -> list[FieldError]:
    errs = _Errs()
    new, old = _map(new), _map(old)
    for key in ("name", "namespace"):
        if new.get(key, "") != old.get(key, ""):
            errs.append(immutable(f"{path}.{key}", new.get(key, "")))
    for key in ("uid", "creationTimestamp"):
        if old.get(key) and new.get(key) and new.get(key) != old.get(key):
            errs.append(immutable(f"{path}.{key}", new.get(key)))
    if old.get("deletionTimestamp"):
        added = [f for f in _list(new.get("finalizers")) if f not in _list(old.get("finalizers"))]
        if added:
            errs.append(
                forbidden(
                    f"{path}.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers {json.dumps(added)}",
                )
            )
    return errs


# ==========================================================================
# label selectors (metav1.LabelSelector)


def validate_label_selector(sel: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if sel is None:
        return errs
    if not isinstance(sel, dict):
        errs.append(invalid(path, sel, "must be a label selector object"))
        return errs
    errs.extend(validate_labels(sel.get("matchLabels"), f"{path}.matchLabels"))
    for i, expr in enumerate(_list(sel.get("matchExpressions"))):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errs.append(invalid(p, expr, "must be an object"))
            continue
        op = expr.get("operator")
        values = expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                errs.append(required(f"{p}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.append(
                    forbidden(
                        f"{p}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    )
                )
        else:
            errs.append(invalid(f"{p}.operator", op, "not a valid selector operator"))
        key = expr.get("key")
        errs.add_msgs(f"{p}.key", key, qualified_name_errors(key if isinstance(key, str) else ""))
        for j, v in enumerate(_list(values)):
            if isinstance(v, str):
                errs.add_msgs(f"{p}.values[{j}]", v, label_value_errors(v))
            else:
                errs.append(invalid(f"{p}.values[{j}]", v, "must be a string"))
    return errs


def _selector_matches(sel: Any, labels: Any) -> bool | None:
    """Whether a metav1 selector matches labels; None when the selector is unusable."""
    try:
        return label_selector_from_dict(sel if isinstance(sel, dict) else None).matches(_map(labels))
    except SelectorError:
        return None


# ==========================================================================
# pods


_RESTART_POLICIES = ["Always", "OnFailure", "Never"]
_DNS_POLICIES = ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_PULL_POLICIES = ["Always", "IfNotPresent", "Never"]
_TERMINATION_MESSAGE_POLICIES = ["FallbackToLogsOnError", "File"]
_TAINT_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]
_TOLERATION_OPERATORS = ["Equal", "Exists"]
_VOLUME_SOURCES = (
    "hostPath", "emptyDir", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "secret", "nfs", "iscsi",
    "glusterfs", "persistentVolumeClaim", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "downwardAPI", "fc",
    "azureFile", "configMap", "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "projected",
    "portworxVolume", "scaleIO", "storageos", "csi", "ephemeral", "image",
)  # fmt: skip
_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
_STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_MAX_INT32 = 2147483647


def _validate_resource_name(name: str, path: str) -> list[FieldError]:
    errs = _Errs()
    errs.add_msgs(path, name, qualified_name_errors(name))
    if errs:
        return errs
    if "/" not in name and name not in _STANDARD_CONTAINER_RESOURCES and not name.startswith("hugepages-"):
        errs.append(invalid(path, name, "must be a standard resource for containers"))
    return errs


def _quantity_text(d: Decimal, raw: Any) -> str:
    return format_quantity(d, binary=is_binary_quantity(raw))


def _validate_resources(res: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if res is None:
        return errs
    if not isinstance(res, dict):
        errs.append(invalid(path, res, "must be an object"))
        return errs
    parsed: dict[str, dict[str, Decimal]] = {"limits": {}, "requests": {}}
    for kind in ("limits", "requests"):
        values = res.get(kind)
        if values is None:
            continue
        if not isinstance(values, dict):
            errs.append(invalid(f"{path}.{kind}", values, "must be a map of resource names to quantities"))
            continue
        for name, raw in values.items():
            p = f"{path}.{kind}[{name}]"
            errs.extend(_validate_resource_name(name, p))
            try:
                q = parse_quantity(raw)
            except QuantityError as e:
                errs.append(invalid(p, raw, str(e)))
                continue
            if q < 0:
                errs.append(invalid(p, _quantity_text(q, raw), NONNEGATIVE))
            parsed[kind][name] = q
    for name, req in parsed["requests"].items():
        lim = parsed["limits"].get(name)
        if lim is not None and req > lim:
            raw_req = _map(res.get("requests")).get(name)
            raw_lim = _map(res.get("limits")).get(name)
            errs.append(
                invalid(
                    f"{path}.requests[{name}]",
                    _quantity_text(req, raw_req),
                    f"must be less than or equal to {name} limit of {_quantity_text(lim, raw_lim)}",
                )
            )
    return errs


def _validate_handler_port(errs: _Errs, handler: dict[str, Any], path: str) -> None:
    if "port" not in handler or handler.get("port") in (None, ""):
        errs.append(required(f"{path}.port", ""))
    else:
        errs.port_num_or_name(f"{path}.port", handler["port"])


def _validate_probe(probe: Any, path: str, *, single_success: bool) -> list[FieldError]:
    errs = _Errs()
    if probe is None:
        return errs
    if not isinstance(probe, dict):
        errs.append(invalid(path, probe, "must be an object"))
        return errs
    handlers = [h for h in _PROBE_HANDLERS if probe.get(h) is not None]
    if not handlers:
        errs.append(required(path, "must specify a handler type"))
    for extra in handlers[1:]:
        errs.append(forbidden(f"{path}.{extra}", "may not specify more than 1 handler type"))
    for h in handlers[:1]:
        hv = probe[h]
        hp = f"{path}.{h}"
        if not isinstance(hv, dict):
            errs.append(invalid(hp, hv, "must be an object"))
            continue
        if h == "exec":
            if not _list(hv.get("command")):
                errs.append(required(f"{hp}.command", ""))
        elif h in ("httpGet", "tcpSocket"):
            _validate_handler_port(errs, hv, hp)
            if h == "httpGet":
                errs.enum(f"{hp}.scheme", hv.get("scheme"), ["HTTP", "HTTPS"])
        elif h == "grpc":
            errs.port(f"{hp}.port", hv.get("port"))
    for key in (
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ):
        errs.nonnegative(f"{path}.{key}", probe.get(key))
    if probe.get("terminationGracePeriodSeconds") is not None:
        errs.positive(f"{path}.terminationGracePeriodSeconds", probe["terminationGracePeriodSeconds"])
    sc = probe.get("successThreshold")
    if single_success and _is_int(sc) and sc != 1:
        errs.append(invalid(f"{path}.successThreshold", sc, "must be 1"))
    return errs


def _validate_env(env: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if env is None:
        return errs
    if not isinstance(env, list):
        errs.append(invalid(path, env, "must be a list"))
        return errs
    for i, ev in enumerate(env):
        p = f"{path}[{i}]"
        if not isinstance(ev, dict):
            errs.append(invalid(p, ev, "must be an object"))
            continue
        name = ev.get("name")
        if not name:
            errs.append(required(f"{p}.name", ""))
        elif not isinstance(name, str):
            errs.append(invalid(f"{p}.name", name, "must be a string"))
        else:
            errs.add_msgs(f"{p}.name", name, env_var_name_errors(name))
        value_from = ev.get("valueFrom")
        if value_from is not None:
            if not isinstance(value_from, dict):
                errs.append(invalid(f"{p}.valueFrom", value_from, "must be an object"))
                continue
            sources = [
                k
                for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
                if value_from.get(k)
            ]
            if not sources:
                errs.append(
                    invalid(
                        f"{p}.valueFrom",
                        "",
                        "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                    )
                )
            elif len(sources) > 1:
                errs.append(
                    invalid(f"{p}.valueFrom", "", "may not have more than one field specified at a time")
                )
            if ev.get("value"):
                errs.append(invalid(f"{p}.valueFrom", "", "may not be specified when `value` is not empty"))
            for ref in ("configMapKeyRef", "secretKeyRef"):
                r = value_from.get(ref)
                if isinstance(r, dict) and not r.get("key"):
                    errs.append(required(f"{p}.valueFrom.{ref}.key", ""))
            fr = value_from.get("fieldRef")
            if isinstance(fr, dict) and not fr.get("fieldPath"):
                errs.append(required(f"{p}.valueFrom.fieldRef.fieldPath", ""))
    return errs


def _validate_container(
    c: dict[str, Any], path: str, volumes: set[str], host_ports: dict[tuple[Any, Any, Any], str]
) -> list[FieldError]:
    errs = _Errs()
    if not c.get("image"):
        errs.append(required(f"{path}.image", ""))
    elif not isinstance(c["image"], str):
        errs.append(invalid(f"{path}.image", c["image"], "must be a string"))
    errs.enum(f"{path}.imagePullPolicy", c.get("imagePullPolicy"), _PULL_POLICIES)
    errs.enum(
        f"{path}.terminationMessagePolicy", c.get("terminationMessagePolicy"), _TERMINATION_MESSAGE_POLICIES
    )
    for key in ("command", "args"):
        v = c.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            errs.append(invalid(f"{path}.{key}", v, "must be a list of strings"))

    port_names: set[str] = set()
    ports = c.get("ports")
    if ports is not None and not isinstance(ports, list):
        errs.append(invalid(f"{path}.ports", ports, "must be a list"))
    for i, port in enumerate(_list(ports)):
        p = f"{path}.ports[{i}]"
        if not isinstance(port, dict):
            errs.append(invalid(p, port, "must be an object"))
            continue
        name = port.get("name")
        if name:
            if not isinstance(name, str):
                errs.append(invalid(f"{p}.name", name, "must be a string"))
            else:
                errs.add_msgs(f"{p}.name", name, port_name_errors(name))
                if name in port_names:
                    errs.append(duplicate(f"{p}.name", name))
                port_names.add(name)
        cp = port.get("containerPort")
        if cp in (None, 0):
            errs.append(required(f"{p}.containerPort", ""))
        else:
            errs.port(f"{p}.containerPort", cp)
        hp = port.get("hostPort")
        errs.port(f"{p}.hostPort", hp, allow_zero=True)
        errs.enum(f"{p}.protocol", port.get("protocol"), _PROTOCOLS)
        if _is_int(hp) and hp:
            hp_key = (port.get("hostIP") or "", port.get("protocol") or "TCP", hp)
            if hp_key in host_ports:
                errs.append(duplicate(f"{p}.hostPort", f"{hp_key[1]}/{hp}"))
            host_ports[hp_key] = p
        if port.get("hostIP"):
            errs.add_msgs(f"{p}.hostIP", port["hostIP"], ip_errors(_str(port["hostIP"])))

    errs.extend(_validate_env(c.get("env"), f"{path}.env"))

    mount_paths: set[str] = set()
    mounts = c.get("volumeMounts")
    if mounts is not None and not isinstance(mounts, list):
        errs.append(invalid(f"{path}.volumeMounts", mounts, "must be a list"))
    for i, m in enumerate(_list(mounts)):
        p = f"{path}.volumeMounts[{i}]"
        if not isinstance(m, dict):
            errs.append(invalid(p, m, "must be an object"))
            continue
        name = m.get("name")
        if not name:
            errs.append(required(f"{p}.name", ""))
        elif name not in volumes:
            errs.append(not_found(f"{p}.name", name))
        mp = m.get("mountPath")
        if not mp:
            errs.append(required(f"{p}.mountPath", ""))
        elif isinstance(mp, str):
            if mp in mount_paths:
                errs.append(invalid(f"{p}.mountPath", mp, "must be unique"))
            mount_paths.add(mp)

    errs.extend(_validate_resources(c.get("resources"), f"{path}.resources"))
    errs.extend(_validate_probe(c.get("livenessProbe"), f"{path}.livenessProbe", single_success=True))
    errs.extend(_validate_probe(c.get("startupProbe"), f"{path}.startupProbe", single_success=True))
    errs.extend(_validate_probe(c.get("readinessProbe"), f"{path}.readinessProbe", single_success=False))
    return errs


def _validate_volumes(volumes: Any, path: str) -> tuple[list[FieldError], set[str]]:
    errs = _Errs()
    names: set[str] = set()
    if volumes is None:
        return errs, names
    if not isinstance(volumes, list):
        errs.append(invalid(path, volumes, "must be a list"))
        return errs, names
    for i, v in enumerate(volumes):
        p = f"{path}[{i}]"
        if not isinstance(v, dict):
            errs.append(invalid(p, v, "must be an object"))
            continue
        errs.unique_label_name(f"{p}.name", v.get("name"), names)
        sources = [s for s in _VOLUME_SOURCES if v.get(s) is not None]
        if not sources:
            errs.append(required(p, "must specify a volume type"))
        for extra in sources[1:]:
            errs.append(forbidden(f"{p}.{extra}", "may not specify more than 1 volume type"))
        for src in sources[:1]:
            sv = _map(v.get(src))
            sp = f"{p}.{src}"
            if src == "hostPath" and not sv.get("path"):
                errs.append(required(f"{sp}.path", ""))
            elif src == "secret" and not sv.get("secretName"):
                errs.append(required(f"{sp}.secretName", ""))
            elif src == "configMap" and not sv.get("name"):
                errs.append(required(f"{sp}.name", ""))
            elif src == "persistentVolumeClaim" and not sv.get("claimName"):
                errs.append(required(f"{sp}.claimName", ""))
            elif src == "emptyDir":
                errs.enum(f"{sp}.medium", sv.get("medium"), ["", "Memory", "HugePages"])
                if sv.get("sizeLimit") is not None:
                    try:
                        if parse_quantity(sv["sizeLimit"]) < 0:
                            errs.append(invalid(f"{sp}.sizeLimit", sv["sizeLimit"], NONNEGATIVE))
                    except QuantityError as e:
                        errs.append(invalid(f"{sp}.sizeLimit", sv["sizeLimit"], str(e)))
            mode = sv.get("defaultMode")
            if mode is not None and (not _is_int(mode) or not 0 <= mode <= 0o777):
                errs.append(
                    invalid(
                        f"{sp}.defaultMode",
                        mode,
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    )
                )
    return errs, names


def _validate_tolerations(tolerations: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if tolerations is None:
        return errs
    if not isinstance(tolerations, list):
        errs.append(invalid(path, tolerations, "must be a list"))
        return errs
    for i, t in enumerate(tolerations):
        p = f"{path}[{i}]"
        if not isinstance(t, dict):
            errs.append(invalid(p, t, "must be an object"))
            continue
        key, op, value, effect = (
            _str(t.get("key")),
            _str(t.get("operator")),
            _str(t.get("value")),
            t.get("effect"),
        )
        if key:
            errs.add_msgs(f"{p}.key", key, qualified_name_errors(key))
        elif op != "Exists":
            errs.append(
                invalid(
                    f"{p}.operator",
                    op,
                    'operator must be Exists when `key` is empty, which means "match all values and all keys"',
                )
            )
        if t.get("tolerationSeconds") is not None and effect != "NoExecute":
            errs.append(
                invalid(
                    f"{p}.effect", effect or "", "effect must be 'NoExecute' when `tolerationSeconds` is set"
                )
            )
        if op in ("", "Equal"):
            errs.add_msgs(f"{p}.value", value, label_value_errors(value))
        elif op == "Exists":
            if value:
                errs.append(invalid(f"{p}.value", value, "value must be empty when `operator` is 'Exists'"))
        else:
            errs.append(not_supported(f"{p}.operator", op, _TOLERATION_OPERATORS))
        if effect:
            errs.enum(f"{p}.effect", effect, _TAINT_EFFECTS)
    return errs


def validate_pod_spec(spec: Any, path: str = "spec") -> list[FieldError]:
    """ValidatePodSpec: containers, volumes, policies, scheduling fields."""
    errs = _Errs()
    if not isinstance(spec, dict):
        errs.append(required(path, "") if spec is None else invalid(path, spec, "must be an object"))
        return errs
    vol_errs, volumes = _validate_volumes(spec.get("volumes"), f"{path}.volumes")
    errs.extend(vol_errs)

    names: set[str] = set()
    host_ports: dict[tuple[Any, Any, Any], str] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        containers = spec.get(key)
        if key == "containers" and not containers:
            errs.append(required(f"{path}.containers", ""))
            continue
        if containers is None:
            continue
        if not isinstance(containers, list):
            errs.append(invalid(f"{path}.{key}", containers, "must be a list"))
            continue
        for i, c in enumerate(containers):
            p = f"{path}.{key}[{i}]"
            if not isinstance(c, dict):
                errs.append(invalid(p, c, "must be an object"))
                continue
            errs.unique_label_name(f"{p}.name", c.get("name"), names)
            errs.extend(_validate_container(c, p, volumes, host_ports))

    errs.enum(f"{path}.restartPolicy", spec.get("restartPolicy"), _RESTART_POLICIES)
    errs.enum(f"{path}.dnsPolicy", spec.get("dnsPolicy"), _DNS_POLICIES)
    errs.nonnegative(f"{path}.terminationGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"))
    ads = spec.get("activeDeadlineSeconds")
    if ads is not None and (not _is_int(ads) or not 1 <= ads <= _MAX_INT32):
        errs.append(
            invalid(f"{path}.activeDeadlineSeconds", ads, f"must be between 1 and {_MAX_INT32}, inclusive")
        )
    for key, fn in (
        ("nodeName", dns1123_subdomain_errors),
        ("serviceAccountName", dns1123_subdomain_errors),
        ("hostname", dns1123_label_errors),
        ("subdomain", dns1123_label_errors),
    ):
        v = spec.get(key)
        if v:
            if isinstance(v, str):
                errs.add_msgs(f"{path}.{key}", v, fn(v))
            else:
                errs.append(invalid(f"{path}.{key}", v, "must be a string"))
    errs.extend(validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector"))
    errs.extend(_validate_tolerations(spec.get("tolerations"), f"{path}.tolerations"))
    for i, ha in enumerate(_list(spec.get("hostAliases"))):
        errs.add_msgs(f"{path}.hostAliases[{i}].ip", _map(ha).get("ip"), ip_errors(_str(_map(ha).get("ip"))))
    for i, s in enumerate(_list(spec.get("imagePullSecrets"))):
        if not _map(s).get("name"):
            errs.append(required(f"{path}.imagePullSecrets[{i}].name", ""))
    return errs


def _validate_pod(obj: dict[str, Any]) -> list[FieldError]:
    return validate_pod_spec(obj.get("spec"), "spec")


def _validate_pod_template(
    template: Any, path: str, *, restart_policies: list[str] | None = None, replica_set: bool = False
) -> list[FieldError]:
    errs = _Errs()
    if not isinstance(template, dict):
        errs.append(required(path, "") if template is None else invalid(path, template, "must be an object"))
        return errs
    meta = _map(template.get("metadata"))
    errs.extend(validate_labels(meta.get("labels"), f"{path}.metadata.labels"))
    errs.extend(validate_annotations(meta.get("annotations"), f"{path}.metadata.annotations"))
    spec = template.get("spec")
    errs.extend(validate_pod_spec(spec, f"{path}.spec"))
    spec = _map(spec)
    if restart_policies is not None:
        rp = spec.get("restartPolicy")
        if rp and rp in _RESTART_POLICIES and rp not in restart_policies:
            errs.append(not_supported(f"{path}.spec.restartPolicy", rp, restart_policies))
    if replica_set and spec.get("activeDeadlineSeconds") is not None:
        errs.append(
            forbidden(
                f"{path}.spec.activeDeadlineSeconds", "activeDeadlineSeconds in ReplicaSet is not Supported"
            )
        )
    return errs


# ==========================================================================
# workloads


def _validate_int_or_percent(value: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if value is None:
        return errs
    if isinstance(value, str):
        if not _PERCENT_RE.match(value):
            errs.append(invalid(path, value, _regex_error(_PERCENT_MSG, _PERCENT_FMT, "1%", "93%")))
        elif int(value[:-1]) > 100:
            errs.append(invalid(path, value, "must not be greater than 100%"))
    elif _is_int(value):
        errs.nonnegative(path, value)
    else:
        errs.append(invalid(path, value, "must be an integer or percentage (e.g '5%')"))
    return errs


def _is_zero(v: Any) -> bool:
    return v in (0, "0%")


def _validate_rolling(ru: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if not isinstance(ru, dict):
        return errs
    mu, ms = ru.get("maxUnavailable"), ru.get("maxSurge")
    errs.extend(_validate_int_or_percent(mu, f"{path}.maxUnavailable"))
    errs.extend(_validate_int_or_percent(ms, f"{path}.maxSurge"))
    if mu is not None and ms is not None and _is_zero(mu) and _is_zero(ms):
        errs.append(invalid(f"{path}.maxUnavailable", mu, "may not be 0 when `maxSurge` is 0"))
    return errs


def _validate_workload_selector(spec: dict[str, Any], what: str) -> list[FieldError]:
    """selector required, valid, non-empty and matching the template labels."""
    errs = _Errs()
    sel = spec.get("selector")
    if sel is None:
        errs.append(required("spec.selector", ""))
        return errs
    sel_errs = validate_label_selector(sel, "spec.selector")
    errs.extend(sel_errs)
    if isinstance(sel, dict) and not sel.get("matchLabels") and not sel.get("matchExpressions"):
        errs.append(invalid("spec.selector", sel, f"empty selector is invalid for {what}"))
        return errs
    if not sel_errs:
        labels = _map(_map(_map(spec.get("template")).get("metadata")).get("labels"))
        if _selector_matches(sel, labels) is False:
            errs.append(
                invalid(
                    "spec.template.metadata.labels", labels, "`selector` does not match template `labels`"
                )
            )
    return errs


def _validate_deployment(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(required("spec", ""))
        return errs
    errs.nonnegative("spec.replicas", spec.get("replicas"))
    errs.extend(_validate_workload_selector(spec, "deployment"))
    errs.extend(
        _validate_pod_template(
            spec.get("template"), "spec.template", restart_policies=["Always"], replica_set=True
        )
    )
    strategy = _map(spec.get("strategy"))
    stype = strategy.get("type")
    if stype == "Recreate":
        if strategy.get("rollingUpdate") is not None:
            errs.append(
                forbidden(
                    "spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"
                )
            )
    elif stype in ("RollingUpdate", None, ""):
        errs.extend(_validate_rolling(strategy.get("rollingUpdate"), "spec.strategy.rollingUpdate"))
    else:
        errs.append(not_supported("spec.strategy.type", stype, ["Recreate", "RollingUpdate"]))
    for key in ("minReadySeconds", "revisionHistoryLimit", "progressDeadlineSeconds"):
        errs.nonnegative(f"spec.{key}", spec.get(key))
    pds, mrs = spec.get("progressDeadlineSeconds"), spec.get("minReadySeconds") or 0
    if _is_int(pds) and _is_int(mrs) and pds >= 0 and pds <= mrs:
        errs.append(invalid("spec.progressDeadlineSeconds", pds, "must be greater than minReadySeconds"))
    return errs


def _validate_replicaset(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(required("spec", ""))
        return errs
    errs.nonnegative("spec.replicas", spec.get("replicas"))
    errs.nonnegative("spec.minReadySeconds", spec.get("minReadySeconds"))
    # upstream's ReplicaSet message really says "deployment"
    errs.extend(_validate_workload_selector(spec, "deployment"))
    errs.extend(
        _validate_pod_template(
            spec.get("template"), "spec.template", restart_policies=["Always"], replica_set=True
        )
    )
    return errs


def _validate_daemonset(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(required("spec", ""))
        return errs
    errs.extend(_validate_workload_selector(spec, "daemonset"))
    errs.extend(
        _validate_pod_template(
            spec.get("template"), "spec.template", restart_policies=["Always"], replica_set=True
        )
    )
    strategy = _map(spec.get("updateStrategy"))
    stype = strategy.get("type")
    if stype == "OnDelete":
        pass
    elif stype in ("RollingUpdate", None, ""):
        errs.extend(_validate_rolling(strategy.get("rollingUpdate"), "spec.updateStrategy.rollingUpdate"))
    else:
        errs.append(not_supported("spec.updateStrategy.type", stype, ["OnDelete", "RollingUpdate"]))
    errs.nonnegative("spec.minReadySeconds", spec.get("minReadySeconds"))
    errs.nonnegative("spec.revisionHistoryLimit", spec.get("revisionHistoryLimit"))
    return errs


def _validate_job(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(required("spec", ""))
        return errs
    for key in (
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ):
        errs.nonnegative(f"spec.{key}", spec.get(key))
    if spec.get("activeDeadlineSeconds") == 0:
        errs.append(invalid("spec.activeDeadlineSeconds", 0, POSITIVE))
    sel = spec.get("selector")
    if spec.get("manualSelector") is True and sel is None:
        errs.append(required("spec.selector", ""))
    if sel is not None:
        sel_errs = validate_label_selector(sel, "spec.selector")
        errs.extend(sel_errs)
        labels = _map(_map(_map(spec.get("template")).get("metadata")).get("labels"))
        if not sel_errs and _selector_matches(sel, labels) is False:
            errs.append(
                invalid(
                    "spec.template.metadata.labels", labels, "`selector` does not match template `labels`"
                )
            )
    errs.extend(_validate_pod_template(spec.get("template"), "spec.template"))
    rp = _map(_map(spec.get("template")).get("spec")).get("restartPolicy")
    if not rp:
        errs.append(required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif rp in _RESTART_POLICIES and rp not in ("OnFailure", "Never"):
        errs.append(not_supported("spec.template.spec.restartPolicy", rp, ["OnFailure", "Never"]))
    mode = spec.get("completionMode")
    errs.enum("spec.completionMode", mode, ["NonIndexed", "Indexed"])
    if mode == "Indexed" and spec.get("completions") is None:
        errs.append(required("spec.completions", "when completion mode is Indexed"))
    return errs


# ==========================================================================
# services and endpoints


_SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


def _validate_service(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(required("spec", ""))
        return errs
    stype = spec.get("type") or "ClusterIP"
    errs.enum("spec.type", spec.get("type"), _SERVICE_TYPES)
    cluster_ip = spec.get("clusterIP") or ""
    headless = cluster_ip == "None"
    ports = spec.get("ports")
    if ports is not None and not isinstance(ports, list):
        errs.append(invalid("spec.ports", ports, "must be a list"))
        ports = []
    ports = ports or []
    if not ports and not headless and stype != "ExternalName":
        errs.append(required("spec.ports", ""))
    if stype == "ExternalName":
        if cluster_ip:
            errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
        ext = spec.get("externalName")
        if not ext:
            errs.append(required("spec.externalName", ""))
        elif isinstance(ext, str):
            errs.add_msgs("spec.externalName", ext, dns1123_subdomain_errors(ext.rstrip(".")))
    elif cluster_ip and not headless:
        if isinstance(cluster_ip, str):
            errs.add_msgs("spec.clusterIP", cluster_ip, ip_errors(cluster_ip))
        else:
            errs.append(invalid("spec.clusterIP", cluster_ip, "must be a string"))
    cluster_ips = _list(spec.get("clusterIPs"))
    for i, ip in enumerate(cluster_ips):
        if ip != "None":
            errs.add_msgs(f"spec.clusterIPs[{i}]", ip, ip_errors(_str(ip)))
    if cluster_ips and cluster_ip and cluster_ips[0] != cluster_ip:
        errs.append(invalid("spec.clusterIPs", cluster_ips, "first value must match `clusterIP`"))

    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        p = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            errs.append(invalid(p, port, "must be an object"))
            continue
        errs.unique_label_name(f"{p}.name", port.get("name"), names, required_=len(ports) > 1)
        if port.get("port") in (None, 0):
            errs.append(required(f"{p}.port", ""))
        else:
            errs.port(f"{p}.port", port.get("port"))
        errs.enum(f"{p}.protocol", port.get("protocol"), _PROTOCOLS)
        tp = port.get("targetPort")
        if tp not in (None, 0, ""):
            errs.port_num_or_name(f"{p}.targetPort", tp)
        key = (port.get("port"), port.get("protocol") or "TCP")
        if key in seen:
            errs.append(duplicate(p, {"port": key[0], "protocol": key[1]}))
        seen.add(key)
        node_port = port.get("nodePort")
        if node_port not in (None, 0):
            if stype == "ClusterIP":
                errs.append(forbidden(f"{p}.nodePort", "may not be used when `type` is 'ClusterIP'"))
            else:
                errs.port(f"{p}.nodePort", node_port)
    errs.enum("spec.sessionAffinity", spec.get("sessionAffinity"), ["ClientIP", "None"])
    if spec.get("sessionAffinity") == "ClientIP":
        timeout = _map(_map(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        if timeout is not None and (not _is_int(timeout) or not 0 < timeout <= 86400):
            errs.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    "must be greater than 0 and less than 86400",
                )
            )
    selector = spec.get("selector")
    errs.extend(validate_labels(selector, "spec.selector"))
    etp = spec.get("externalTrafficPolicy")
    if etp:
        if stype in ("ClusterIP", "ExternalName"):
            errs.append(
                invalid(
                    "spec.externalTrafficPolicy", etp, "may only be set for externally-accessible services"
                )
            )
        else:
            errs.enum("spec.externalTrafficPolicy", etp, ["Cluster", "Local"])
    errs.enum("spec.internalTrafficPolicy", spec.get("internalTrafficPolicy"), ["Cluster", "Local"])
    errs.enum(
        "spec.ipFamilyPolicy",
        spec.get("ipFamilyPolicy"),
        ["PreferDualStack", "RequireDualStack", "SingleStack"],
    )
    for i, fam in enumerate(_list(spec.get("ipFamilies"))):
        errs.enum(f"spec.ipFamilies[{i}]", fam, ["IPv4", "IPv6"])
    for i, ip in enumerate(_list(spec.get("externalIPs"))):
        errs.add_msgs(f"spec.externalIPs[{i}]", ip, ip_errors(_str(ip)))
    return errs


def _validate_endpoint_ports(ports: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    plist = _list(ports)
    names: set[str] = set()
    for i, port in enumerate(plist):
        p = f"{path}[{i}]"
        if not isinstance(port, dict):
            errs.append(invalid(p, port, "must be an object"))
            continue
        name = port.get("name")
        if name:
            errs.add_msgs(f"{p}.name", name, dns1123_label_errors(_str(name)))
            if name in names:
                errs.append(duplicate(f"{p}.name", name))
            names.add(_str(name))
        elif len(plist) > 1 and path.endswith(".ports") and "subsets" in path:
            errs.append(required(f"{p}.name", ""))
        errs.port(f"{p}.port", port.get("port"))
        errs.enum(f"{p}.protocol", port.get("protocol"), _PROTOCOLS)
    return errs


def _validate_endpoints(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    for i, subset in enumerate(_list(obj.get("subsets"))):
        sp = f"subsets[{i}]"
        subset = _map(subset)
        for kind in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(_list(subset.get(kind))):
                ip = _map(addr).get("ip")
                if not ip:
                    errs.append(required(f"{sp}.{kind}[{j}].ip", ""))
                else:
                    errs.add_msgs(f"{sp}.{kind}[{j}].ip", ip, ip_errors(_str(ip)))
        errs.extend(_validate_endpoint_ports(subset.get("ports"), f"{sp}.ports"))
    return errs


_ADDRESS_TYPES = ["FQDN", "IPv4", "IPv6"]


def _validate_endpointslice(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    at = obj.get("addressType")
    if not at:
        errs.append(required("addressType", ""))
    else:
        errs.enum("addressType", at, _ADDRESS_TYPES)
    endpoints = _list(obj.get("endpoints"))
    if len(endpoints) > 1000:
        errs.append(too_many("endpoints", len(endpoints), 1000))
    check = {"IPv4": _ipv4_errors, "IPv6": _ipv6_errors, "FQDN": dns1123_subdomain_errors}.get(_str(at))
    for i, ep in enumerate(endpoints):
        p = f"endpoints[{i}]"
        if not isinstance(ep, dict):
            errs.append(invalid(p, ep, "must be an object"))
            continue
        addrs = _list(ep.get("addresses"))
        if not addrs:
            errs.append(required(f"{p}.addresses", "must contain at least 1 address"))
        elif len(addrs) > 100:
            errs.append(too_many(f"{p}.addresses", len(addrs), 100))
        for j, a in enumerate(addrs):
            if check is not None:
                errs.add_msgs(f"{p}.addresses[{j}]", a, check(_str(a)))
        for key in ("ready", "serving", "terminating"):
            v = _map(ep.get("conditions")).get(key)
            if v is not None and not isinstance(v, bool):
                errs.append(invalid(f"{p}.conditions.{key}", v, "must be a boolean"))
        if ep.get("nodeName"):
            errs.add_msgs(f"{p}.nodeName", ep["nodeName"], dns1123_subdomain_errors(_str(ep["nodeName"])))
    ports = _list(obj.get("ports"))
    if len(ports) > 100:
        errs.append(too_many("ports", len(ports), 100))
    errs.extend(_validate_endpoint_ports(ports, "ports"))
    return errs


# ==========================================================================
# config and the rest


MAX_SECRET_SIZE = 1024 * 1024
MAX_CONFIGMAP_SIZE = 1024 * 1024


def _validate_configmap(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    total = 0
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        errs.append(invalid("data", data, "must be a map of keys to string values"))
    for k, v in _map(data).items():
        errs.add_msgs(f"data[{k}]", k, config_map_key_errors(k))
        if not isinstance(v, str):
            errs.append(invalid(f"data[{k}]", v, "must be a string"))
        else:
            total += len(v.encode())
    binary = obj.get("binaryData")
    for k, v in _map(binary).items():
        errs.add_msgs(f"binaryData[{k}]", k, config_map_key_errors(k))
        if k in _map(data):
            errs.append(invalid(f"binaryData[{k}]", k, "duplicate of key present in data"))
        decoded = _b64_len(v)
        if decoded is None:
            errs.append(invalid(f"binaryData[{k}]", OMIT, "must be base64-encoded data"))
        else:
            total += decoded
    if total > MAX_CONFIGMAP_SIZE:
        errs.append(too_long("data", MAX_CONFIGMAP_SIZE))
    return errs


def _b64_len(v: Any) -> int | None:
    if not isinstance(v, str):
        return None
    try:
        return len(base64.b64decode(v, validate=True))
    except (binascii.Error, ValueError):
        return None


_SECRET_REQUIRED_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _validate_secret(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        errs.append(invalid("data", data, "must be a map of keys to base64-encoded values"))
    data = _map(data)
    total = 0
    for k, v in data.items():
        errs.add_msgs(f"data[{k}]", k, config_map_key_errors(k))
        n = _b64_len(v)
        if n is None:
            errs.append(
                invalid(f"data[{k}]", OMIT, "illegal base64 data: values in data must be base64-encoded")
            )
        else:
            total += n
    if total > MAX_SECRET_SIZE:
        errs.append(too_long("data", MAX_SECRET_SIZE))
    stype = _str(obj.get("type"))
    for key in _SECRET_REQUIRED_KEYS.get(stype, ()):
        if key not in data:
            errs.append(required(f"data[{key}]", ""))
    if stype == "kubernetes.io/basic-auth" and "username" not in data and "password" not in data:
        errs.append(required("data[username]", ""))
        errs.append(required("data[password]", ""))
    if stype == "kubernetes.io/service-account-token":
        ann = _map(_map(obj.get("metadata")).get("annotations"))
        if not ann.get("kubernetes.io/service-account.name"):
            errs.append(required("metadata.annotations[kubernetes.io/service-account.name]", ""))
    return errs


def _validate_namespace(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    for f in _list(_map(obj.get("spec")).get("finalizers")):
        errs.extend(_validate_finalizer_name(f, "spec.finalizers"))
    return errs


def _validate_node(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = _map(obj.get("spec"))
    if spec.get("podCIDR"):
        errs.add_msgs("spec.podCIDR", spec["podCIDR"], _cidr_errors(_str(spec["podCIDR"])))
    cidrs = _list(spec.get("podCIDRs"))
    for i, c in enumerate(cidrs):
        errs.add_msgs(f"spec.podCIDRs[{i}]", c, _cidr_errors(_str(c)))
    if cidrs and spec.get("podCIDR") and cidrs[0] != spec["podCIDR"]:
        errs.append(invalid("spec.podCIDRs", cidrs, "first value must match `podCIDR`"))
    seen: set[tuple[str, str]] = set()
    for i, t in enumerate(_list(spec.get("taints"))):
        p = f"spec.taints[{i}]"
        t = _map(t)
        key, effect = _str(t.get("key")), _str(t.get("effect"))
        if not key:
            errs.append(required(f"{p}.key", ""))
        else:
            errs.add_msgs(f"{p}.key", key, qualified_name_errors(key))
        if t.get("value"):
            errs.add_msgs(f"{p}.value", t["value"], label_value_errors(_str(t["value"])))
        errs.enum(f"{p}.effect", effect, _TAINT_EFFECTS, required_if_empty=True)
        if (key, effect) in seen:
            errs.append(duplicate(p, f"{key}:{effect}"))
        seen.add((key, effect))
    return errs


def _validate_event(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict) or not involved:
        errs.append(required("involvedObject", ""))
        return errs
    event_ns = _str(_map(obj.get("metadata")).get("namespace"))
    obj_ns = _str(involved.get("namespace"))
    if obj_ns:
        if obj_ns != event_ns:
            errs.append(invalid("involvedObject.namespace", obj_ns, "does not match event.namespace"))
    elif event_ns not in ("", "default"):
        errs.append(invalid("involvedObject.namespace", obj_ns, "does not match event.namespace"))
    errs.nonnegative("count", obj.get("count"))
    return errs


def _validate_lease(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    spec = _map(obj.get("spec"))
    errs.positive("spec.leaseDurationSeconds", spec.get("leaseDurationSeconds"))
    errs.nonnegative("spec.leaseTransitions", spec.get("leaseTransitions"))
    return errs


def _validate_service_account(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    for i, s in enumerate(_list(obj.get("secrets"))):
        name = _map(s).get("name")
        if name:
            errs.add_msgs(f"secrets[{i}].name", name, dns1123_subdomain_errors(_str(name)))
    return errs


# ==========================================================================
# rbac.authorization.k8s.io (pkg/apis/rbac/validation)

RBAC_GROUP = "rbac.authorization.k8s.io"


def path_segment_name_errors(v: str) -> list[str]:
    """path.IsValidPathSegmentName: RBAC object names may be anything that is one URL path segment."""
    if v in (".", ".."):
        return [f"may not be '{v}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in v]


def _validate_policy_rules(rules: Any, namespaced: bool) -> list[FieldError]:
    errs = _Errs()
    if rules is None:
        return errs
    if not isinstance(rules, list):
        return [invalid("rules", rules, "must be a list")]
    for i, rule in enumerate(rules):
        p = f"rules[{i}]"
        if not isinstance(rule, dict):
            errs.append(invalid(p, rule, "must be an object"))
            continue
        if not _list(rule.get("verbs")):
            errs.append(required(f"{p}.verbs", "verbs must contain at least one value"))
        urls = _list(rule.get("nonResourceURLs"))
        if urls:
            if namespaced:
                errs.append(invalid(f"{p}.nonResourceURLs", urls, "namespaced rules cannot apply to non-resource URLs"))
            if _list(rule.get("apiGroups")) or _list(rule.get("resources")) or _list(rule.get("resourceNames")):
                errs.append(invalid(f"{p}.nonResourceURLs", urls,
                                    "rules cannot apply to both regular resources and non-resource URLs"))
            continue
        if not _list(rule.get("apiGroups")):
            errs.append(required(f"{p}.apiGroups", "resource rules must supply at least one api group"))
        if not _list(rule.get("resources")):
            errs.append(required(f"{p}.resources", "resource rules must supply at least one resource"))
    return errs


def _validate_role(obj: dict[str, Any]) -> list[FieldError]:
    return _validate_policy_rules(obj.get("rules"), True)


def _validate_cluster_role(obj: dict[str, Any]) -> list[FieldError]:
    errs = _Errs(_validate_policy_rules(obj.get("rules"), False))
    agg = obj.get("aggregationRule")
    if isinstance(agg, dict):
        selectors = _list(agg.get("clusterRoleSelectors"))
        if not selectors:
            errs.append(required("aggregationRule.clusterRoleSelectors",
                                 "at least one clusterRoleSelector required if aggregationRule is non-nil"))
        for i, sel in enumerate(selectors):
            errs.extend(validate_label_selector(sel, f"aggregationRule.clusterRoleSelectors[{i}]"))
    return errs


def _validate_subjects(subjects: Any, namespaced: bool) -> list[FieldError]:
    errs = _Errs()
    for i, subject in enumerate(_list(subjects)):
        p = f"subjects[{i}]"
        if not isinstance(subject, dict):
            errs.append(invalid(p, subject, "must be an object"))
            continue
        name, kind, group = _str(subject.get("name")), subject.get("kind"), _str(subject.get("apiGroup"))
        if not name:
            errs.append(required(f"{p}.name", ""))
        if kind == "ServiceAccount":
            if name:
                errs.add_msgs(f"{p}.name", name, dns1123_subdomain_errors(name))
            if group:
                errs.append(not_supported(f"{p}.apiGroup", group, [""]))
            if not namespaced and not subject.get("namespace"):
                errs.append(required(f"{p}.namespace", ""))
        elif kind in ("User", "Group"):
            if group != RBAC_GROUP:
                errs.append(not_supported(f"{p}.apiGroup", group, [RBAC_GROUP]))
        else:
            errs.append(not_supported(f"{p}.kind", kind if kind is not None else "", ["ServiceAccount", "User", "Group"]))
    return errs


def _validate_role_ref(ref: Any, kinds: list[str]) -> list[FieldError]:
    errs = _Errs()
    ref = _map(ref)
    group = _str(ref.get("apiGroup"))
    if group != RBAC_GROUP:
        errs.append(not_supported("roleRef.apiGroup", group, [RBAC_GROUP]))
    if ref.get("kind") not in kinds:
        errs.append(not_supported("roleRef.kind", _str(ref.get("kind")), kinds))
    name = _str(ref.get("name"))
    if not name:
        errs.append(required("roleRef.name", ""))
    else:
        errs.add_msgs("roleRef.name", name, path_segment_name_errors(name))
    return errs


def _validate_role_binding(obj: dict[str, Any]) -> list[FieldError]:
    return _validate_role_ref(obj.get("roleRef"), ["Role", "ClusterRole"]) + _validate_subjects(
        obj.get("subjects"), True)


def _validate_cluster_role_binding(obj: dict[str, Any]) -> list[FieldError]:
    return _validate_role_ref(obj.get("roleRef"), ["ClusterRole"]) + _validate_subjects(obj.get("subjects"), False)


def _go_role_ref(ref: Any) -> str:
    """A roleRef the way Go's %#v prints the internal type, as upstream's message shows it."""
    ref = _map(ref)
    return (f"rbac.RoleRef{{APIGroup:{_go_quote(_str(ref.get('apiGroup')))}, Kind:{_go_quote(_str(ref.get('kind')))}, "
            f"Name:{_go_quote(_str(ref.get('name')))}}}")


def _validate_binding_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    if _map(new.get("roleRef")) != _map(old.get("roleRef")):
        return [invalid("roleRef", OMIT, f"{_go_role_ref(new.get('roleRef'))}: cannot change roleRef")]
    return []


# ==========================================================================
# entry points


@dataclass(frozen=True)
class _Rules:
    namespaced: bool
    name_fn: NameFn
    body: Callable[[dict[str, Any]], list[FieldError]] | None = None


_RULES: dict[str, _Rules] = {
    "namespaces": _Rules(False, dns1123_label_errors, _validate_namespace),
    "nodes": _Rules(False, dns1123_subdomain_errors, _validate_node),
    "pods": _Rules(True, dns1123_subdomain_errors, _validate_pod),
    "services": _Rules(True, dns1035_label_errors, _validate_service),
    "endpoints": _Rules(True, dns1123_subdomain_errors, _validate_endpoints),
    "configmaps": _Rules(True, dns1123_subdomain_errors, _validate_configmap),
    "secrets": _Rules(True, dns1123_subdomain_errors, _validate_secret),
    "events": _Rules(True, dns1123_subdomain_errors, _validate_event),
    "serviceaccounts": _Rules(True, dns1123_subdomain_errors, _validate_service_account),
    "deployments": _Rules(True, dns1123_subdomain_errors, _validate_deployment),
    "replicasets": _Rules(True, dns1123_subdomain_errors, _validate_replicaset),
    "daemonsets": _Rules(True, dns1123_subdomain_errors, _validate_daemonset),
    "jobs": _Rules(True, dns1123_subdomain_errors, _validate_job),
    "leases": _Rules(True, dns1123_subdomain_errors, _validate_lease),
    "endpointslices": _Rules(True, dns1123_subdomain_errors, _validate_endpointslice),
    "roles": _Rules(True, path_segment_name_errors, _validate_role),
    "clusterroles": _Rules(False, path_segment_name_errors, _validate_cluster_role),
    "rolebindings": _Rules(True, path_segment_name_errors, _validate_role_binding),
    "clusterrolebindings": _Rules(False, path_segment_name_errors, _validate_cluster_role_binding),
}


def _rules(resource: str) -> _Rules:
    rules = _RULES.get(resource)
    if rules is None:
        raise KeyError(f"no validation rules for resource {resource!r}")
    return rules


def validate_object(resource: str, obj: dict[str, Any]) -> list[FieldError]:
    """Validate an object for create. ``resource`` is the plural name ("pods")."""
    rules = _rules(resource)
    if not isinstance(obj, dict):
        return [invalid("", obj, "must be a JSON object")]
    errs = _Errs(validate_object_meta(obj.get("metadata"), rules.namespaced, rules.name_fn))
    if rules.body is not None:
        errs.extend(rules.body(obj))
    return list(errs)


# ---- updates


_POD_UPDATABLE = (
    "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
    "`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def _spec_diff(old: Any, new: Any, path: str, out: list[str], limit: int = 10) -> None:
    """A short human diff: the paths that differ, with old and new values."""
    if len(out) >= limit or old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _spec_diff(old.get(k), new.get(k), f"{path}.{k}", out, limit)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _spec_diff(a, b, f"{path}[{i}]", out, limit)
        return
    out.append(f"  {path}: {_render_value(old)} -> {_render_value(new)}")


def _validate_pod_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    nspec, ospec = _map(new.get("spec")), _map(old.get("spec"))
    for key in ("containers", "initContainers"):
        if len(_list(nspec.get(key))) != len(_list(ospec.get(key))):
            errs.append(forbidden(f"spec.{key}", "pod updates may not add or remove containers"))
            return errs
    munged = copy.deepcopy(nspec)
    # images may change
    for key in ("containers", "initContainers"):
        for nc, oc in zip(_list(munged.get(key)), _list(ospec.get(key)), strict=True):
            if isinstance(nc, dict) and isinstance(oc, dict) and "image" in oc:
                nc["image"] = oc["image"]
    # activeDeadlineSeconds may be added or lowered, never removed or raised
    new_ads, old_ads = nspec.get("activeDeadlineSeconds"), ospec.get("activeDeadlineSeconds")
    if old_ads is not None:
        if new_ads is None:
            errs.append(
                invalid(
                    "spec.activeDeadlineSeconds", None, "must not update from a positive integer to nil value"
                )
            )
        elif _is_int(new_ads) and _is_int(old_ads) and new_ads > old_ads:
            errs.append(
                invalid("spec.activeDeadlineSeconds", new_ads, "must be less than or equal to previous value")
            )
    if "activeDeadlineSeconds" in ospec:
        munged["activeDeadlineSeconds"] = ospec["activeDeadlineSeconds"]
    else:
        munged.pop("activeDeadlineSeconds", None)
    # tolerations: only additions (existing ones may only change tolerationSeconds)
    new_tol, old_tol = _list(nspec.get("tolerations")), _list(ospec.get("tolerations"))
    for i, ot in enumerate(old_tol):
        if not isinstance(ot, dict):
            continue
        strip = {k: v for k, v in ot.items() if k != "tolerationSeconds"}
        if not any(
            isinstance(nt, dict) and {k: v for k, v in nt.items() if k != "tolerationSeconds"} == strip
            for nt in new_tol
        ):
            errs.append(
                forbidden(
                    f"spec.tolerations[{i}]",
                    "existing toleration can not be modified except its tolerationSeconds",
                )
            )
    if "tolerations" in ospec:
        munged["tolerations"] = ospec["tolerations"]
    else:
        munged.pop("tolerations", None)
    # terminationGracePeriodSeconds: a negative value may be fixed to 1
    ntg, otg = nspec.get("terminationGracePeriodSeconds"), ospec.get("terminationGracePeriodSeconds")
    if _is_int(otg) and otg < 0 and ntg == 1:
        munged["terminationGracePeriodSeconds"] = otg
    # ephemeral containers change through their own subresource
    if "ephemeralContainers" in ospec:
        munged["ephemeralContainers"] = ospec["ephemeralContainers"]
    else:
        munged.pop("ephemeralContainers", None)
    if munged != ospec:
        diff: list[str] = []
        _spec_diff(ospec, munged, "spec", diff)
        detail = f"pod updates may not change fields other than {_POD_UPDATABLE}"
        if diff:
            detail += "\n" + "\n".join(diff)
        errs.append(forbidden("spec", detail))
    return errs


def _validate_service_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    nspec, ospec = _map(new.get("spec")), _map(old.get("spec"))
    if "ExternalName" in (nspec.get("type"), ospec.get("type")):
        return errs  # moving to/from ExternalName releases or allocates the IP
    old_ip, new_ip = ospec.get("clusterIP") or "", nspec.get("clusterIP") or ""
    if old_ip and new_ip != old_ip:
        errs.append(immutable("spec.clusterIP", new_ip))
    old_ips, new_ips = _list(ospec.get("clusterIPs")), _list(nspec.get("clusterIPs"))
    if old_ips and new_ips and new_ips[0] != old_ips[0]:
        errs.append(invalid("spec.clusterIPs[0]", new_ips[0], "may not change once set"))
    return errs


def _validate_selector_immutable(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    nsel = _map(new.get("spec")).get("selector")
    osel = _map(old.get("spec")).get("selector")
    if _normal_selector(nsel) != _normal_selector(osel):
        return [immutable("spec.selector", nsel)]
    return []


def _normal_selector(sel: Any) -> Any:
    if not isinstance(sel, dict):
        return sel
    return {
        "matchLabels": sel.get("matchLabels") or {},
        "matchExpressions": sel.get("matchExpressions") or [],
    }


def _validate_job_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs(_validate_selector_immutable(new, old))
    nspec, ospec = _map(new.get("spec")), _map(old.get("spec"))
    if nspec.get("template") != ospec.get("template"):
        errs.append(immutable("spec.template", nspec.get("template")))
    if nspec.get("completionMode") != "Indexed" and nspec.get("completions") != ospec.get("completions"):
        errs.append(immutable("spec.completions", nspec.get("completions")))
    if nspec.get("completionMode") != ospec.get("completionMode"):
        errs.append(immutable("spec.completionMode", nspec.get("completionMode")))
    return errs


def _validate_immutable_data(
    new: dict[str, Any], old: dict[str, Any], data_keys: tuple[str, ...]
) -> list[FieldError]:
    errs = _Errs()
    if old.get("immutable") is True:
        if new.get("immutable") is not True:
            errs.append(forbidden("immutable", "field is immutable when `immutable` is set"))
        for key in data_keys:
            if (new.get(key) or {}) != (old.get(key) or {}):
                errs.append(forbidden(key, "field is immutable when `immutable` is set"))
    return errs


def _validate_secret_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs(_validate_immutable_data(new, old, ("data",)))
    if (new.get("type") or "Opaque") != (old.get("type") or "Opaque"):
        errs.append(immutable("type", new.get("type")))
    return errs


def _validate_configmap_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    return _validate_immutable_data(new, old, ("data", "binaryData"))


def _validate_node_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    nspec, ospec = _map(new.get("spec")), _map(old.get("spec"))
    old_cidrs = _list(ospec.get("podCIDRs")) or ([ospec["podCIDR"]] if ospec.get("podCIDR") else [])
    new_cidrs = _list(nspec.get("podCIDRs")) or ([nspec["podCIDR"]] if nspec.get("podCIDR") else [])
    if old_cidrs and new_cidrs != old_cidrs:
        errs.append(forbidden("spec.podCIDRs", 'node updates may not change podCIDR except from "" to valid'))
    if ospec.get("providerID") and nspec.get("providerID") != ospec.get("providerID"):
        errs.append(
            forbidden("spec.providerID", 'node updates may not change providerID except from "" to valid')
        )
    return errs


def _validate_endpointslice_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    if new.get("addressType") != old.get("addressType"):
        return [immutable("addressType", new.get("addressType"))]
    return []


_UPDATE_RULES: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[FieldError]]] = {
    "pods": _validate_pod_update,
    "services": _validate_service_update,
    "deployments": _validate_selector_immutable,
    "replicasets": _validate_selector_immutable,
    "daemonsets": _validate_selector_immutable,
    "jobs": _validate_job_update,
    "secrets": _validate_secret_update,
    "configmaps": _validate_configmap_update,
    "nodes": _validate_node_update,
    "endpointslices": _validate_endpointslice_update,
    "rolebindings": _validate_binding_update,
    "clusterrolebindings": _validate_binding_update,
}


def validate_update(resource: str, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """validate_object(new) plus the rules about what may change."""
    errs = validate_object(resource, new)
    if not isinstance(new, dict) or not isinstance(old, dict):
        return errs
    errs.extend(validate_object_meta_update(new.get("metadata"), old.get("metadata")))
    rule = _UPDATE_RULES.get(resource)
    if rule is not None:
        errs.extend(rule(new, old))
    return errs


# ---- status


_CONDITION_STATUSES = ["False", "True", "Unknown"]
_POD_PHASES = ["Pending", "Running", "Succeeded", "Failed", "Unknown"]


def _validate_conditions(conditions: Any, path: str) -> list[FieldError]:
    errs = _Errs()
    if conditions is None:
        return errs
    if not isinstance(conditions, list):
        errs.append(invalid(path, conditions, "must be a list"))
        return errs
    for i, c in enumerate(conditions):
        p = f"{path}[{i}]"
        if not isinstance(c, dict):
            errs.append(invalid(p, c, "must be an object"))
            continue
        if not c.get("type"):
            errs.append(required(f"{p}.type", ""))
        errs.enum(f"{p}.status", c.get("status"), _CONDITION_STATUSES, required_if_empty=True)
    return errs


def _validate_counts(status: dict[str, Any], keys: tuple[str, ...]) -> list[FieldError]:
    errs = _Errs()
    for key in keys:
        errs.nonnegative(f"status.{key}", status.get(key))
    return errs


def _status_pods(status: dict[str, Any], old_status: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    phase = status.get("phase")
    errs.enum("status.phase", phase, _POD_PHASES)
    old_phase = old_status.get("phase")
    if old_phase in ("Succeeded", "Failed") and phase != old_phase:
        errs.append(invalid("status.phase", phase, f"may not transition from terminal phase {old_phase}"))
    for key in ("podIP", "hostIP"):
        if status.get(key):
            errs.add_msgs(f"status.{key}", status[key], ip_errors(_str(status[key])))
    for key in ("podIPs", "hostIPs"):
        for i, entry in enumerate(_list(status.get(key))):
            ip = _map(entry).get("ip")
            errs.add_msgs(f"status.{key}[{i}].ip", ip, ip_errors(_str(ip)))
    if status.get("nominatedNodeName"):
        nn = status["nominatedNodeName"]
        errs.add_msgs("status.nominatedNodeName", nn, dns1123_subdomain_errors(_str(nn)))
    errs.enum("status.qosClass", status.get("qosClass"), ["BestEffort", "Burstable", "Guaranteed"])
    return errs


def _status_nodes(status: dict[str, Any], old_status: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    for kind in ("capacity", "allocatable"):
        for name, raw in _map(status.get(kind)).items():
            try:
                if parse_quantity(raw) < 0:
                    errs.append(invalid(f"status.{kind}[{name}]", raw, NONNEGATIVE))
            except QuantityError as e:
                errs.append(invalid(f"status.{kind}[{name}]", raw, str(e)))
    for i, a in enumerate(_list(status.get("addresses"))):
        if not _map(a).get("type"):
            errs.append(required(f"status.addresses[{i}].type", ""))
    return errs


def _ready_le(status: dict[str, Any], small: str, big: str) -> list[FieldError]:
    s, b = status.get(small), status.get(big)
    if _is_int(s) and _is_int(b) and s > b:
        return [invalid(f"status.{small}", s, f"cannot be greater than status.{big}")]
    return []


def _status_deployments(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    keys = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas",
            "unavailableReplicas", "collisionCount")  # fmt: skip
    return (
        _validate_counts(status, keys)
        + _ready_le(status, "readyReplicas", "replicas")
        + _ready_le(status, "availableReplicas", "replicas")
        + _ready_le(status, "availableReplicas", "readyReplicas")
    )


def _status_replicasets(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    keys = ("observedGeneration", "replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas")
    return (
        _validate_counts(status, keys)
        + _ready_le(status, "fullyLabeledReplicas", "replicas")
        + _ready_le(status, "readyReplicas", "replicas")
        + _ready_le(status, "availableReplicas", "replicas")
        + _ready_le(status, "availableReplicas", "readyReplicas")
    )


def _status_daemonsets(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    keys = ("observedGeneration", "currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled",
            "numberReady", "updatedNumberScheduled", "numberAvailable", "numberUnavailable", "collisionCount")  # fmt: skip
    return _validate_counts(status, keys)


def _status_jobs(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    return _validate_counts(status, ("active", "succeeded", "failed", "ready", "terminating"))


def _status_namespaces(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    errs.enum("status.phase", status.get("phase"), ["Active", "Terminating"])
    return errs


def _status_services(status: dict[str, Any], _old: dict[str, Any]) -> list[FieldError]:
    errs = _Errs()
    for i, ing in enumerate(_list(_map(status.get("loadBalancer")).get("ingress"))):
        ip = _map(ing).get("ip")
        if ip:
            errs.add_msgs(f"status.loadBalancer.ingress[{i}].ip", ip, ip_errors(_str(ip)))
    return errs


_STATUS_RULES: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[FieldError]]] = {
    "pods": _status_pods,
    "nodes": _status_nodes,
    "deployments": _status_deployments,
    "replicasets": _status_replicasets,
    "daemonsets": _status_daemonsets,
    "jobs": _status_jobs,
    "namespaces": _status_namespaces,
    "services": _status_services,
}


def validate_status_update(resource: str, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """Checks for a write to the status subresource (the spec is the stored one's)."""
    _rules(resource)
    if not isinstance(new, dict):
        return [invalid("", new, "must be a JSON object")]
    errs = _Errs(validate_object_meta_update(new.get("metadata"), _map(old).get("metadata")))
    status = new.get("status")
    if status is None:
        return list(errs)
    if not isinstance(status, dict):
        errs.append(invalid("status", status, "must be an object"))
        return list(errs)
    errs.extend(_validate_conditions(status.get("conditions"), "status.conditions"))
    rule = _STATUS_RULES.get(resource)
    if rule is not None:
        errs.extend(rule(status, _map(_map(old).get("status"))))
    return list(errs)
