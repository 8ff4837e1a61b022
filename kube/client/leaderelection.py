"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection.

    elector = LeaderElector(client, "kube-system", "kube-scheduler", identity="host_1234",
                            on_started_leading=start_work, on_stopped_leading=stop_work)
    elector.start()          # a thread: acquire, then renew every retry_period
    ...
    elector.stop()           # stops renewing; releases the lease (release_on_cancel) so another
                             # candidate takes over at once instead of after lease_duration

The rules (upstream's):
- A candidate takes the Lease when it does not exist, when its holderIdentity is empty, or when
  its record has not changed for lease_duration as observed on the candidate's *own* clock (the
  holder's renewTime is not trusted, clocks differ). Taking over increments leaseTransitions and
  sets acquireTime.
- Every write is a compare-and-swap on metadata.resourceVersion: of two candidates racing for the
  same Lease exactly one wins, the other gets 409 and tries again after retry_period.
- The leader renews every retry_period; if no renewal succeeded within renew_deadline it steps
  down (on_stopped_leading) before its lease could have expired for the others.
  (lease_duration > renew_deadline > retry_period, like the defaults 15 s / 10 s / 2 s.)

Callbacks run on the elector's thread and must return quickly (start or stop workers there).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError, ClientError
from .rest import Client

log = logging.getLogger("kubeling.client.leaderelection")
LEASES = "leases.coordination.k8s.io"
JITTER = 1.2  # upstream JitterFactor for the acquire retries


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: Client, namespace: str, name: str, identity: str, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_started_leading: Callable[[], None] | None = None,
                 on_stopped_leading: Callable[[], None] | None = None,
                 on_new_leader: Callable[[str], None] | None = None, release_on_cancel: bool = True) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError(f"leader election needs lease_duration > renew_deadline > retry_period > 0, "
                             f"got {lease_duration}, {renew_deadline}, {retry_period}")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.release_on_cancel = release_on_cancel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._observed: tuple[Any, ...] | None = None  # the last Lease spec seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self._observed_rv = ""
        self._leader = ""

    # -- lifecycle --

    def start(self) -> LeaderElector:
        if self._thread is not None:
            raise RuntimeError("the elector is already started")
        self._thread = threading.Thread(target=self.run, name=f"leaderelection-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str:
        """The identity of the last observed holder ("" if none)."""
        return self._leader

    def run(self) -> None:
        """Acquire, lead until the lease is lost or stop(), and repeat until stop()."""
        while not self._stop.is_set():
            if not self._acquire():
                break
            self._set_leading(True)
            self._renew_loop()
            self._set_leading(False)
        if self.release_on_cancel:
            self._release()

    # -- the loop --

    def _acquire(self) -> bool:
        log.info("leaderelection: %s trying to acquire lease %s/%s", self.identity, self.namespace, self.name)
        while not self._stop.is_set():
            if self._try_acquire_or_renew():
                log.info("leaderelection: %s acquired lease %s/%s", self.identity, self.namespace, self.name)
                return True
            self._stop.wait(self.retry_period * random.uniform(1.0, JITTER))
        return False

    def _renew_loop(self) -> None:
        last_renew = time.monotonic()
        while not self._stop.wait(self.retry_period):
            if self._try_acquire_or_renew():
                last_renew = time.monotonic()
                continue
            if time.monotonic() - last_renew >= self.renew_deadline or self._leader != self.identity:
                log.warning("leaderelection: %s lost lease %s/%s", self.identity, self.namespace, self.name)
                return

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        cb = self.on_started_leading if leading else self.on_stopped_leading
        if cb is not None:
            try:
                cb()
            except Exception:
                log.exception("leaderelection: a %s callback failed",
                              "on_started_leading" if leading else "on_stopped_leading")

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("leaseDurationSeconds"), spec.get("acquireTime"),
                  spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        self._observed_rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        holder = str(spec.get("holderIdentity") or "")
        if holder != self._leader:
            self._leader = holder
            if holder and self.on_new_leader is not None:
                try:
                    self.on_new_leader(holder)
                except Exception:
                    log.exception("leaderelection: the on_new_leader callback failed")

    def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        duration = max(1, round(self.lease_duration))
        try:
            try:
                lease = self.client.get(LEASES, self.name, namespace=self.namespace)
            except ApiError as e:
                if not e.is_not_found():
                    raise
                created = self.client.create(LEASES, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}},
                    namespace=self.namespace)
                self._observe(created)
                return True
            self._observe(lease)
            spec = lease.setdefault("spec", {})
            holder = str(spec.get("holderIdentity") or "")
            held_for = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if holder and holder != self.identity and time.monotonic() < self._observed_at + held_for:
                return False  # someone else holds an unexpired lease
            if holder != self.identity:
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
                spec["acquireTime"] = now
            spec["holderIdentity"] = self.identity
            spec["leaseDurationSeconds"] = duration
            spec["renewTime"] = now
            updated = self.client.update(LEASES, lease, namespace=self.namespace)
            self._observe(updated)
            return True
        except ApiError as e:
            if e.is_conflict() or e.is_already_exists():
                log.debug("leaderelection: %s lost a race for %s/%s", self.identity, self.namespace, self.name)
            else:
                log.info("leaderelection: %s: lease %s/%s: %s", self.identity, self.namespace, self.name, e)
            return False
        except ClientError as e:
            log.info("leaderelection: %s: lease %s/%s: %s", self.identity, self.namespace, self.name, e)
            return False

    def _release(self) -> None:
        """Give the lease up if we hold it, so the next candidate need not wait for it to expire."""
        try:
            lease = self.client.get(LEASES, self.name, namespace=self.namespace)
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != self.identity:
                return
            now = micro_time()
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now, "acquireTime": now})
            self.client.update(LEASES, lease, namespace=self.namespace)
            log.info("leaderelection: %s released lease %s/%s", self.identity, self.namespace, self.name)
        except ClientError as e:
            log.info("leaderelection: %s could not release lease %s/%s: %s", self.identity, self.namespace,
                     self.name, e)
