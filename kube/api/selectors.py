"""Label and field selectors, as in ``?labelSelector=`` / ``?fieldSelector=``
and ``metav1.LabelSelector`` (matchLabels + matchExpressions).

Label selector string syntax (apimachinery ``pkg/labels``)::

    app=web,tier!=db,env in (prod, qa),!legacy,release,replicas>2

Requirements are ANDed. ``key=`` (or ``key==``) means "the label is set to the
empty string" (upstream accepts an empty exact value). ``key`` alone is
"exists", ``!key`` "does not exist"; ``!=`` and ``notin`` also match objects
without the label. ``gt``/``lt`` (``>``/``<``) compare integers, as upstream.

Field selectors (apimachinery ``pkg/fields``) are ``field=value``,
``field==value`` and ``field!=value`` terms separated by commas; a backslash
escapes ``,``, ``=``, ``!`` and ``\\`` in values.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SelectorError",
    "Requirement",
    "LabelSelector",
    "parse_label_selector",
    "label_selector_from_dict",
    "selector_from_match_labels",
    "FieldSelector",
    "parse_field_selector",
    "field_value",
    "FIELD_SELECTORS",
    "label_key_errors",
    "label_value_errors",
]


class SelectorError(ValueError):
    """A selector that cannot be parsed or is not valid."""


# --------------------------------------------------------------------------
# label key / value rules (kept here so selectors do not depend on validation)

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")


def label_key_errors(key: str) -> list[str]:
    """Short reasons a label key is not a qualified name ([prefix/]name); [] when valid."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name must be at most one '/'-separated prefix and a name"]
    errs: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix):
            errs.append("prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters")
    if not name:
        errs.append("name part must be non-empty")
    else:
        if len(name) > 63:
            errs.append("name part must be no more than 63 characters")
        if not _QNAME_RE.match(name):
            errs.append(
                "name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character"
            )
    return errs


def label_value_errors(value: str) -> list[str]:
    """Short reasons a label value is invalid; [] when valid (the empty string is valid)."""
    errs: list[str] = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if value and not _QNAME_RE.match(value):
        errs.append(
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return errs


# --------------------------------------------------------------------------
# label selectors

# operator names as upstream's selection.Operator
EQUALS, DOUBLE_EQUALS, NOT_EQUALS = "=", "==", "!="
IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "in", "notin", "exists", "!"
GREATER_THAN, LESS_THAN = "gt", "lt"

_BINARY_OPS = (IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS, GREATER_THAN, LESS_THAN)


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of the constants above
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        errs = label_key_errors(self.key)
        if errs:
            raise SelectorError(f'invalid label key "{self.key}": {"; ".join(errs)}')
        op, n = self.operator, len(self.values)
        if op in (IN, NOT_IN):
            if n == 0:
                raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
        elif op in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS):
            if n != 1:
                raise SelectorError("exact-match compatibility requires one single value")
        elif op in (EXISTS, DOES_NOT_EXIST):
            if n != 0:
                raise SelectorError("values set must be empty for exists and does not exist")
        elif op in (GREATER_THAN, LESS_THAN):
            if n != 1 or not _INT_RE.match(self.values[0]):
                raise SelectorError(
                    f"for 'gt', 'lt' operators, exactly one integer value is required (got {list(self.values)})"
                )
        else:
            raise SelectorError(f"operator {op!r} is not recognized")
        if op not in (GREATER_THAN, LESS_THAN):
            for v in self.values:
                verrs = label_value_errors(v)
                if verrs:
                    raise SelectorError(
                        f'invalid label value: "{v}": at key: "{self.key}": {"; ".join(verrs)}'
                    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        present = self.key in labels
        if op in (EQUALS, DOUBLE_EQUALS, IN):
            return present and labels[self.key] in self.values
        if op in (NOT_EQUALS, NOT_IN):
            return not present or labels[self.key] not in self.values
        if op == EXISTS:
            return present
        if op == DOES_NOT_EXIST:
            return not present
        # gt / lt: the label must hold an integer
        if not present or not _INT_RE.match(labels[self.key]):
            return False
        have, want = int(labels[self.key]), int(self.values[0])
        return have > want if op == GREATER_THAN else have < want

    def __str__(self) -> str:
        op = self.operator
        if op == EXISTS:
            return self.key
        if op == DOES_NOT_EXIST:
            return f"!{self.key}"
        if op in (IN, NOT_IN):
            return f"{self.key} {op} ({','.join(sorted(self.values))})"
        if op == GREATER_THAN:
            return f"{self.key}>{self.values[0]}"
        if op == LESS_THAN:
            return f"{self.key}<{self.values[0]}"
        return f"{self.key}{op}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    """An AND of requirements; no requirements matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _make_selector(reqs: list[Requirement]) -> LabelSelector:
    # upstream sorts requirements by key (stable), which also fixes the string form
    return LabelSelector(tuple(sorted(reqs, key=lambda r: r.key)))


# ---- lexer

_SPECIAL = "!=<>(),"


@dataclass
class _Tok:
    kind: str  # "id", "op", "(", ")", ",", "eos"
    text: str
    pos: int


def _lex(s: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
            continue
        if c in "(),":
            toks.append(_Tok(c, c, i))
            i += 1
            continue
        if c in "!=<>":
            two = s[i : i + 2]
            if two in ("==", "!="):
                toks.append(_Tok("op", two, i))
                i += 2
            else:
                toks.append(_Tok("op", c, i))
                i += 1
            continue
        j = i
        while j < n and not s[j].isspace() and s[j] not in _SPECIAL:
            j += 1
        word = s[i:j]
        toks.append(_Tok("op" if word in (IN, NOT_IN) else "id", word, i))
        i = j
    toks.append(_Tok("eos", "", n))
    return toks


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "eos":
            self.i += 1
        return t

    def fail(self, tok: _Tok, expected: str) -> SelectorError:
        found = tok.text if tok.kind != "eos" else "end of string"
        return SelectorError(
            f"unable to parse requirement: found '{found}', expected: {expected} (in label selector {self.text!r})"
        )

    def parse(self) -> LabelSelector:
        reqs: list[Requirement] = []
        if self.peek().kind == "eos":
            return LabelSelector()
        while True:
            reqs.append(self.requirement())
            t = self.take()
            if t.kind == "eos":
                break
            if t.kind != ",":
                raise self.fail(t, "',' or 'end of string'")
            if self.peek().kind == "eos":
                raise self.fail(self.peek(), "identifier after ','")
        return _make_selector(reqs)

    def requirement(self) -> Requirement:
        t = self.take()
        if t.kind == "op" and t.text == "!":
            k = self.take()
            if k.kind != "id":
                raise self.fail(k, "identifier")
            self.check_after_unary()
            return Requirement(k.text, DOES_NOT_EXIST)
        if t.kind != "id":
            raise self.fail(t, "identifier")
        key = t.text
        nxt = self.peek()
        if nxt.kind in (",", "eos"):
            return Requirement(key, EXISTS)
        op_tok = self.take()
        op = op_tok.text
        if op_tok.kind != "op" or op == "!":
            raise self.fail(op_tok, ", ".join(_BINARY_OPS))
        if op in (IN, NOT_IN):
            return Requirement(key, op, self.value_set())
        if op in (">", "<"):
            v = self.take()
            if v.kind != "id":
                raise self.fail(v, "identifier")
            return Requirement(key, GREATER_THAN if op == ">" else LESS_THAN, (v.text,))
        # = == !=: an empty value is allowed when the term ends here
        v = self.peek()
        if v.kind in (",", "eos"):
            return Requirement(key, op, ("",))
        v = self.take()
        if v.kind != "id":
            raise self.fail(v, "identifier")
        return Requirement(key, op, (v.text,))

    def check_after_unary(self) -> None:
        if self.peek().kind not in (",", "eos"):
            raise self.fail(self.peek(), "',' or 'end of string'")

    def value_set(self) -> tuple[str, ...]:
        t = self.take()
        if t.kind != "(":
            raise self.fail(t, "'('")
        values: list[str] = []
        expect_value = True
        while True:
            t = self.take()
            if t.kind == ")":
                if expect_value and values:
                    values.append("")  # "(a,)" : trailing empty value, as upstream
                break
            if t.kind == "id" and expect_value:
                values.append(t.text)
                expect_value = False
            elif t.kind == "," and not expect_value:
                expect_value = True
            elif t.kind == "," and expect_value:
                values.append("")  # "(,a)" or "(a,,b)": empty value
            else:
                raise self.fail(t, "',', ')' or identifier")
        if not values:
            raise self.fail(t, "identifier")
        return tuple(dict.fromkeys(values))


def parse_label_selector(s: str) -> LabelSelector:
    """Parse the ``labelSelector`` query syntax; "" is the empty selector."""
    return _LabelParser(s or "").parse()


_METAV1_OPS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


def label_selector_from_dict(d: Mapping[str, Any] | None) -> LabelSelector:
    """Convert a ``metav1.LabelSelector`` dict. None and {} give the empty selector.

    (Upstream's LabelSelectorAsSelector turns None into "match nothing";
    callers that want that should check for None themselves.)
    """
    if not d:
        return LabelSelector()
    if not isinstance(d, Mapping):
        raise SelectorError("a label selector must be an object with matchLabels and/or matchExpressions")
    reqs: list[Requirement] = []
    match_labels = d.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be a map of label keys to values")
    for k, v in match_labels.items():
        reqs.append(Requirement(str(k), EQUALS, ("" if v is None else str(v),)))
    exprs = d.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError("matchExpressions must be a list")
    for e in exprs:
        if not isinstance(e, Mapping):
            raise SelectorError("each matchExpressions entry must be an object with key, operator and values")
        op_name = e.get("operator")
        if op_name not in _METAV1_OPS:
            raise SelectorError(f'"{op_name}" is not a valid label selector operator')
        values = e.get("values") or []
        if not isinstance(values, list):
            raise SelectorError("matchExpressions values must be a list of strings")
        reqs.append(Requirement(str(e.get("key") or ""), _METAV1_OPS[op_name], tuple(str(v) for v in values)))
    return _make_selector(reqs)


def selector_from_match_labels(labels: Mapping[str, str] | None) -> LabelSelector:
    """A selector from a plain label map (Service spec.selector, ReplicationController)."""
    return label_selector_from_dict({"matchLabels": dict(labels or {})})


# --------------------------------------------------------------------------
# field selectors

_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}

FIELD_SELECTORS: dict[str, set[str]] = {
    "namespaces": _COMMON_FIELDS | {"status.phase"},
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "pods": _COMMON_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "services": set(_COMMON_FIELDS),
    "endpoints": set(_COMMON_FIELDS),
    "configmaps": set(_COMMON_FIELDS),
    "secrets": _COMMON_FIELDS | {"type"},
    "events": _COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "serviceaccounts": set(_COMMON_FIELDS),
    "deployments": set(_COMMON_FIELDS),
    "replicasets": _COMMON_FIELDS | {"status.replicas"},
    "daemonsets": set(_COMMON_FIELDS),
    "jobs": _COMMON_FIELDS | {"status.successful"},
    "leases": set(_COMMON_FIELDS),
    "endpointslices": set(_COMMON_FIELDS),
}

# fields whose missing value reads as a boolean/number rather than ""
_FIELD_ZERO: dict[str, str] = {
    "spec.hostNetwork": "false",
    "spec.unschedulable": "false",
    "status.replicas": "0",
    "status.successful": "0",
}


def _scalar_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float | str):
        return str(v)
    return ""


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The selectable string value of a dotted field path; '' when missing.

    Follows upstream's selectable fields: events' ``source`` is
    ``source.component``, booleans read as "true"/"false".
    """
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _FIELD_ZERO.get(path, "")
        cur = cur[part]
    if path == "source" and isinstance(cur, Mapping):
        return _scalar_text(cur.get("component"))
    if cur is None:
        return _FIELD_ZERO.get(path, "")
    return _scalar_text(cur)


@dataclass(frozen=True)
class FieldSelector:
    requirements: list[tuple[str, str, str]] = field(default_factory=list)  # (field, "="|"!=", value)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for fld, op, want in self.requirements:
            have = field_value(obj, fld)
            if (have == want) != (op == "="):
                return False
        return True

    def fields(self) -> set[str]:
        return {f for f, _, _ in self.requirements}

    def __str__(self) -> str:
        return ",".join(f"{f}{op}{_escape_field_value(v)}" for f, op, v in self.requirements)


def _escape_field_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_unescaped(s: str, sep: str) -> list[str]:
    """Split on sep, honouring backslash escapes (the escapes are kept)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _find_operator(term: str) -> tuple[int, str] | None:
    """Position and text of the first unescaped !=, == or = in a term."""
    i = 0
    while i < len(term):
        c = term[i]
        if c == "\\":
            i += 2
            continue
        if term.startswith("!=", i):
            return i, "!="
        if term.startswith("==", i):
            return i, "=="
        if c == "=":
            return i, "="
        i += 1
    return None


def _unescape_field_value(v: str, term: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(v):
        c = v[i]
        if c == "\\":
            if i + 1 >= len(v):
                raise SelectorError(f"invalid field selector: '{term}': trailing backslash")
            nxt = v[i + 1]
            if nxt not in "\\,=!":
                raise SelectorError(f"invalid field selector: '{term}': invalid escape sequence '\\{nxt}'")
            out.append(nxt)
            i += 2
            continue
        if c in ",=":
            raise SelectorError(f"invalid field selector: '{term}': unescaped '{c}' in value")
        out.append(c)
        i += 1
    return "".join(out)


def parse_field_selector(s: str, allowed: Collection[str] | None = None) -> FieldSelector:
    """Parse ``fieldSelector``; unknown fields (when ``allowed`` is given) are rejected."""
    reqs: list[tuple[str, str, str]] = []
    if not s:
        return FieldSelector([])
    for term in _split_unescaped(s, ","):
        if not term.strip():
            raise SelectorError(f"invalid field selector: {s!r}: empty term")
        found = _find_operator(term)
        if found is None:
            raise SelectorError(f"invalid selector: '{term}'; can't understand '{term}'")
        pos, op = found
        fld = term[:pos].strip()
        value = _unescape_field_value(term[pos + len(op) :], term)
        if not fld:
            raise SelectorError(f"invalid field selector: '{term}': missing field name")
        if allowed is not None and fld not in allowed:
            raise SelectorError(f"field label not supported: {fld}")
        reqs.append((fld, "!=" if op == "!=" else "=", value))
    return FieldSelector(reqs)
