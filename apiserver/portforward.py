"""pods/portforward: a WebSocket pipe from the client to the pod's node agent.

    GET /api/v1/namespaces/NS/pods/NAME/portforward   (WebSocket, subprotocol SPDY/3.1+portforward.k8s.io)

kubectl 1.31+ (KUBECTL_PORT_FORWARD_WEBSOCKETS, on by default) tunnels SPDY/3.1 in binary
WebSocket messages.  The apiserver does not look inside: it finds the pod -> its node -> the
agent endpoint (nodeproxy.agent_endpoint), opens a WebSocket with the same subprotocol to
``wss://ENDPOINT/portForward/NS/NAME/UID`` (the kubelet's path; TLS and the apiserver's client
certificate from nodeproxy.KubeletClient, ws:// with --insecure-serving), accepts the client's, and relays
messages both ways until either side closes; the SPDY session is terminated by the agent.

Errors before the upgrade (no such pod, no node, agent unreachable or refusing) are a Status
sent as the WebSocket denial response, so the client prints them.  kubectl then falls back to a
direct SPDY upgrade (POST, ``Upgrade: SPDY/3.1``), which this server cannot take: that request gets
the same checks and then a 400 that says to use the WebSocket tunnel.

``portforward_guard`` runs before anything else: exec/attach's ``streaming_guard`` hook
(apiserver/streaming.py, the authorizer's check of "create pods/portforward"; APIError refuses).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
from typing import Any
from urllib.parse import quote

from fastapi.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from kube import websocket as ws
from kube.api.resources import ResourceType, lookup

from . import errors
from .errors import APIError
from .nodeproxy import CONNECT_TIMEOUT, KubeletClient, kubelet_client, node_agent
from .store.base import StoreUnavailable
from .streaming import streaming_guard

log = logging.getLogger("kubeling.apiserver.portforward")

SUBPROTOCOL = "SPDY/3.1+portforward.k8s.io"
MAX_MESSAGE = 16 * 1024 * 1024  # a SPDY frame is at most 16 MiB; kubectl's messages are far smaller


async def portforward_guard(conn: Any, namespace: str, name: str) -> None:
    """Before a port-forward is set up: exec/attach's authorization hook (apiserver/streaming.py), for
    "create pods/portforward"; it raises APIError to refuse."""
    await streaming_guard(conn, verb="create", subresource="portforward", namespace=namespace, name=name)


async def _target(registry: Any, namespace: str, name: str) -> tuple[dict[str, Any], str, str]:
    """(pod, node name, agent endpoint) or APIError as `kubectl logs` words them."""
    pods_rt = lookup("", "v1", "pods")
    assert pods_rt is not None
    pod = await registry.get(pods_rt, namespace, name)
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise errors.bad_request(f'pod "{name}" does not have a host assigned')
    endpoint = await node_agent(registry, str(node_name), name)
    return pod, str(node_name), endpoint



async def pod_portforward_http(registry: Any, rt: ResourceType, namespace: str | None, name: str) -> Response:
    """The non-WebSocket request (kubectl's SPDY fallback, or curl): the usual errors, else a 400."""
    await _target(registry, namespace or "", name)
    raise errors.bad_request(
        f"port-forward to pod {name!r} needs a WebSocket upgrade with subprotocol {SUBPROTOCOL} "
        "(kubectl 1.31 or newer does this by default; set KUBECTL_PORT_FORWARD_WEBSOCKETS=true if it was "
        "turned off): this apiserver does not accept a direct SPDY/3.1 upgrade")


class AgentTunnel:
    """The apiserver's WebSocket client leg to the agent, on asyncio streams with kube.websocket's codec.

    (The websockets library refuses "SPDY/3.1+portforward.k8s.io" as a subprotocol: '/' is no token
    character, yet it is what client-go and the kubelet use.)"""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._decoder = ws.FrameDecoder(expect_masked=False, max_frame=MAX_MESSAGE)
        self._frames: list[ws.Frame] = []

    async def recv(self) -> bytes | None:
        """The payload of the next data frame (fragments pass as they come: the tunnel is a byte
        stream); None once the agent closed or the connection broke."""
        while True:
            while not self._frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                try:
                    self._frames = self._decoder.feed(data)
                except ws.ProtocolError as e:
                    log.info("port-forward: the agent broke the WebSocket protocol: %s", e)
                    return None
            f = self._frames.pop(0)
            if f.opcode == ws.OP_PING:
                await self._write(ws.OP_PONG, f.payload)
            elif f.opcode == ws.OP_CLOSE:
                with contextlib.suppress(OSError, ConnectionError):
                    await self._write(ws.OP_CLOSE, f.payload[:2])
                return None
            elif f.opcode in (ws.OP_BINARY, ws.OP_CONTINUATION):
                return f.payload
            elif f.opcode == ws.OP_TEXT:
                log.info("port-forward: the agent sent a text message; closing")
                return None

    async def send(self, data: bytes) -> None:
        await self._write(ws.OP_BINARY, data)

    async def _write(self, opcode: int, payload: bytes) -> None:
        self.writer.write(ws.encode_frame(opcode, payload, mask=os.urandom(4)))
        await self.writer.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError, ValueError):
            await self._write(ws.OP_CLOSE, ws.close_payload(ws.CLOSE_NORMAL))
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


async def _open_agent(endpoint: str, node_name: str, namespace: str, name: str, uid: str,
                      kubelet: KubeletClient) -> AgentTunnel:
    path = "/portForward/" + "/".join(quote(p, safe="") for p in (namespace, name, uid))
    host, _, port = endpoint.rpartition(":")
    try:
        handshake = _handshake(host.strip("[]"), int(port), endpoint, path,
                               kubelet.ssl_context if kubelet.tls else None)
        return await asyncio.wait_for(handshake, CONNECT_TIMEOUT)
    except ws.HandshakeError as e:
        text = e.body.decode(errors="replace").strip()[:1000] or str(e)
        if e.status == 404:
            raise APIError(404, "NotFound", text) from None
        if e.status == 400:
            raise errors.bad_request(text) from None
        raise errors.internal(f'the agent of node "{node_name}" refused the port-forward: {text}') from None
    except (OSError, TimeoutError, ValueError) as e:
        why = f'{type(e).__name__}: {e or "no answer"}'
        raise errors.unavailable(f'cannot reach the agent of node "{node_name}" at {endpoint} for a '
                                 f'port-forward to pod "{name}": {why}') from None


async def _handshake(host: str, port: int, hostport: str, path: str,
                     ssl_context: ssl.SSLContext | None) -> AgentTunnel:
    if ssl_context is not None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=host)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        request = [f"GET {path} HTTP/1.1", f"Host: {hostport}", "Upgrade: websocket", "Connection: Upgrade",
                   f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                   f"Sec-WebSocket-Protocol: {SUBPROTOCOL}", "User-Agent: kubeling-apiserver"]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(min(length, 1 << 16)) if length else b""
            raise ws.HandshakeError(f"the agent answered {lines[0]!r}", status, body)
        if headers.get("sec-websocket-accept") != ws.accept_key(key):
            raise ws.HandshakeError("the agent's Sec-WebSocket-Accept does not match our key", status)
        if headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            chose = headers.get("sec-websocket-protocol")
            raise ws.HandshakeError(f"the agent chose subprotocol {chose!r}", status)
        return AgentTunnel(reader, writer)
    except BaseException:
        writer.close()
        raise


async def pod_portforward_ws(websocket: WebSocket) -> None:
    namespace = websocket.path_params["namespace"]
    name = websocket.path_params["name"]
    registry = websocket.app.state.registry
    try:
        await portforward_guard(websocket, namespace, name)
        if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            offered = websocket.scope.get("subprotocols") or "none"
            raise errors.bad_request(f"port-forward over WebSocket needs the subprotocol {SUBPROTOCOL}, the "
                                     f"client offered {offered}")
        pod, node_name, endpoint = await _target(registry, namespace, name)
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        agent = await _open_agent(endpoint, node_name, namespace, name, uid, kubelet_client(websocket.app.state))
    except StoreUnavailable as e:
        down = errors.unavailable(f"the store is unavailable: {e}")
        await websocket.send_denial_response(errors.status_response(down))
        return
    except APIError as e:
        log.info("port-forward pod=%s/%s refused: %s", namespace, name, e.message)
        await websocket.send_denial_response(errors.status_response(e))
        return
    try:
        await websocket.accept(subprotocol=SUBPROTOCOL)
        log.debug("port-forward pod=%s/%s via node=%s started", namespace, name, node_name)
        await _relay(websocket, agent)
    finally:
        await agent.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close()
    log.debug("port-forward pod=%s/%s ended", namespace, name)


async def _relay(client: WebSocket, agent: AgentTunnel) -> None:
    """Binary messages both ways, as they come, until one side closes."""

    async def up() -> None:
        while True:
            msg = await client.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:  # the tunnel is binary only: text is a broken client
                log.info("port-forward: the client sent a text message; closing")
                return
            await agent.send(data)

    async def down() -> None:
        while (data := await agent.recv()) is not None:
            await client.send_bytes(data)

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError,
                                     ConnectionError):
                await t
