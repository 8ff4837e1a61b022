"""ServiceAccount controller: every active namespace has a "default" ServiceAccount, as upstream's
serviceaccounts-controller (pkg/controller/serviceaccount) ensures.

Keyed by namespace: a namespace that appears, or whose "default" ServiceAccount is deleted, is
reconciled; a namespace being deleted is left alone (its content is going away).
"""

from __future__ import annotations

import logging
from typing import Any

from controllers.base import Controller
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.serviceaccount")

DEFAULT_NAME = "default"


def _default_sa_namespace(sa: dict[str, Any]) -> str | None:
    m = sa.get("metadata") or {}
    return m.get("namespace") if m.get("name") == DEFAULT_NAME else None


class ServiceAccountController(Controller):
    name = "serviceaccount"

    def setup(self) -> None:
        self.namespaces = self.watch("namespaces")
        self.accounts = self.watch("serviceaccounts", key_fn=_default_sa_namespace)

    def reconcile(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or (ns.get("metadata") or {}).get("deletionTimestamp") or \
                (ns.get("status") or {}).get("phase") == "Terminating":
            return
        if self.accounts.get(f"{key}/{DEFAULT_NAME}") is not None:
            return
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT_NAME, "namespace": key}}
        try:
            self.client.create("serviceaccounts", body, namespace=key)
        except ApiError as e:
            if e.code == 409:
                return  # made meanwhile (by us on another worker, or by someone else): what we wanted
            if e.code in (403, 404):
                return  # the namespace is terminating or gone: nothing to do
            raise
        log.info("namespace=%s created serviceaccount %s", key, DEFAULT_NAME)
