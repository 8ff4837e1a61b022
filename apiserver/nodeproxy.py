"""pods/log: the apiserver asks the pod's node agent and streams its answer back.

    GET /api/v1/namespaces/NS/pods/NAME/log?container=&follow=&tailLines=&timestamps=&previous=
                                           &sinceSeconds=&sinceTime=&limitBytes=

The pod (404) -> its node (400 "does not have a host assigned") -> the agent endpoint (the Node's
annotation kubeling.io/agent-endpoint "HOST:PORT", else its InternalIP and
status.daemonEndpoints.kubeletEndpoint.Port) -> the container (the only one by default; 400 with
upstream's messages otherwise) -> GET https://ENDPOINT/containerLogs/NS/NAME/CONTAINER (plain http
with --insecure-serving), streamed with httpx's async client so the event loop never blocks.

``KubeletClient`` is how the apiserver talks to every agent (logs here, exec/attach in streaming.py,
port-forward in portforward.py): the scheme, and for https an SSL context that verifies the agent's
serving certificate against --kubelet-certificate-authority (hostname = the endpoint's host) and
presents --kubelet-client-certificate/--kubelet-client-key (apiserver/security.py fills it in and
puts it at app.state.kubelet; without one, plain http as before). Agent unreachable -> 503 ServiceUnavailable;
agent 404 -> 404, agent 400 -> 400, with the agent's message. sinceTime is turned into
sinceSeconds (the agent knows only the latter).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from fastapi.responses import Response, StreamingResponse

from kube.api.resources import ResourceType, lookup

from . import errors
from .errors import APIError

log = logging.getLogger("kubeling.apiserver.nodeproxy")

ENDPOINT_ANNOTATION = "kubeling.io/agent-endpoint"
DEFAULT_AGENT_PORT = 10250
BOOL_PARAMS = ("follow", "timestamps", "previous")
INT_PARAMS = {"tailLines": 0, "sinceSeconds": 1, "limitBytes": 1}  # name -> minimum
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # without follow; with follow a quiet container may say nothing for hours


@dataclass(frozen=True)
class KubeletClient:
    """How to reach agents: "http", or "https" with a client SSL context (CA + client certificate)."""

    scheme: str = "http"
    ssl_context: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def url(self, endpoint: str, path: str, websocket: bool = False) -> str:
        scheme = ("wss" if self.tls else "ws") if websocket else self.scheme
        return f"{scheme}://{endpoint}{path}"

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's verify= for this client."""
        return self.ssl_context if self.ssl_context is not None else True


PLAIN = KubeletClient()


def kubelet_client(state: Any) -> KubeletClient:
    """The KubeletClient an app's state holds (app.state.kubelet), plain http when there is none."""
    client = getattr(state, "kubelet", None)
    return client if isinstance(client, KubeletClient) else PLAIN


def container_names(pod: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    spec = pod.get("spec") or {}

    def names(key: str) -> list[str]:
        return [str(c.get("name")) for c in spec.get(key) or [] if isinstance(c, dict) and c.get("name")]
    return names("containers"), names("initContainers"), names("ephemeralContainers")


def pick_container(pod: dict[str, Any], requested: str) -> str:
    name = (pod.get("metadata") or {}).get("name", "")
    main, init, eph = container_names(pod)
    if requested:
        if requested in main or requested in init or requested in eph:
            return requested
        raise errors.bad_request(f"container {requested} is not valid for pod {name}")
    if len(main) == 1:
        return main[0]
    msg = f"a container name must be specified for pod {name}, choose one of: [{' '.join(main)}]"
    if init:
        msg += f" or one of the init containers: [{' '.join(init)}]"
    if eph:
        msg += f" or one of the ephemeral containers: [{' '.join(eph)}]"
    raise errors.bad_request(msg)


def agent_endpoint(node: dict[str, Any]) -> str:
    """HOST:PORT of the node's agent API, or "" when the Node does not say."""
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    ann = str((meta.get("annotations") or {}).get(ENDPOINT_ANNOTATION) or "").strip()
    if ann:
        return ann
    ip = next((a.get("address") for a in status.get("addresses") or []
               if isinstance(a, dict) and a.get("type") == "InternalIP" and a.get("address")), None)
    if not ip:
        return ""
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or DEFAULT_AGENT_PORT
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{port}"


async def node_agent(registry: Any, node_name: str, pod_name: str) -> str:
    """The agent endpoint of the node a pod runs on: 404 for a Node that is gone, 503 when it names none."""
    nodes_rt = lookup("", "v1", "nodes")
    assert nodes_rt is not None
    endpoint = agent_endpoint(await registry.get(nodes_rt, None, node_name))
    if not endpoint:
        raise errors.unavailable(f'node "{node_name}" of pod "{pod_name}" has no agent endpoint (neither the '
                                 f'{ENDPOINT_ANNOTATION} annotation nor an InternalIP): is its agent running?')
    return endpoint


def agent_params(params: dict[str, str]) -> dict[str, str]:
    """Validate the log options and translate them for the agent; 400 on nonsense."""
    out: dict[str, str] = {}
    for b in BOOL_PARAMS:
        if b in params:
            v = params[b].lower()
            if v not in ("true", "false", "1", "0", ""):
                raise errors.bad_request(f"{b}={params[b]!r} is not a boolean: use true or false")
            out[b] = "true" if v in ("true", "1", "") else "false"
    for name, minimum in INT_PARAMS.items():
        raw = params.get(name, "")
        if raw == "":
            continue
        try:
            n = int(raw)
        except ValueError:
            raise errors.bad_request(f"{name}={raw!r} is not an integer") from None
        if n < minimum:
            raise errors.bad_request(f"{name}={n} is invalid: it must be at least {minimum}")
        out[name] = str(n)
    since_time = params.get("sinceTime", "")
    if since_time:
        if "sinceSeconds" in out:
            raise errors.bad_request("at most one of sinceTime or sinceSeconds may be specified")
        try:
            t = datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        except ValueError:
            raise errors.bad_request(f"sinceTime={since_time!r} is not an RFC 3339 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        out["sinceSeconds"] = str(max(1, math.ceil((datetime.now(UTC) - t).total_seconds())))
    return out


async def pod_logs(registry: Any, pods_rt: ResourceType, namespace: str | None, name: str,
                   params: dict[str, str], kubelet: KubeletClient = PLAIN) -> Response:
    pod = await registry.get(pods_rt, namespace, name)
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise errors.bad_request(f'pod "{name}" does not have a host assigned')
    container = pick_container(pod, params.get("container", ""))
    query = agent_params(params)
    endpoint = await node_agent(registry, node_name, name)
    path = "/containerLogs/" + "/".join(quote(str(p), safe="") for p in (namespace, name, container))
    url = kubelet.url(endpoint, path)
    follow = query.get("follow") == "true"
    client = httpx.AsyncClient(trust_env=False, verify=kubelet.verify(), timeout=httpx.Timeout(
        connect=CONNECT_TIMEOUT, read=None if follow else READ_TIMEOUT, write=10.0, pool=CONNECT_TIMEOUT))
    try:
        resp = await client.send(client.build_request("GET", url, params=query), stream=True)
    except httpx.TransportError as e:
        await client.aclose()
        raise errors.unavailable(f'cannot reach the agent of node "{node_name}" at {endpoint} for the logs of '
                                 f'pod "{name}": {type(e).__name__}: {e or "no answer"}') from None
    except BaseException:
        await client.aclose()
        raise
    if resp.status_code != 200:
        try:
            text = (await resp.aread()).decode(errors="replace").strip()[:1000]
        except httpx.TransportError:
            text = ""
        finally:
            await resp.aclose()
            await client.aclose()
        text = text or f"the agent answered HTTP {resp.status_code}"
        if resp.status_code == 404:
            raise APIError(404, "NotFound", text)
        if resp.status_code == 400:
            raise errors.bad_request(text)
        raise errors.internal(f'the agent of node "{node_name}" failed: {text}')

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.TransportError as e:
            log.info("log stream pod=%s/%s container=%s from node=%s broke: %s", namespace, name, container,
                     node_name, e)
        finally:
            await resp.aclose()
            await client.aclose()

    return StreamingResponse(body(), media_type="text/plain", headers={"Cache-Control": "no-cache, private"})
