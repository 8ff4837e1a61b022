"""Acceptance 2: the official `kubernetes` Python client, unchanged."""

from __future__ import annotations

import threading

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config, watch  # noqa: E402


@pytest.fixture
def core(apiserver):
    api_client = config.new_client_from_config(config_file=apiserver.kubeconfig)
    yield client.CoreV1Api(api_client)
    api_client.close()


def test_pod_crud_and_watch_in_order(core) -> None:
    events: list[tuple[str, str, str]] = []
    started = threading.Event()
    rv = core.list_namespaced_pod("default").metadata.resource_version

    def watcher() -> None:
        w = watch.Watch()
        started.set()
        for ev in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=20):
            events.append((ev["type"], ev["object"].metadata.name, ev["object"].metadata.resource_version))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    started.wait(5)

    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36",
                                                             ports=[client.V1ContainerPort(container_port=80)])]))
    created = core.create_namespaced_pod("default", body)
    assert created.metadata.uid and created.status.phase == "Pending"
    got = core.read_namespaced_pod("py-pod", "default")
    assert got.spec.containers[0].image == "busybox:1.36"
    assert got.spec.restart_policy == "Always"  # defaulted
    listed = core.list_namespaced_pod("default", label_selector="app=py")
    assert [p.metadata.name for p in listed.items] == ["py-pod"]
    assert core.list_namespaced_pod("default", label_selector="app=other").items == []
    patched = core.patch_namespaced_pod("py-pod", "default", {"metadata": {"labels": {"tier": "x"}}})
    assert patched.metadata.labels == {"app": "py", "tier": "x"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    core.delete_namespaced_pod("py-pod", "default")
    with pytest.raises(client.exceptions.ApiException) as err:
        core.read_namespaced_pod("py-pod", "default")
    assert err.value.status == 404

    t.join(25)
    assert [(e[0], e[1]) for e in events] == [("ADDED", "py-pod"), ("MODIFIED", "py-pod"), ("DELETED", "py-pod")]
    assert events[0][2] == created.metadata.resource_version
    assert events[1][2] == patched.metadata.resource_version
    revs = [int(e[2]) for e in events]
    assert revs == sorted(revs)


def test_other_groups_through_the_client(apiserver) -> None:
    api_client = config.new_client_from_config(config_file=apiserver.kubeconfig)
    try:
        apps = client.AppsV1Api(api_client)
        dep = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2, selector=client.V1LabelSelector(match_labels={"app": "web"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "web"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]))))
        made = apps.create_namespaced_deployment("default", dep)
        assert made.spec.strategy.type == "RollingUpdate" and made.metadata.generation == 1
        scale = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
        assert scale.spec.replicas == 4
        assert apps.read_namespaced_deployment("web", "default").spec.replicas == 4
        with pytest.raises(client.exceptions.ApiException) as err:
            apps.create_namespaced_deployment("default", dep)
        assert err.value.status == 409
        nodes = client.CoreV1Api(api_client).list_node()
        assert nodes.items == []
    finally:
        api_client.close()
