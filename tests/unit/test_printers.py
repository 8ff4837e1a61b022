"""Server-side Table printing (columns and cells as upstream kubectl shows them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from apiserver.printers import duration_short, selector_string, to_table

NOW = datetime(2026, 12, 1, 7, 0, 0, tzinfo=UTC)


def ts(ago: timedelta) -> str:
    return (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name: str, ago: timedelta = timedelta(minutes=5), **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "uid": "u-" + name, "creationTimestamp": ts(ago), **extra}


def row(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    table = to_table(resource, [obj], now=NOW)
    names = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"], strict=True))


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"), (182, "3m2s"),
    (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (5 * 3600 + 3 * 60, "5h3m"), (20 * 3600, "20h"),
    (47 * 3600, "47h"), (51 * 3600, "2d3h"), (72 * 3600, "3d"), (30 * 86400, "30d"),
    (800 * 86400, "2y70d"), (365 * 2 * 86400, "2y"), (10 * 365 * 86400, "10y"),
])
def test_duration_short_follows_human_duration(seconds: float, text: str) -> None:
    assert duration_short(seconds) == text


def test_table_envelope_and_partial_object_metadata() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta("p"), "spec": {"containers": [{"name": "c"}]}}
    table = to_table("pods", [pod], list_metadata={"resourceVersion": "42", "continue": ""}, now=NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42"}
    cols = table["columnDefinitions"]
    assert [c["name"] for c in cols if c["priority"] == 0] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert [c["name"] for c in cols if c["priority"] == 1] == ["IP", "Node", "Nominated Node", "Readiness Gates"]
    assert cols[0]["format"] == "name"
    assert all({"name", "type", "format", "description", "priority"} <= set(c) for c in cols)
    obj = table["rows"][0]["object"]
    assert obj == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"]}
    assert to_table("pods", [pod], include_object="Object", now=NOW)["rows"][0]["object"] is pod
    assert "object" not in to_table("pods", [pod], include_object="None", now=NOW)["rows"][0]


def _running(name: str, ready: bool = True, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "ready": ready, "restartCount": restarts, "state": {"running": {"startedAt": ts(timedelta(1))}}}


def test_pod_ready_status_restarts_and_wide_cells() -> None:
    pod = {
        "metadata": meta("web", timedelta(seconds=45)),
        "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "nodeName": "n1"},
        "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                   "containerStatuses": [_running("a"), _running("b", restarts=2), _running("c", ready=False)]},
    }
    r = row("pods", pod)
    assert r["Name"] == "web" and r["Ready"] == "2/3" and r["Status"] == "Running"
    assert r["Restarts"] == "2" and r["Age"] == "45s"
    assert (r["IP"], r["Node"], r["Nominated Node"], r["Readiness Gates"]) == ("10.0.0.5", "n1", "<none>", "<none>")


def test_pod_status_reasons() -> None:
    waiting = {
        "metadata": meta("w"), "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "a", "ready": False, "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(timedelta(minutes=3))}}}]},
    }
    r = row("pods", waiting)
    assert r["Status"] == "CrashLoopBackOff" and r["Ready"] == "0/1" and r["Restarts"] == "4 (3m ago)"
    assert r["IP"] == "<none>" and r["Node"] == "<none>"

    done = {"metadata": meta("d"), "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "a", "ready": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}
    assert row("pods", done)["Status"] == "Completed"
    killed = {"metadata": meta("k"), "spec": {"containers": [{"name": "a"}]},
              "status": {"phase": "Failed", "containerStatuses": [
                  {"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}}
    assert row("pods", killed)["Status"] == "Signal:9"

    terminating = {"metadata": meta("t", deletionTimestamp=ts(timedelta(0))),
                   "spec": {"containers": [{"name": "a"}]},
                   "status": {"phase": "Running", "containerStatuses": [_running("a")]}}
    assert row("pods", terminating)["Status"] == "Terminating"

    init = {"metadata": meta("i"), "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}],
                                            "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "state": {"running": {}}}]}}
    assert row("pods", init)["Status"] == "Init:1/2"
    pending = {"metadata": meta("p"), "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}}
    assert row("pods", pending)["Status"] == "Pending"


def test_service_ports_external_ip_and_selector() -> None:
    svc = {"metadata": meta("web", timedelta(days=2, hours=3)),
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                              {"port": 53, "protocol": "UDP"}],
                    "selector": {"tier": "web", "app": "nginx"}}}
    r = row("services", svc)
    assert r["Type"] == "NodePort" and r["Cluster-IP"] == "10.96.0.10" and r["External-IP"] == "<none>"
    assert r["Port(s)"] == "80:30080/TCP,53/UDP" and r["Age"] == "2d3h"
    assert r["Selector"] == "app=nginx,tier=web"
    lb = {"metadata": meta("lb"), "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.11"],
                                           "ports": [{"port": 443, "protocol": "TCP"}]}}
    assert row("services", lb)["External-IP"] == "<pending>"
    headless = {"metadata": meta("h"), "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}
    hr = row("services", headless)
    assert (hr["Type"], hr["Cluster-IP"], hr["Port(s)"], hr["Selector"]) == ("ClusterIP", "None", "<none>", "<none>")


def test_deployment_replicaset_daemonset_job() -> None:
    tmpl = {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.14"}, {"name": "side", "image": "busybox"}]}}
    dep = {"metadata": meta("d"), "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
                                           "template": tmpl},
           "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    r = row("deployments", dep)
    assert (r["Ready"], r["Up-to-date"], r["Available"], r["Age"]) == ("2/3", 3, 2, "5m")
    assert (r["Containers"], r["Images"], r["Selector"]) == ("nginx,side", "nginx:1.14,busybox", "app=nginx")

    rs = {"metadata": meta("rs"), "spec": {"replicas": 3, "template": tmpl}, "status": {"replicas": 3, "readyReplicas": 1}}
    rr = row("replicasets", rs)
    assert (rr["Desired"], rr["Current"], rr["Ready"]) == (3, 3, 1)

    ds = {"metadata": meta("ds"), "spec": {"template": {"spec": {**tmpl["spec"], "nodeSelector": {"os": "linux"}}}},
          "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1,
                     "updatedNumberScheduled": 2, "numberAvailable": 1}}
    dr = row("daemonsets", ds)
    assert [dr[k] for k in ("Desired", "Current", "Ready", "Up-to-date", "Available", "Node Selector")] == [
        2, 2, 1, 2, 1, "os=linux"]

    job = {"metadata": meta("j"), "spec": {"completions": 3, "template": tmpl},
           "status": {"succeeded": 3, "startTime": ts(timedelta(minutes=4)),
                      "completionTime": ts(timedelta(minutes=3, seconds=30)),
                      "conditions": [{"type": "Complete", "status": "True"}]}}
    jr = row("jobs", job)
    assert (jr["Status"], jr["Completions"], jr["Duration"]) == ("Complete", "3/3", "30s")
    running = {"metadata": meta("j2"), "spec": {"parallelism": 2, "template": tmpl},
               "status": {"startTime": ts(timedelta(seconds=10))}}
    assert [row("jobs", running)[k] for k in ("Status", "Completions", "Duration")] == ["Running", "0/1 of 2", "10s"]


def test_node_status_roles_and_wide() -> None:
    node = {"metadata": meta("cp", timedelta(hours=5), labels={"node-role.kubernetes.io/control-plane": "",
                                                               "kubernetes.io/hostname": "cp"}),
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.56.10"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "docker://20.10"}}}
    r = row("nodes", node)
    assert (r["Status"], r["Roles"], r["Age"], r["Version"]) == ("Ready,SchedulingDisabled", "control-plane", "5h",
                                                                 "v1.32.0")
    assert (r["Internal-IP"], r["External-IP"], r["Container-Runtime"]) == ("192.168.56.10", "<none>", "docker://20.10")
    worker = {"metadata": meta("w"), "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    wr = row("nodes", worker)
    assert (wr["Status"], wr["Roles"], wr["OS-Image"]) == ("NotReady", "<none>", "<unknown>")
    assert row("nodes", {"metadata": meta("x")})["Status"] == "Unknown"


def test_small_kinds() -> None:
    assert row("namespaces", {"metadata": meta("kube-system"), "status": {"phase": "Active"}})["Status"] == "Active"
    assert row("configmaps", {"metadata": meta("c"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}})[
        "Data"] == 3
    s = row("secrets", {"metadata": meta("s"), "type": "Opaque", "data": {"a": "MQ=="}})
    assert (s["Type"], s["Data"]) == ("Opaque", 1)
    assert row("serviceaccounts", {"metadata": meta("default")})["Secrets"] == 0
    assert row("leases", {"metadata": meta("n1"), "spec": {"holderIdentity": "n1"}})["Holder"] == "n1"
    generic = to_table("widgets", [{"metadata": meta("w")}], now=NOW)
    assert [c["name"] for c in generic["columnDefinitions"]] == ["Name", "Age"]
    assert generic["rows"][0]["cells"] == ["w", "5m"]


def test_endpoints_and_endpointslices() -> None:
    ep = {"metadata": meta("web"), "subsets": [{"addresses": [{"ip": f"10.0.0.{i}"} for i in range(1, 6)],
                                                "ports": [{"port": 80}]}]}
    assert row("endpoints", ep)["Endpoints"] == "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more..."
    assert row("endpoints", {"metadata": meta("none")})["Endpoints"] == "<none>"
    es = {"metadata": meta("web-abc"), "addressType": "IPv4", "ports": [{"port": 80, "name": "http"}],
          "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]}
    r = row("endpointslices", es)
    assert (r["AddressType"], r["Ports"], r["Endpoints"]) == ("IPv4", "80", "10.0.0.1,10.0.0.2")
    assert row("endpointslices", {"metadata": meta("e"), "addressType": "IPv4"})["Ports"] == "<unset>"


def test_events() -> None:
    ev = {"metadata": meta("web.1"), "type": "Normal", "reason": "Scheduled", "message": " Assigned pod \n",
          "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{a}"},
          "source": {"component": "default-scheduler"}, "firstTimestamp": ts(timedelta(minutes=9)),
          "lastTimestamp": ts(timedelta(seconds=30)), "count": 3}
    table = to_table("events", [ev], now=NOW)
    assert [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0] == [
        "Last Seen", "Type", "Reason", "Object", "Message"]
    r = row("events", ev)
    assert (r["Last Seen"], r["Object"], r["Message"], r["First Seen"], r["Count"]) == (
        "30s", "pod/web", "Assigned pod", "9m", 3)
    assert r["Source"] == "default-scheduler"


def test_selector_string_expressions() -> None:
    sel = {"matchLabels": {"b": "2"}, "matchExpressions": [
        {"key": "a", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "DoesNotExist"}]}
    assert selector_string(sel) == "a in (x,y),b=2,!c"


# ---------------------------------------------------------------- kubectl end to end


def _kubectl_get(tables: dict[str, Any], tmp_path: Any, *args: str) -> str:
    """Serve discovery + Table answers on 127.0.0.1 and run `kubectl get ...`."""
    import json
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    resources = [{"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                  "verbs": ["get", "list"]},
                 {"name": "services", "singularName": "service", "namespaced": True, "kind": "Service",
                  "verbs": ["get", "list"]}]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            body: Any = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                         "reason": "NotFound", "message": "not found"}
            code = 404
            if path == "/version":
                code, body = 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
            elif path == "/api":
                code, body = 200, {"kind": "APIVersions", "versions": ["v1"]}
            elif path == "/apis":
                code, body = 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
            elif path == "/api/v1":
                code, body = 200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
            elif path.startswith("/api/v1/namespaces/default/"):
                res = path.rsplit("/", 1)[1]
                if res in tables and "as=Table" in self.headers.get("Accept", ""):
                    code, body = 200, tables[res]
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        kc = tmp_path / "kubeconfig"
        kc.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{srv.server_address[1]}"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": "default"}}],
            "users": [{"name": "t", "user": {}}]}))
        r = subprocess.run(["kubectl", "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "cache"), "get", *args],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert "Unable to decode" not in r.stderr
        return r.stdout
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.kubectl
def test_kubectl_prints_our_tables(tmp_path: Any) -> None:
    import shutil
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    pod = {"metadata": meta("web-1", timedelta(minutes=3, seconds=2)),
           "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
           "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.7"}],
                      "containerStatuses": [_running("a"), _running("b", ready=False)]}}
    svc = {"metadata": meta("web", timedelta(hours=2)),
           "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.20"], "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}
    tables = {"pods": to_table("pods", [pod], now=NOW), "services": to_table("services", [svc], now=NOW)}
    out = _kubectl_get(tables, tmp_path, "pods")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split() == ["web-1", "1/2", "Running", "0", "3m2s"]
    wide = _kubectl_get(tables, tmp_path, "pods", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"]
    assert wide[1].split()[5:7] == ["10.244.1.7", "n1"]
    svc_out = _kubectl_get(tables, tmp_path, "services").splitlines()
    assert svc_out[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc_out[1].split() == ["web", "NodePort", "10.96.0.20", "<none>", "80:30080/TCP", "120m"]
