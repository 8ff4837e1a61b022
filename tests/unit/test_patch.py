"""JSON merge patch, JSON patch and strategic merge patch on plain dicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube.api.patch import PatchError, json_merge_patch, json_patch, parse_pointer, strategic_merge_patch

# --------------------------------------------------------------------------
# RFC 7386: the examples of the RFC's appendix A


@pytest.mark.parametrize(
    ("target", "patch", "want"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_json_merge_patch_rfc7386_examples(target: Any, patch: Any, want: Any) -> None:
    before = copy.deepcopy(target)
    assert json_merge_patch(target, patch) == want
    assert target == before


# --------------------------------------------------------------------------
# RFC 6902


def test_pointer_escapes() -> None:
    assert parse_pointer("") == []
    assert parse_pointer("/a~1b/m~0n/0") == ["a/b", "m~n", "0"]
    with pytest.raises(PatchError):
        parse_pointer("a/b")
    with pytest.raises(PatchError):
        parse_pointer("/a~2")


@pytest.mark.parametrize(
    ("doc", "ops", "want"),
    [
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
        ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/-", "value": 2}], {"foo": [1, 2]}),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/1", "value": 2}], {"foo": [1, 2]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
        ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
        (
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
        ),
        ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
         {"foo": ["all", "cows", "eat", "grass"]}),
        ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
        ({"a/b": 1, "m~n": 2}, [{"op": "replace", "path": "/a~1b", "value": 3}, {"op": "remove", "path": "/m~0n"}],
         {"a/b": 3}),
        ({"baz": "qux", "foo": ["a", 2, "c"]},
         [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
         {"baz": "qux", "foo": ["a", 2, "c"]}),
        ({"a": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
        # kubectl-style label edit
        ({"metadata": {"labels": {"app": "web"}}},
         [{"op": "add", "path": "/metadata/labels/tier", "value": "fe"}, {"op": "remove", "path": "/metadata/labels/app"}],
         {"metadata": {"labels": {"tier": "fe"}}}),
    ],
)  # fmt: skip
def test_json_patch_ok(doc: Any, ops: list[Any], want: Any) -> None:
    before = copy.deepcopy(doc)
    assert json_patch(doc, ops) == want
    assert doc == before


@pytest.mark.parametrize(
    ("doc", "ops"),
    [
        ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}]),
        ({"a": 1}, [{"op": "test", "path": "/a", "value": True}]),  # booleans are not numbers
        ({"a": 1}, [{"op": "test", "path": "/missing", "value": 1}]),
        ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/5", "value": 2}]),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/01", "value": 2}]),
        ({"foo": [1]}, [{"op": "remove", "path": "/foo/-"}]),
        ({"foo": 1}, [{"op": "remove", "path": "/bar"}]),
        ({"foo": 1}, [{"op": "replace", "path": "/bar", "value": 2}]),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        ({"a": 1}, [{"op": "frobnicate", "path": "/a"}]),
        ({"a": 1}, [{"op": "add", "value": 1}]),
        ({"a": 1}, [{"op": "add", "path": "/b"}]),
        ({"a": 1}, [{"op": "copy", "path": "/b"}]),
        ({"a": 1}, {"op": "add"}),
    ],
)
def test_json_patch_errors(doc: Any, ops: Any) -> None:
    before = copy.deepcopy(doc)
    with pytest.raises(PatchError):
        json_patch(doc, ops)
    assert doc == before


def test_json_patch_failed_test_leaves_input_alone() -> None:
    doc = {"a": 1}
    with pytest.raises(PatchError, match="test failed"):
        json_patch(
            doc, [{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 1}]
        )
    assert doc == {"a": 1}


# --------------------------------------------------------------------------
# strategic merge patch


def deployment(containers: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", **meta},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}},
        },
    }


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


TWO = [
    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
    {"name": "sidecar", "image": "side:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
]


def test_smp_kubectl_set_image_keeps_other_container() -> None:
    orig = deployment(copy.deepcopy(TWO))
    before = copy.deepcopy(orig)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                    "containers": [{"name": "sidecar", "image": "side:2"}],
                }
            }
        }
    }
    out = strategic_merge_patch(orig, patch, "Deployment")
    assert [c["name"] for c in containers_of(out)] == ["app", "sidecar"]
    assert containers_of(out)[1] == {
        "name": "sidecar",
        "image": "side:2",
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
    }
    assert containers_of(out)[0] == TWO[0]
    assert orig == before  # inputs untouched
    assert "$setElementOrder/containers" not in out["spec"]["template"]["spec"]


def test_smp_delete_env_var_by_name() -> None:
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "env": [{"name": "A", "$patch": "delete"}]}]}
            }
        }
    }
    out = strategic_merge_patch(deployment(copy.deepcopy(TWO)), patch, "Deployment")
    assert containers_of(out)[0]["env"] == [{"name": "B", "value": "2"}]
    assert len(containers_of(out)) == 2


def test_smp_ports_merge_by_container_port() -> None:
    patch = {
        "spec": {"template": {"spec": {"containers": [
            {"name": "sidecar", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]}
        ]}}}
    }  # fmt: skip
    out = strategic_merge_patch(deployment(copy.deepcopy(TWO)), patch, "Deployment")
    assert containers_of(out)[1]["ports"] == [
        {"containerPort": 80, "protocol": "TCP", "name": "http"},
        {"containerPort": 443},
    ]


def test_smp_new_container_is_appended_and_replace_list_directive() -> None:
    add = {"spec": {"template": {"spec": {"containers": [{"name": "log", "image": "log:1"}]}}}}
    out = strategic_merge_patch(deployment(copy.deepcopy(TWO)), add, "Deployment")
    assert [c["name"] for c in containers_of(out)] == ["app", "sidecar", "log"]
    replace = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}
        }
    }
    out = strategic_merge_patch(deployment(copy.deepcopy(TWO)), replace, "Deployment")
    assert containers_of(out) == [{"name": "only", "image": "x"}]


def test_smp_delete_container_and_missing_merge_key() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "$patch": "delete"}]}}}}
    out = strategic_merge_patch(deployment(copy.deepcopy(TWO)), patch, "Deployment")
    assert [c["name"] for c in containers_of(out)] == ["sidecar"]
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge_patch(
            deployment(copy.deepcopy(TWO)),
            {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}},
            "Deployment",
        )


def test_smp_finalizers_merge_as_set_and_delete_from_primitive_list() -> None:
    orig = deployment([], finalizers=["a", "b"])
    out = strategic_merge_patch(orig, {"metadata": {"finalizers": ["b", "c"]}}, "Deployment")
    assert out["metadata"]["finalizers"] == ["a", "b", "c"]
    out = strategic_merge_patch(
        orig, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "Deployment"
    )
    assert out["metadata"]["finalizers"] == ["b"]
    out = strategic_merge_patch(orig, {"metadata": {"$setElementOrder/finalizers": ["b", "a"]}}, "Deployment")
    assert out["metadata"]["finalizers"] == ["b", "a"]


def test_smp_null_deletes_label_and_maps_merge() -> None:
    orig = deployment([], labels={"app": "web", "tier": "fe"})
    out = strategic_merge_patch(orig, {"metadata": {"labels": {"tier": None, "env": "prod"}}}, "Deployment")
    assert out["metadata"]["labels"] == {"app": "web", "env": "prod"}


def test_smp_map_directives() -> None:
    orig = deployment([])
    # $patch: delete on a map removes it
    out = strategic_merge_patch(
        orig, {"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}}, "Deployment"
    )
    assert out["spec"]["strategy"] == {"type": "RollingUpdate"}
    # $patch: replace takes the map literally
    out = strategic_merge_patch(
        orig, {"spec": {"selector": {"$patch": "replace", "matchLabels": {"x": "y"}}}}, "Deployment"
    )
    assert out["spec"]["selector"] == {"matchLabels": {"x": "y"}}
    # $retainKeys clears the union members that are not listed (kubectl apply Recreate)
    out = strategic_merge_patch(
        orig, {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}, "Deployment"
    )
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(PatchError):
        strategic_merge_patch(
            orig, {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}, "Deployment"
        )
    with pytest.raises(PatchError):
        strategic_merge_patch(orig, {"spec": {"$patch": "explode"}}, "Deployment")


def test_smp_set_element_order_reorders_and_keeps_server_only_items() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "a", "image": "a"},
                {"name": "b", "image": "b"},
                {"name": "c", "image": "c"},
            ]
        },
    }
    out = strategic_merge_patch(
        pod, {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}, "Pod"
    )
    assert [c["name"] for c in out["spec"]["containers"]] == ["c", "a", "b"]
    # "b" is server-only (not in the order list): it stays where it was relative to the others
    out = strategic_merge_patch(
        pod, {"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "c"}]}}, "Pod"
    )
    assert [c["name"] for c in out["spec"]["containers"]] == ["a", "b", "c"]


def test_smp_lists_without_strategy_replace() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [{"name": "a", "image": "a", "args": ["x", "y"]}],
            "tolerations": [{"key": "k1", "operator": "Exists"}],
        },
    }
    out = strategic_merge_patch(
        pod,
        {
            "spec": {
                "tolerations": [{"key": "k2", "operator": "Exists"}],
                "containers": [{"name": "a", "args": ["z"]}],
            }
        },
        "Pod",
    )
    assert out["spec"]["tolerations"] == [{"key": "k2", "operator": "Exists"}]
    assert out["spec"]["containers"][0]["args"] == ["z"]


@pytest.mark.parametrize(
    ("kind", "original", "patch", "want"),
    [
        # Service ports merge by port
        ("Service", {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}},
         {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}},
         {"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        # Node conditions and addresses merge by type; taints replace
        ("Node", {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
                  "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
                             "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}},
         {"spec": {"taints": []},
          "status": {"conditions": [{"type": "Ready", "status": "True"}],
                     "addresses": [{"type": "Hostname", "address": "n1"}]}},
         {"spec": {"taints": []},
          "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}],
                     "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]}}),
        # Pod status conditions merge by type (the agent's status patch)
        ("Pod", {"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}},
         {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
         {"status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]}}),
        # ownerReferences merge by uid
        ("ConfigMap", {"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}},
         {"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}},
         {"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}}),
        # ConfigMap data is a map: merge, null deletes
        ("ConfigMap", {"data": {"a": "1", "b": "2"}}, {"data": {"a": None, "c": "3"}}, {"data": {"b": "2", "c": "3"}}),
        # volumes merge by name, volumeMounts by mountPath
        ("Pod", {"spec": {"volumes": [{"name": "v1", "emptyDir": {}}],
                          "containers": [{"name": "c", "volumeMounts": [{"name": "v1", "mountPath": "/a"}]}]}},
         {"spec": {"volumes": [{"name": "v2", "emptyDir": {}}],
                   "containers": [{"name": "c", "volumeMounts": [{"name": "v2", "mountPath": "/a"}]}]}},
         {"spec": {"volumes": [{"name": "v1", "emptyDir": {}}, {"name": "v2", "emptyDir": {}}],
                   "containers": [{"name": "c", "volumeMounts": [{"name": "v2", "mountPath": "/a"}]}]}}),
        # DaemonSet/Job templates are pod specs too
        ("Job", {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}},
         {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}},
         {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}}}),
        # unknown kind: lists replace, maps merge
        ("Widget", {"spec": {"items": [1, 2], "m": {"a": 1}}}, {"spec": {"items": [3], "m": {"b": 2}}},
         {"spec": {"items": [3], "m": {"a": 1, "b": 2}}}),
        # a directive inside a replaced value never ends up in the result
        ("Pod", {"spec": {}}, {"spec": {"affinity": {"$patch": "replace", "nodeAffinity": {}}}},
         {"spec": {"affinity": {"nodeAffinity": {}}}}),
        # a new container is built from the patch, directives stripped
        ("Pod", {"spec": {"containers": []}},
         {"spec": {"containers": [{"name": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "$patch": "delete"}]}]}},
         {"spec": {"containers": [{"name": "x", "env": [{"name": "A", "value": "1"}]}]}}),
    ],
)  # fmt: skip
def test_smp_table(kind: str, original: dict[str, Any], patch: dict[str, Any], want: dict[str, Any]) -> None:
    assert strategic_merge_patch(original, patch, kind) == want


def test_smp_upstream_doc_example_patch_deployment() -> None:
    """kubernetes.io 'Update API Objects in Place Using kubectl patch': adding a
    container with a strategic merge patch keeps the existing one."""
    orig = deployment([{"name": "patch-demo-ctr", "image": "nginx"}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "patch-demo-ctr-2", "image": "redis"}]}}}}
    out = strategic_merge_patch(orig, patch, "Deployment")
    assert containers_of(out) == [
        {"name": "patch-demo-ctr", "image": "nginx"},
        {"name": "patch-demo-ctr-2", "image": "redis"},
    ]
    # the same doc: tolerations have no patch strategy, so they are replaced
    orig["spec"]["template"]["spec"]["tolerations"] = [
        {"effect": "NoSchedule", "key": "dedicated", "value": "test-team"}
    ]
    patch = {
        "spec": {
            "template": {
                "spec": {"tolerations": [{"effect": "NoSchedule", "key": "disktype", "value": "ssd"}]}
            }
        }
    }
    out = strategic_merge_patch(orig, patch, "Deployment")
    assert out["spec"]["template"]["spec"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "disktype", "value": "ssd"}
    ]
