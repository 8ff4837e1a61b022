"""What a client call can fail with: the server said no (`ApiError`, carrying the
`Status` it sent), or the server could not be reached (`TransportError`)."""

from __future__ import annotations

from typing import Any

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            406: "NotAcceptable", 409: "Conflict", 410: "Expired", 413: "RequestEntityTooLarge",
            415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


class ClientError(Exception):
    """Base of everything kube.client raises on purpose."""


class TransportError(ClientError):
    """No answer from the apiserver: refused, reset, timed out, or the stream broke."""


class ApiError(ClientError):
    """The apiserver answered with an error `Status`."""

    def __init__(self, code: int, reason: str, message: str, status: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.status: dict[str, Any] = status if status is not None else {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}

    @classmethod
    def from_status(cls, status: Any, http_code: int = 0) -> ApiError:
        """From a Status object (response body or watch ERROR event); tolerates a malformed one."""
        if not isinstance(status, dict):
            code = http_code or 500
            return cls(code, _REASONS.get(code, "Unknown"), f"the server sent an unexpected error body: "
                                                            f"{str(status)[:200]}")
        raw = status.get("code")
        code = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else http_code or 500
        reason = str(status.get("reason") or _REASONS.get(code, "Unknown"))
        message = str(status.get("message") or f"the server returned {code} {reason}")
        return cls(code, reason, message, status)

    @classmethod
    def from_text(cls, code: int, text: str) -> ApiError:
        """From an error response that was not a Status (a proxy in between, a crash page)."""
        text = text.strip()
        return cls(code, _REASONS.get(code, "Unknown"),
                   text[:500] if text else f"the server returned HTTP {code} without a body")

    @property
    def details(self) -> dict[str, Any]:
        d = self.status.get("details")
        return d if isinstance(d, dict) else {}

    def is_not_found(self) -> bool:
        return self.code == 404

    def is_conflict(self) -> bool:
        """A compare-and-swap lost (stale resourceVersion, failed precondition): re-read and retry."""
        return self.code == 409 and self.reason != "AlreadyExists"

    def is_already_exists(self) -> bool:
        return self.code == 409 and self.reason == "AlreadyExists"

    def is_gone(self) -> bool:
        """The resourceVersion (or continue token) was compacted away: relist."""
        return self.code == 410

    def is_invalid(self) -> bool:
        return self.code == 422

    def is_forbidden(self) -> bool:
        return self.code == 403

    def is_retryable(self) -> bool:
        """Server-side trouble that may pass: overloaded, timed out, unavailable."""
        return self.code in (429, 500, 503, 504)
