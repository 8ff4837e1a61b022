"""Errors the agent reports in container status (reason + upstream-worded message)."""

from __future__ import annotations


class ContainerConfigError(Exception):
    """A container cannot be created from its spec as it stands (waiting reason + message).

    `reason` is the kubelet waiting reason ("CreateContainerConfigError");
    `message` is upstream's wording, e.g. ``configmap "cfg" not found``.
    """

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProbeError(Exception):
    """A probe could not be run at all (bad spec); probes report this as a failure."""
