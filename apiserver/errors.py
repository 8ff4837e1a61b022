"""API errors as Kubernetes `Status` objects: every failure the apiserver sends
has kind Status, status Failure, a reason, a message and code == HTTP status."""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kube.api.resources import ResourceType


class APIError(Exception):
    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            st["details"] = self.details
        return st


def _details(rt: ResourceType | None, name: str, *, kind: str | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name} if name else {}
    if rt is not None:
        if rt.group:
            d["group"] = rt.group
        d["kind"] = kind or rt.name
    d.update(extra)
    return d


def qualified_resource(rt: ResourceType) -> str:
    return f"{rt.name}.{rt.group}" if rt.group else rt.name


def qualified_kind(rt: ResourceType) -> str:
    return f"{rt.kind}.{rt.group}" if rt.group else rt.kind


def not_found(rt: ResourceType, name: str) -> APIError:
    return APIError(404, "NotFound", f'{qualified_resource(rt)} "{name}" not found', details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> APIError:
    return APIError(409, "AlreadyExists", f'{qualified_resource(rt)} "{name}" already exists',
                    details=_details(rt, name))


def conflict(rt: ResourceType, name: str, why: str = "") -> APIError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return APIError(409, "Conflict", f'Operation cannot be fulfilled on {qualified_resource(rt)} "{name}": {why}',
                    details=_details(rt, name))


def invalid(rt: ResourceType, name: str, causes: Iterable[dict[str, Any]]) -> APIError:
    causes = list(causes)
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    body = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return APIError(422, "Invalid", f'{qualified_kind(rt)} "{name}" is invalid: {body}',
                    details=_details(rt, name, kind=rt.kind, causes=causes))


def bad_request(message: str, causes: list[dict[str, Any]] | None = None) -> APIError:
    return APIError(400, "BadRequest", message, details={"causes": causes} if causes else None)


def forbidden(rt: ResourceType | None, name: str, message: str) -> APIError:
    return APIError(403, "Forbidden", message, details=_details(rt, name) if rt else None)


def gone(message: str) -> APIError:
    return APIError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> APIError:
    return APIError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> APIError:
    return APIError(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - accepted '
                    f'media types include: application/json, application/yaml (got "{content_type}")')


def not_acceptable(accept: str) -> APIError:
    return APIError(406, "NotAcceptable", f"only the following media types are accepted: application/json, "
                    f"application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept!r})")


def too_large(limit: int) -> APIError:
    return APIError(413, "RequestEntityTooLarge", f"the request body is larger than the limit of {limit} bytes")


def path_not_found(path: str) -> APIError:
    return APIError(404, "NotFound", f"the server could not find the requested resource ({path})",
                    details={"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})


def internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}")


def unavailable(message: str) -> APIError:
    return APIError(503, "ServiceUnavailable", message)


def status_response(err: APIError) -> Response:
    """The error as an HTTP answer: its Status, with the Status's code as the HTTP status."""
    return Response(orjson.dumps(err.status()), status_code=err.code, media_type="application/json")


def success_status(rt: ResourceType, name: str, uid: str = "") -> dict[str, Any]:
    details = _details(rt, name)
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


log = logging.getLogger("kubeling.apiserver")


class ErrorGuard:
    """ASGI middleware, the last line: no exception from the app reaches uvicorn, which would log it
    with its message (that may quote the request body) and drop the connection. Starlette's
    handler for Exception answers with a 500 Status and then re-raises: that is swallowed here; an
    exception before any answer gets a 500 Status here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # .state, .routes, ... of the wrapped app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as e:
            if started:
                return  # answered (and logged) by the app's handler
            log.error("internal error method=%s path=%s error=%s", scope.get("method"), scope.get("path"),
                      type(e).__name__)
            body = orjson.dumps(internal(type(e).__name__).status())
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
