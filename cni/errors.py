"""CNI error codes (spec 1.1, "Error" section) and the exception the plugin raises.

Codes 1-99 are reserved by the spec; 100+ are ours. Every failure the plugin
reports is a CNIError, so the executable can always print a spec error JSON.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
LIMITED_RESOURCES = 51

# plugin-specific codes (100+)
INTERNAL = 100
IP_EXHAUSTED = 101
INTERFACE_EXISTS = 102
CHECK_FAILED = 103
BRIDGE_CONFLICT = 104
ATTACHMENT_EXISTS = 105
IP_UNAVAILABLE = 106
FIREWALL_FAILURE = 107


class CNIError(Exception):
    """A failure reported to the runtime as {"code", "msg", "details"}."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
