"""Label selectors (string and metav1 forms) and field selectors."""

from __future__ import annotations

from typing import Any

import pytest

from kube.api.selectors import (
    FIELD_SELECTORS,
    SelectorError,
    field_value,
    label_selector_from_dict,
    parse_field_selector,
    parse_label_selector,
    selector_from_match_labels,
)

WEB = {"app": "web", "tier": "fe", "env": "prod", "release": "3"}
DB = {"app": "db", "tier": "db", "env": "qa", "legacy": "yes"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("selector", "web", "db", "bare"),
    [
        ("", True, True, True),
        ("app=web", True, False, False),
        ("app==web", True, False, False),
        ("app!=web", False, True, True),  # != matches objects without the label
        ("app", True, True, False),
        ("!legacy", True, False, True),
        ("env in (prod, qa)", True, True, False),
        ("env in (prod)", True, False, False),
        ("env notin (prod)", False, True, True),
        ("app=web,tier!=db,env in (prod, qa),!legacy,release", True, False, False),
        ("release>2", True, False, False),
        ("release<2", False, False, False),
        ("legacy=", False, False, False),
        ("  app = web ,  tier = fe ", True, False, False),
        ("example.com/role", False, False, False),
    ],
)
def test_label_selector_matching(selector: str, web: bool, db: bool, bare: bool) -> None:
    s = parse_label_selector(selector)
    assert (s.matches(WEB), s.matches(DB), s.matches(BARE)) == (web, db, bare)


def test_empty_value_exact_match() -> None:
    # upstream accepts "key=" / "key==": the label must be set to ""
    for text in ("k=", "k=="):
        s = parse_label_selector(text)
        assert s.matches({"k": ""})
        assert not s.matches({"k": "x"})
        assert not s.matches({})
    assert parse_label_selector("k!=").matches({"k": "x"})


@pytest.mark.parametrize(
    ("selector", "canonical"),
    [
        ("tier!=db,app=web", "app=web,tier!=db"),
        ("env in (qa, prod),!legacy,release", "env in (prod,qa),!legacy,release"),
        ("app==web", "app==web"),
        ("x notin (b,a)", "x notin (a,b)"),
        ("", ""),
    ],
)
def test_label_selector_string_form(selector: str, canonical: str) -> None:
    s = parse_label_selector(selector)
    assert str(s) == canonical
    assert str(parse_label_selector(str(s))) == canonical


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("app===", "found '=', expected: identifier"),
        ("env in (", "expected: ',', ')' or identifier"),
        ("env in prod", "expected: '('"),
        ("a b", "found 'b', expected: in, notin"),
        ("a=b c", "expected: ',' or 'end of string'"),
        ("a,", "identifier"),
        (",a", "found ','"),
        ("x in ()", "expected: identifier"),
        ("!", "identifier"),
        ("!a=b", "',' or 'end of string'"),
        ("bad key/with/slashes=1", "found 'key/with/slashes'"),
        ("a/b/c=1", 'invalid label key "a/b/c"'),
        ("-app=web", 'invalid label key "-app"'),
        ("app=-web-", 'invalid label value: "-web-"'),
        ("app=" + "x" * 64, "invalid label value"),
        ("release>two", "integer"),
        ("in=1", "found 'in'"),
    ],
)
def test_label_selector_syntax_errors(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as e:
        parse_label_selector(selector)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("d", "web", "db"),
    [
        (None, True, True),
        ({}, True, True),
        ({"matchLabels": {"app": "web"}}, True, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["qa", "dev"]}]}, False, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["qa"]}]}, True, False),
        ({"matchExpressions": [{"key": "legacy", "operator": "Exists"}]}, False, True),
        ({"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}, True, False),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}],
            },
            True,
            False,
        ),
    ],
)
def test_label_selector_from_dict(d: Any, web: bool, db: bool) -> None:
    s = label_selector_from_dict(d)
    assert (s.matches(WEB), s.matches(DB)) == (web, db)
    assert s.empty == (not d)


@pytest.mark.parametrize(
    ("d", "fragment"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
            '"Gt" is not a valid label selector operator',
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "values set can't be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn"}]}, "values set can't be empty"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "values set must be empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
            "values set must be empty",
        ),
        ({"matchLabels": {"bad key": "x"}}, "invalid label key"),
        ({"matchLabels": {"app": "bad value"}}, "invalid label value"),
        ({"matchExpressions": "nope"}, "must be a list"),
    ],
)
def test_label_selector_from_dict_errors(d: Any, fragment: str) -> None:
    with pytest.raises(SelectorError) as e:
        label_selector_from_dict(d)
    assert fragment in str(e.value)


def test_selector_from_match_labels() -> None:
    s = selector_from_match_labels({"app": "web"})
    assert s.matches(WEB) and not s.matches(DB)
    assert str(s) == "app=web"
    assert selector_from_match_labels(None).empty


# --------------------------------------------------------------------------
# field selectors

POD = {
    "metadata": {"name": "web-1", "namespace": "default"},
    "spec": {"nodeName": "n1", "restartPolicy": "Always", "hostNetwork": True},
    "status": {"phase": "Running", "podIP": "10.0.0.5"},
}
PENDING = {"metadata": {"name": "web-2", "namespace": "default"}, "spec": {}, "status": {"phase": "Pending"}}


@pytest.mark.parametrize(
    ("selector", "running", "pending"),
    [
        ("", True, True),
        ("metadata.name=web-1", True, False),
        ("metadata.name==web-1", True, False),
        ("metadata.name!=web-1", False, True),
        ("spec.nodeName=", False, True),
        ("spec.nodeName!=", True, False),
        ("status.phase==Running", True, False),
        ("metadata.name=x,spec.nodeName!=,status.phase==Running", False, False),
        ("metadata.namespace=default,status.phase!=Succeeded", True, True),
        ("spec.hostNetwork=true", True, False),
        ("spec.hostNetwork=false", False, True),
    ],
)
def test_field_selector_matching(selector: str, running: bool, pending: bool) -> None:
    fs = parse_field_selector(selector, FIELD_SELECTORS["pods"])
    assert (fs.matches(POD), fs.matches(PENDING)) == (running, pending)


def test_field_selector_requirements_and_escapes() -> None:
    fs = parse_field_selector("metadata.name=x,spec.nodeName!=,status.phase==Running")
    assert fs.requirements == [
        ("metadata.name", "=", "x"),
        ("spec.nodeName", "!=", ""),
        ("status.phase", "=", "Running"),
    ]
    fs = parse_field_selector(r"metadata.name=a\,b\=c")
    assert fs.requirements == [("metadata.name", "=", "a,b=c")]
    assert str(fs) == r"metadata.name=a\,b\=c"


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("foo=bar", "field label not supported: foo"),
        ("spec.containers=x", "field label not supported: spec.containers"),
        ("metadata.name", "can't understand 'metadata.name'"),
        ("=x", "missing field name"),
        ("metadata.name=a,", "empty term"),
        ("metadata.name=a=b", "unescaped '='"),
        ("metadata.name=a\\", "trailing backslash"),
    ],
)
def test_field_selector_errors(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as e:
        parse_field_selector(selector, FIELD_SELECTORS["pods"])
    assert fragment in str(e.value)


def test_field_selector_tables() -> None:
    for plural, fields in FIELD_SELECTORS.items():
        assert {"metadata.name", "metadata.namespace"} <= fields, plural
    assert {"spec.nodeName", "status.phase", "status.podIP", "spec.serviceAccountName"} <= FIELD_SELECTORS[
        "pods"
    ]
    assert {"involvedObject.name", "involvedObject.uid", "reason", "type", "source"} <= FIELD_SELECTORS[
        "events"
    ]
    assert "type" in FIELD_SELECTORS["secrets"]
    assert "spec.unschedulable" in FIELD_SELECTORS["nodes"]
    assert "status.phase" in FIELD_SELECTORS["namespaces"]
    with pytest.raises(SelectorError, match="field label not supported: type"):
        parse_field_selector("type=Opaque", FIELD_SELECTORS["configmaps"])


def test_field_value() -> None:
    assert field_value(POD, "spec.nodeName") == "n1"
    assert field_value(POD, "spec.schedulerName") == ""
    assert field_value(POD, "spec.hostNetwork") == "true"
    assert field_value(PENDING, "spec.hostNetwork") == "false"
    assert field_value({"spec": {}}, "spec.unschedulable") == "false"
    event = {"source": {"component": "kubelet", "host": "n1"}, "involvedObject": {"kind": "Pod", "name": "p"}}
    assert field_value(event, "source") == "kubelet"
    assert field_value(event, "involvedObject.kind") == "Pod"
    assert field_value({"status": {"replicas": 3}}, "status.replicas") == "3"
    assert field_value({"metadata": None}, "metadata.name") == ""
    fs = parse_field_selector("source=kubelet,involvedObject.kind=Pod", FIELD_SELECTORS["events"])
    assert fs.matches(event)
