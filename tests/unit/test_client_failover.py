"""Failover between several apiservers of one cluster, against a fake transport: a refusing server is
skipped, a POST whose response was lost is not repeated elsewhere, the client sticks to the server that
works, a broken watch moves the next watch on, and the config forms that name several servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kube.client import AsyncClient, Client, ClientConfig, ConfigError, TransportError, load_kubeconfig

A, B, C = "http://a.test:1", "http://b.test:2", "http://c.test:3"


class Cluster:
    """Fake apiservers by origin: `down` ones refuse connections (or raise `error`), the rest answer."""

    def __init__(self, *down: str, error: type[httpx.TransportError] = httpx.ConnectError) -> None:
        self.down = set(down)
        self.error = error
        self.calls: list[tuple[str, str]] = []  # (origin, method)

    def __call__(self, req: httpx.Request) -> httpx.Response:
        origin = f"{req.url.scheme}://{req.url.host}:{req.url.port}"
        self.calls.append((origin, req.method))
        if origin in self.down:
            raise self.error("boom", request=req)
        if req.url.params.get("watch"):
            body = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "x", "resourceVersion": "5"}}})
            return httpx.Response(200, content=(body + "\n").encode())
        return httpx.Response(201 if req.method == "POST" else 200, json={"kind": "ConfigMap", "from": origin})

    def origins(self) -> list[str]:
        return [o for o, _ in self.calls]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff pauses are not what these tests look at: make them instant."""
    monkeypatch.setattr("kube.client.rest._Common._backoff", lambda self, attempt: 0.0)


def client(cluster: Cluster, servers: list[str], retries: int = 3) -> Client:
    return Client(servers=servers, transport=httpx.MockTransport(cluster), max_retries=retries)


def test_first_server_refuses_second_answers_and_stays() -> None:
    cl = Cluster(A)
    c = client(cl, [A, B])
    assert c.get("configmaps", "x", "ns")["from"] == B
    assert c.server == B and c.servers == (A, B)
    c.get("configmaps", "y", "ns")
    c.list("configmaps", "ns")
    assert cl.origins() == [A, B, B, B]  # sticky: A is not tried again while B works


def test_sticky_until_the_current_one_fails_then_wraps_around() -> None:
    cl = Cluster()
    c = client(cl, [A, B, C])
    c.get("configmaps", "x", "ns")
    c.get("configmaps", "x", "ns")
    assert cl.origins() == [A, A]
    cl.down = {A}
    c.get("configmaps", "x", "ns")
    assert c.server == B
    cl.down = {B}  # A is back, B fails: on to C, not back to the first in the list
    assert c.get("configmaps", "x", "ns")["from"] == C
    cl.down = {C}
    assert c.get("configmaps", "x", "ns")["from"] == A  # wraps around
    assert cl.origins() == [A, A, A, B, B, C, C, A]


def test_post_whose_connection_failed_goes_to_the_next_server() -> None:
    cl = Cluster(A)
    c = client(cl, [A, B])
    assert c.create("configmaps", {"metadata": {"name": "x"}}, "ns")["from"] == B
    assert cl.calls == [(A, "POST"), (B, "POST")]


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout])
def test_post_whose_response_was_lost_is_not_repeated(error: type[httpx.TransportError]) -> None:
    cl = Cluster(A, error=error)
    c = client(cl, [A, B])
    with pytest.raises(TransportError, match=f"{A}.*servers: {A}, {B}"):
        c.create("configmaps", {"metadata": {"name": "x"}}, "ns")
    assert cl.calls == [(A, "POST")]  # it may have been done: never blindly again, not on B either
    cl = Cluster(A, error=error)
    c = client(cl, [A, B])
    with pytest.raises(TransportError):
        c.patch("configmaps", "x", {"data": {}}, "ns")  # PATCH: the same rule
    assert cl.calls == [(A, "PATCH")]


def test_lost_response_moves_the_client_on_for_later_requests() -> None:
    cl = Cluster(A, error=httpx.ReadError)
    c = client(cl, [A, B])
    with pytest.raises(TransportError):
        c.create("configmaps", {"metadata": {"name": "x"}}, "ns")
    assert c.server == B
    assert c.get("configmaps", "x", "ns")["from"] == B


def test_idempotent_request_with_lost_response_is_retried_on_the_next_server() -> None:
    cl = Cluster(A, error=httpx.ReadError)
    c = client(cl, [A, B])
    assert c.update("configmaps", {"metadata": {"name": "x", "namespace": "ns"}})["from"] == B
    assert cl.calls == [(A, "PUT"), (B, "PUT")]


def test_retries_count_rounds_over_every_server() -> None:
    cl = Cluster(A, B)
    c = client(cl, [A, B], retries=2)
    with pytest.raises(TransportError, match="is the apiserver running"):
        c.get("configmaps", "x", "ns")
    assert cl.origins() == [A, B] * 3  # max_retries + 1 rounds


def test_pauses_only_after_a_whole_round_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("kube.client.rest._Common._backoff", lambda self, attempt: 0.5 + attempt)
    monkeypatch.setattr("kube.client.rest.time.sleep", pauses.append)
    cl = Cluster(A, B, C)
    c = client(cl, [A, B, C], retries=1)
    with pytest.raises(TransportError):
        c.get("configmaps", "x", "ns")
    assert len(cl.calls) == 6 and pauses == [0.5]


def test_single_server_behaviour_is_unchanged() -> None:
    cl = Cluster(A)
    c = client(cl, [A], retries=2)
    with pytest.raises(TransportError):
        c.get("configmaps", "x", "ns")
    assert cl.origins() == [A] * 3 and c.server == A


def test_watch_opens_on_the_next_server_and_a_broken_stream_moves_on() -> None:
    cl = Cluster(A)
    c = client(cl, [A, B])
    w = c.watch("configmaps", "ns", resource_version="4")
    assert next(w)[1]["metadata"]["resourceVersion"] == "5"
    assert w.server == B
    w.close()

    def breaking(req: httpx.Request) -> httpx.Response:
        origin = f"{req.url.scheme}://{req.url.host}:{req.url.port}"
        first = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "x", "resourceVersion": "7"}}})

        def body() -> Iterator[bytes]:
            yield (first + "\n").encode()
            if origin == A:
                raise httpx.ReadError("reset")
        return httpx.Response(200, content=body())

    c = Client(servers=[A, B], transport=httpx.MockTransport(breaking))
    w = c.watch("configmaps", "ns")
    assert next(w)[0] == "ADDED"
    with pytest.raises(TransportError):
        next(w)
    assert c.server == B  # the informer's next watch (from its last resourceVersion) goes to B


def test_concurrent_failures_of_one_server_advance_once() -> None:
    c = Client(servers=[A, B, C], transport=httpx.MockTransport(Cluster()))
    err = httpx.ConnectError("boom")
    c._c._failed(A, err)
    c._c._failed(A, err)  # a second request that also saw A fail: B is not skipped
    assert c.server == B


def test_async_client_fails_over() -> None:
    cl = Cluster(A)

    async def main() -> tuple[str, str, list[str]]:
        async with AsyncClient(servers=[A, B], transport=httpx.MockTransport(cl)) as c:
            got = (await c.get("configmaps", "x", "ns"))["from"]
            types = [t async for t, _ in c.watch("configmaps", "ns")]
            return got, c.server, types

    assert asyncio.run(main()) == (B, B, ["ADDED"])
    assert cl.origins() == [A, B, B]
    cl2 = Cluster(A, error=httpx.ReadError)

    async def post() -> None:
        async with AsyncClient(servers=[A, B], transport=httpx.MockTransport(cl2)) as c:
            await c.create("configmaps", {"metadata": {"name": "x"}}, "ns")

    with pytest.raises(TransportError):
        asyncio.run(post())
    assert cl2.calls == [(A, "POST")]


# -- naming several servers --------------------------------------------------------------


def test_config_forms() -> None:
    assert ClientConfig(server=f"{A}, {B}/,{A}").servers == (A, B)
    cfg = ClientConfig(servers=(A, B), token="t")
    assert cfg.server == A
    over = cfg.with_servers(f"{C},{B}")
    assert over.servers == (C, B) and over.server == C and over.token == "t"
    assert ClientConfig(server=A).servers == (A,)
    assert Client(f"{A},{B}").servers == (A, B)
    assert Client(ClientConfig(server=A, token="t"), servers=[B, C]).servers == (B, C)
    with pytest.raises(ConfigError, match="mix http and https"):
        ClientConfig(servers=(A, "https://b.test:2"))
    with pytest.raises(ConfigError, match="must start with http"):
        ClientConfig(server=f"{A},b.test:2")


def test_kubeconfig_server_may_list_several(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(f"""apiVersion: v1
kind: Config
current-context: c
clusters: [{{name: k, cluster: {{server: "{A}/, {B}"}}}}]
users: [{{name: u, user: {{token: secret}}}}]
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
""")
    cfg = load_kubeconfig(str(path))
    assert cfg.servers == (A, B) and cfg.server == A and cfg.token == "secret"
    c = Client.from_kubeconfig(str(path), servers=C)  # an explicit override keeps the credentials
    assert c.servers == (C,) and c.config.token == "secret"
    path.write_text(path.read_text().replace(f"{B}", "ftp://b"))
    with pytest.raises(ConfigError, match="must start with http"):
        load_kubeconfig(str(path))
