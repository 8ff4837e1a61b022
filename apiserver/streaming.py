"""pods/exec and pods/attach: kubectl's WebSocket session, relayed to the pod's node agent.

    GET /api/v1/namespaces/NS/pods/NAME/exec?command=ARG&command=...&container=&stdin=&stdout=&stderr=&tty=
    GET /api/v1/namespaces/NS/pods/NAME/attach?container=&stdin=&stdout=&stderr=&tty=
        with Upgrade: websocket, subprotocol v5.channel.k8s.io (kubectl 1.32 offers only that one;
        other clients may offer v4.channel.k8s.io)

kubectl 1.32 dials these as WebSockets (KUBECTL_REMOTE_COMMAND_WEBSOCKETS, on by default) and falls
back to SPDY (a POST with ``Upgrade: SPDY/3.1``) only when that upgrade is refused.  The handler:
``streaming_guard`` (the authorization hook) -> the pod (404) -> the container (400, upstream's
messages) -> its node (400 "pod NAME does not have a host assigned") -> the agent endpoint (503
when the Node has none) -> a WebSocket to ``wss://ENDPOINT/exec/NS/NAME/CONTAINER?command=..&input=1
&output=1&error=1&tty=1`` (the kubelet's path and parameter names) offering the subprotocols kubectl
offered -> accept kubectl's upgrade with the one the agent chose -> relay messages both ways,
unchanged, until one side closes, then close the other with the same code.  What happens inside
the session (output, the exit status on channel 3) is the agent's (agent/exec.py).  The agent leg is
wss:// with the apiserver's kubelet client certificate (nodeproxy.KubeletClient, app.state.kubelet),
ws:// with --insecure-serving.

Refusals before the upgrade are a Status in the HTTP answer, which kubectl prints: the agent
unreachable is 503, its 404/400 keep their code and message.  Because kubectl then retries with
SPDY, which this server does not speak, that request (through the ordinary route: apiserver/app.py
-> pod_stream_http) makes the same checks and puts the same question to the agent as a plain GET,
so kubectl shows the reason the WebSocket attempt failed.  A request without any upgrade (curl)
gets the checks and then 400 "Upgrade request required", as upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote

import httpx
from fastapi.responses import Response
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from kube.api.resources import ResourceType, lookup

from . import errors
from .errors import APIError
from .nodeproxy import (
    CONNECT_TIMEOUT,
    KubeletClient,
    kubelet_client,
    node_agent,
    pick_container,
)

log = logging.getLogger("kubeling.apiserver.streaming")

KINDS = ("exec", "attach")
MAX_MESSAGE = 1024 * 1024  # the agent sends at most 32 KiB per message
AGENT_PARAMS = {"stdin": "input", "stdout": "output", "stderr": "error", "tty": "tty"}  # ours -> the kubelet's


async def streaming_guard(conn: Any, verb: str, subresource: str, namespace: str, name: str) -> None:
    """Overridable hook before an exec/attach WebSocket is set up (authorization); raise APIError to refuse."""
    from .auth.authz import streaming_guard as authorize  # no-op if the middleware decided

    await authorize(conn.scope, verb=verb, subresource=subresource, namespace=namespace, name=name)


class Target:
    """Where a session goes: the agent's path and query for one container of one pod."""

    def __init__(self, node: str, endpoint: str, path: str, query: list[tuple[str, str]]) -> None:
        self.node, self.endpoint, self.path, self.query = node, endpoint, path, query

    def url(self, kubelet: KubeletClient, websocket: bool) -> str:
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in self.query)
        return kubelet.url(self.endpoint, f"{self.path}?{qs}", websocket)


def agent_query(kind: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """kubectl's stdin/stdout/stderr/tty (true/false) and command -> the kubelet's parameters; 400 on nonsense."""
    out: list[tuple[str, str]] = []
    flags: dict[str, bool] = {}
    for key, value in params:
        if key in AGENT_PARAMS:
            v = value.lower()
            if v not in ("true", "false", "1", "0", ""):
                raise errors.bad_request(f"{key}={value!r} is not a boolean: use true or false")
            flags[key] = v in ("true", "1")
    out += [(AGENT_PARAMS[k], "1") for k in AGENT_PARAMS if flags.get(k)]
    if kind == "exec":
        out += [("command", v) for k, v in params if k == "command"]
    return out


async def resolve(registry: Any, kind: str, namespace: str, name: str, params: list[tuple[str, str]]) -> Target:
    """The pod -> container -> node -> agent endpoint, in upstream's order; APIError as upstream words it."""
    pods_rt = lookup("", "v1", "pods")
    assert pods_rt is not None
    pod = await registry.get(pods_rt, namespace, name)
    container = pick_container(pod, next((v for k, v in params if k == "container"), ""))
    node_name = str((pod.get("spec") or {}).get("nodeName") or "")
    if not node_name:
        raise errors.bad_request(f"pod {name} does not have a host assigned")
    query = agent_query(kind, params)
    endpoint = await node_agent(registry, node_name, name)
    path = f"/{kind}/" + "/".join(quote(p, safe="") for p in (namespace, name, container))
    return Target(node_name, endpoint, path, query)


def _unreachable(t: Target, kind: str, name: str, e: BaseException) -> APIError:
    return errors.unavailable(f'cannot reach the agent of node "{t.node}" at {t.endpoint} for {kind} in pod '
                              f'"{name}": {type(e).__name__}: {e or "no answer"}')


def _agent_refusal(t: Target, kind: str, code: int, text: str) -> APIError:
    text = text.strip()[:1000] or f"the agent answered HTTP {code}"
    if code == 404:
        return APIError(404, "NotFound", text)
    if code == 400:
        return errors.bad_request(text)
    return errors.internal(f'the agent of node "{t.node}" refused {kind}: {text}')



# -- the WebSocket route ----------------------------------------------------------------------


async def pod_exec_ws(websocket: WebSocket) -> None:
    await _session(websocket, "exec")


async def pod_attach_ws(websocket: WebSocket) -> None:
    await _session(websocket, "attach")


async def _session(websocket: WebSocket, kind: str) -> None:
    namespace, name = websocket.path_params["namespace"], websocket.path_params["name"]
    registry = websocket.app.state.registry
    offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols") or []]
    try:
        await streaming_guard(websocket, verb="create", subresource=kind, namespace=namespace, name=name)
        t = await resolve(registry, kind, namespace, name, list(websocket.query_params.multi_items()))
        agent = await _open_agent(t, kind, name, offered, kubelet_client(websocket.app.state))
    except APIError as e:
        log.info("%s pod=%s/%s refused: %s", kind, namespace, name, e.message)
        await _deny(websocket, e)
        return
    except Exception as e:  # noqa: BLE001 - e.g. the store is down: still a Status, never a dropped socket
        log.info("%s pod=%s/%s failed: %s", kind, namespace, name, e)
        await _deny(websocket, errors.unavailable(f"{kind} in pod {name!r} failed: {type(e).__name__}: {e}"))
        return
    try:
        await websocket.accept(subprotocol=agent.subprotocol)
        log.debug("%s pod=%s/%s via node=%s started protocol=%s", kind, namespace, name, t.node, agent.subprotocol)
        code = await _relay(websocket, agent)
        log.debug("%s pod=%s/%s ended code=%s", kind, namespace, name, code)
    finally:
        await agent.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close()


async def _deny(websocket: WebSocket, e: APIError) -> None:
    try:
        await websocket.send_denial_response(errors.status_response(e))
    except RuntimeError:  # a server without the denial-response extension: a bare refusal (HTTP 403)
        await websocket.close()


async def _open_agent(t: Target, kind: str, name: str, offered: list[Subprotocol],
                      kubelet: KubeletClient) -> ClientConnection:
    try:
        return await connect(t.url(kubelet, websocket=True), subprotocols=offered or None, compression=None,
                             ssl=kubelet.ssl_context if kubelet.tls else None,
                             proxy=None, open_timeout=CONNECT_TIMEOUT, ping_interval=30, ping_timeout=30,
                             max_size=MAX_MESSAGE, user_agent_header="kubeling-apiserver")
    except InvalidStatus as e:
        code = e.response.status_code
        raise _agent_refusal(t, kind, code, (e.response.body or b"").decode(errors="replace")) from None
    except (OSError, TimeoutError, InvalidHandshake) as e:
        raise _unreachable(t, kind, name, e) from None


async def _relay(client: WebSocket, agent: ClientConnection) -> int:
    """Messages both ways, unchanged, until one side closes; the other is closed with the same code."""

    async def up() -> None:  # kubectl -> agent
        while True:
            msg = await client.receive()
            if msg["type"] == "websocket.disconnect":
                await agent.close(code=_sendable(msg.get("code")))
                return
            data = msg.get("bytes")
            await agent.send(data if data is not None else msg.get("text") or "")

    async def down() -> None:  # agent -> kubectl
        with contextlib.suppress(ConnectionClosed):
            async for data in agent:
                if isinstance(data, bytes):
                    await client.send_bytes(data)
                else:
                    await client.send_text(data)

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[1] in done:  # the agent ended the session: pass its close on
            code = _sendable(agent.close_code, default=1011)
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await client.close(code=code)
            return int(code)
        return int(agent.close_code or 1000)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError,
                                     OSError):
                await task


def _sendable(code: int | None, default: int = 1000) -> int:
    """A close code that may be sent on: 1005/1006 only report what happened, they are never sent."""
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return default if code != 1005 else 1000
    return code


# -- the plain HTTP route (no WebSocket) ------------------------------------------------------


def _is_spdy_upgrade(request: Request) -> bool:
    connection = [t.strip().lower() for t in request.headers.get("connection", "").split(",")]
    return "upgrade" in connection and request.headers.get("upgrade", "").lower().startswith("spdy/")


async def pod_stream_http(registry: Any, rt: ResourceType, namespace: str | None, name: str, kind: str,
                          request: Request) -> Response:
    """A request to exec/attach that is not a WebSocket upgrade: the same checks, then a 400 (see above)."""
    if request.method not in ("GET", "POST"):
        raise errors.method_not_allowed()
    t = await resolve(registry, kind, namespace or "", name, list(request.query_params.multi_items()))
    if not _is_spdy_upgrade(request):
        raise errors.bad_request("Upgrade request required")
    # kubectl's SPDY fallback after a refused WebSocket: ask the agent the same question, plainly
    try:
        kubelet = kubelet_client(request.app.state)
        async with httpx.AsyncClient(trust_env=False, timeout=CONNECT_TIMEOUT, verify=kubelet.verify()) as client:
            resp = await client.get(t.url(kubelet, websocket=False))
    except httpx.TransportError as e:
        raise _unreachable(t, kind, name, e) from None
    text = resp.text.strip()
    if resp.status_code != 400 or text != "Upgrade request required":
        raise _agent_refusal(t, kind, resp.status_code, text)
    raise errors.bad_request(f"{kind} needs a WebSocket upgrade (subprotocol v5.channel.k8s.io, which kubectl "
                             "1.30+ uses unless KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false): this apiserver does not "
                             "accept a SPDY/3.1 upgrade")
