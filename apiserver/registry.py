"""The generic registry: Kubernetes REST semantics over the store.

Every resource goes through the same create/get/list/update/patch/delete/
watch code; what differs per resource (status handling, generation, graceful
deletion, Service allocation, the scale and binding subresources) is decided
by small hooks keyed on the resource type. Objects are plain JSON dicts; the
store keeps them without resourceVersion, which is the store revision.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from kube.api import defaults, patch, schema, selectors, validation
from kube.api.resources import ResourceType, lookup

from . import errors
from .allocators import AllocationError, ClusterIPAllocator, PortAllocator
from .errors import APIError
from .store.base import (
    KV,
    Compacted,
    Event,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Store,
    StoreUnavailable,
)

log = logging.getLogger("kubeling.registry")

GENERATION_GROUPS = {"apps", "batch"}  # resources whose spec changes bump metadata.generation
RESET_STATUS_ON_CREATE = {"services", "deployments", "replicasets", "daemonsets", "jobs"}
RETURN_DELETED_OBJECT = {"pods"}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what upstream generateName draws from
PATCH_RETRIES = 5


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_key(rt: ResourceType, namespace: str | None, name: str) -> str:
    return f"/registry/{rt.key}/{namespace}/{name}" if rt.namespaced else f"/registry/{rt.key}/{name}"


def collection_prefix(rt: ResourceType, namespace: str | None) -> str:
    if rt.namespaced and namespace:
        return f"/registry/{rt.key}/{namespace}/"
    return f"/registry/{rt.key}/"


def decode(kv: KV, rev: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(rev if rev is not None else kv.mod_rev)
    return obj


def encode(obj: dict[str, Any]) -> bytes:
    meta = obj.get("metadata") or {}
    if "resourceVersion" in meta:
        obj = dict(obj)
        obj["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
    return orjson.dumps(obj)


def parse_rv(value: Any, what: str = "resourceVersion") -> int:
    if value in (None, ""):
        return 0
    try:
        rv = int(str(value))
    except ValueError:
        raise errors.bad_request(f"invalid {what} {value!r}: must be a decimal number") from None
    if rv < 0:
        raise errors.bad_request(f"invalid {what} {value!r}: must not be negative")
    return rv


@dataclass
class ListOptions:
    label_selector: selectors.LabelSelector | None = None
    field_selector: selectors.FieldSelector | None = None
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    timeout_seconds: float = 0
    allow_bookmarks: bool = False
    send_initial_events: bool | None = None

    def matches(self, obj: dict[str, Any]) -> bool:
        if self.label_selector is not None and not self.label_selector.matches(
                (obj.get("metadata") or {}).get("labels") or {}):
            return False
        return self.field_selector is None or self.field_selector.matches(obj)


@dataclass
class Result:
    code: int
    body: Any
    warnings: list[str] = field(default_factory=list)


INT64_MAX = 2**63 - 1


def _int_param(params: dict[str, str], name: str, default: int = 0) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise errors.bad_request(f"invalid value {raw!r} for query parameter {name}: must be an integer") from None
    if v < 0:
        raise errors.bad_request(f"invalid value {raw!r} for query parameter {name}: must not be negative")
    if v > INT64_MAX:
        raise errors.bad_request(f"invalid value {raw!r} for query parameter {name}: out of range (int64)")
    return v


def _bool_param(params: dict[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw.lower() in ("1", "true", "t", ""):
        return True
    if raw.lower() in ("0", "false", "f"):
        return False
    raise errors.bad_request(f"invalid value {raw!r} for query parameter {name}: must be true or false")


def list_options(rt: ResourceType, params: dict[str, str]) -> ListOptions:
    opts = ListOptions()
    try:
        if params.get("labelSelector"):
            opts.label_selector = selectors.parse_label_selector(params["labelSelector"])
        if params.get("fieldSelector"):
            allowed = selectors.FIELD_SELECTORS.get(rt.name, {"metadata.name", "metadata.namespace"})
            opts.field_selector = selectors.parse_field_selector(params["fieldSelector"], allowed)
    except selectors.SelectorError as e:
        raise errors.bad_request(f"unable to parse requirement: {e}") from None
    opts.limit = _int_param(params, "limit")
    opts.continue_token = params.get("continue", "")
    opts.resource_version = params.get("resourceVersion", "")
    parse_rv(opts.resource_version)
    opts.timeout_seconds = _int_param(params, "timeoutSeconds")
    opts.allow_bookmarks = bool(_bool_param(params, "allowWatchBookmarks"))
    opts.send_initial_events = _bool_param(params, "sendInitialEvents")
    return opts


def _encode_continue(rev: int, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"rv": rev, "start": key})).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(raw["rv"]), str(raw["start"])
    except (ValueError, KeyError, TypeError):
        raise errors.bad_request("continue key is not valid: the token is malformed") from None


class Registry:
    def __init__(self, store: Store, *, service_cidr: str = "10.96.0.0/12",
                 node_port_range: tuple[int, int] = (30000, 32767), bookmark_interval: float = 30.0) -> None:
        self.store = store
        self.cluster_ips = ClusterIPAllocator(service_cidr)
        self.node_ports = PortAllocator(*node_port_range)
        self.bookmark_interval = bookmark_interval

    # -- start-up ------------------------------------------------------------

    async def start(self) -> None:
        svc = lookup("", "v1", "services")
        ns = lookup("", "v1", "namespaces")
        assert svc and ns
        listed = await self.store.list(collection_prefix(svc, None))
        for kv in listed.items:
            spec = orjson.loads(kv.value).get("spec") or {}
            self._mark_service(spec)
        for name in SYSTEM_NAMESPACES:
            if await self.store.get(object_key(ns, None, name)) is None:
                try:
                    await self.create(ns, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, {})
                except APIError as e:
                    if e.code != 409:
                        raise
        if await self.store.get(object_key(svc, "default", "kubernetes")) is None:
            body = {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": self.cluster_ips.first,
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
            }
            try:
                await self.create(svc, "default", body, {})
            except APIError as e:
                if e.code not in (409, 422):
                    raise

    def _mark_service(self, spec: dict[str, Any]) -> None:
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            self.cluster_ips.mark(ip)
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                self.node_ports.mark(int(p["nodePort"]))

    # -- helpers -------------------------------------------------------------

    async def _get_kv(self, rt: ResourceType, ns: str | None, name: str) -> KV:
        kv = await self.store.get(object_key(rt, ns, name))
        if kv is None:
            raise errors.not_found(rt, name)
        return kv

    async def _check_namespace(self, rt: ResourceType, ns: str | None, *, creating: bool) -> None:
        if not rt.namespaced or not ns:
            return
        ns_rt = lookup("", "v1", "namespaces")
        assert ns_rt
        kv = await self.store.get(object_key(ns_rt, None, ns))
        if kv is None:
            raise errors.not_found(ns_rt, ns)
        if creating and rt.name not in ("events",) and orjson.loads(kv.value).get("metadata", {}).get("deletionTimestamp"):
            raise errors.forbidden(rt, "", f"unable to create new content in namespace {ns} because it is being "
                                           f"terminated")

    def _check_type(self, rt: ResourceType, obj: Any, params: dict[str, str], warnings: list[str]) -> dict[str, Any]:
        """Decode-time checks: the body is an object of this kind, typed as the schema says."""
        if not isinstance(obj, dict):
            raise errors.bad_request(f"the body of the request must be a JSON object describing a {rt.kind}")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version is not None and api_version != rt.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                                     f"version ({rt.api_version})")
        if kind is not None and kind != rt.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if not isinstance(obj.get("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")
        obj.setdefault("metadata", {})
        problems = schema.type_errors(rt.api_version, rt.kind, obj)
        if problems:
            raise errors.bad_request(schema.decode_error(rt.api_version, rt.kind, problems[0]))
        mode = params.get("fieldValidation", "Warn") or "Warn"
        if mode not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not {mode!r}')
        unknown = schema.unknown_fields(rt.api_version, rt.kind, obj)
        if unknown:
            if mode == "Strict":
                raise errors.bad_request(schema.decode_error(rt.api_version, rt.kind,
                                                             schema.strict_decoding_error(unknown)))
            if mode == "Warn":
                warnings.extend(schema.unknown_field_warnings(unknown))
            schema.prune_unknown_fields(rt.api_version, rt.kind, obj)
        return obj

    def _validate(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                  subresource: str = "") -> None:
        if subresource == "status" and old is not None:
            errs = validation.validate_status_update(rt.name, obj, old)
        elif old is not None:
            errs = validation.validate_update(rt.name, obj, old)
        else:
            errs = validation.validate_object(rt.name, obj)
        if errs:
            name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName") or ""
            raise errors.invalid(rt, name, [e.cause() for e in errs])

    # -- Service allocation --------------------------------------------------

    def _allocate_service(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                          undo: list[Callable[[], None]]) -> None:
        spec = obj.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        name = obj["metadata"].get("name", "")
        stype = spec.get("type", "ClusterIP")
        causes: list[dict[str, Any]] = []
        if stype == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        elif old is None or not old_spec.get("clusterIP"):
            want = spec.get("clusterIP") or ((spec.get("clusterIPs") or [""])[0])
            if want != "None":
                try:
                    ip = self.cluster_ips.allocate(want or "")
                    undo.append(lambda ip=ip: self.cluster_ips.release(ip))  # type: ignore[misc]
                    spec["clusterIP"] = ip
                    spec["clusterIPs"] = [ip]
                except AllocationError as e:
                    causes.append({"reason": "FieldValueInvalid", "field": "spec.clusterIPs",
                                   "message": f'Invalid value: ["{want}"]: {e}'})
            else:
                spec["clusterIPs"] = ["None"]
        wants_node_ports = stype in ("NodePort", "LoadBalancer")
        old_ports = {p.get("nodePort") for p in old_spec.get("ports") or [] if p.get("nodePort")}
        for i, p in enumerate(spec.get("ports") or []):
            if not isinstance(p, dict):
                continue
            if not wants_node_ports:
                if p.get("nodePort"):
                    causes.append({"reason": "FieldValueForbidden", "field": f"spec.ports[{i}].nodePort",
                                   "message": "Forbidden: may not be used when `type` is 'ClusterIP'"})
                continue
            want_port = int(p.get("nodePort") or 0)
            if want_port and want_port in old_ports:
                continue  # kept from before
            try:
                got = self.node_ports.allocate(want_port)
                undo.append(lambda got=got: self.node_ports.release(got))  # type: ignore[misc]
                p["nodePort"] = got
            except AllocationError as e:
                causes.append({"reason": "FieldValueInvalid", "field": f"spec.ports[{i}].nodePort",
                               "message": f"Invalid value: {want_port}: {e}"})
        if causes:
            for u in reversed(undo):
                u()
            undo.clear()
            raise errors.invalid(rt, name, causes)

    def _release_service(self, old: dict[str, Any], new: dict[str, Any] | None) -> None:
        """After a committed update/delete: free what the new state no longer uses."""
        old_spec, new_spec = old.get("spec") or {}, (new or {}).get("spec") or {}
        ip = old_spec.get("clusterIP")
        if ip and ip != "None" and new_spec.get("clusterIP") != ip:
            self.cluster_ips.release(ip)
        keep = {p.get("nodePort") for p in new_spec.get("ports") or [] if p.get("nodePort")}
        for p in old_spec.get("ports") or []:
            if p.get("nodePort") and p["nodePort"] not in keep:
                self.node_ports.release(int(p["nodePort"]))

    # -- create --------------------------------------------------------------

    async def create(self, rt: ResourceType, ns: str | None, body: Any, params: dict[str, str]) -> Result:
        warnings: list[str] = []
        obj = self._check_type(rt, body, params, warnings)
        meta = obj["metadata"]
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                         "the request")
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        await self._check_namespace(rt, ns, creating=True)
        dry_run = bool(params.get("dryRun"))
        generated = not meta.get("name") and bool(meta.get("generateName"))
        pristine = copy.deepcopy(obj) if generated else None  # each name attempt starts from the request
        for attempt in range(8):
            o = copy.deepcopy(pristine) if pristine is not None else obj
            m = o["metadata"]
            if not m.get("name") and m.get("generateName") and isinstance(m["generateName"], str):
                m["name"] = m["generateName"][:58] + "".join(random.choice(NAME_CHARS) for _ in range(5))
            self._prepare_create(rt, o)
            defaults.apply_defaults(rt.name, o)
            self._validate(rt, o, None)
            undo: list[Callable[[], None]] = []
            if rt.name == "services":
                self._allocate_service(rt, o, None, undo)
            if dry_run:
                for u in undo:
                    u()
                return Result(201, o, warnings)
            try:
                kv = await self.store.create(object_key(rt, ns, m["name"]), encode(o))
            except KeyExists:
                for u in undo:
                    u()
                if not generated or attempt == 7:
                    raise errors.already_exists(rt, m["name"]) from None
                continue
            except BaseException:
                for u in undo:
                    u()
                raise
            return Result(201, decode(kv), warnings)
        raise errors.internal("could not generate a unique name")  # pragma: no cover

    def _prepare_create(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        m = obj["metadata"]
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            m.pop(k, None)
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = now_rfc3339()
        if rt.group in GENERATION_GROUPS:
            m["generation"] = 1
        else:
            m.pop("generation", None)
        if rt.name in RESET_STATUS_ON_CREATE:
            obj["status"] = {}
        elif rt.name == "pods":
            obj["status"] = {"phase": "Pending"}
        elif rt.name == "namespaces":
            obj["status"] = {"phase": "Active"}
        if rt.name == "jobs":
            self._job_selector(obj)

    @staticmethod
    def _job_selector(job: dict[str, Any]) -> None:
        """Unless spec.manualSelector, a Job's pods are selected by its uid, as upstream generates."""
        spec = job.get("spec")
        if not isinstance(spec, dict) or spec.get("manualSelector"):
            return
        uid, name = job["metadata"]["uid"], job["metadata"].get("name", "")
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            tmeta = template.setdefault("metadata", {})
            if isinstance(tmeta, dict):
                tmeta["labels"] = {**(tmeta.get("labels") or {}), **labels}

    # -- read ----------------------------------------------------------------

    async def get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        return decode(await self._get_kv(rt, ns, name))

    async def list(self, rt: ResourceType, ns: str | None, opts: ListOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        prefix = collection_prefix(rt, ns)
        start_after = ""
        rev = 0
        if opts.continue_token:
            rev, start_after = _decode_continue(opts.continue_token)
            if rev and rev < self.store.compacted_revision:
                raise errors.gone("The provided continue parameter is too old to display a consistent list "
                                  "result. You can start a new list without the continue parameter.")
        items: list[dict[str, Any]] = []
        more = False
        last_key = ""
        filtered = opts.label_selector is not None or opts.field_selector is not None
        while True:
            want = opts.limit - len(items) if opts.limit else 0
            page = await self.store.list(prefix, start_after=start_after,
                                         limit=max(want, 500) if (filtered and want) else want)
            rev = rev or page.revision
            for kv in page.items:
                obj = decode(kv)
                last_key = kv.key
                if filtered and not opts.matches(obj):
                    continue
                items.append(obj)
                if opts.limit and len(items) >= opts.limit:
                    break
            if opts.limit and len(items) >= opts.limit:
                more = page.more or last_key != (page.items[-1].key if page.items else last_key)
                break
            if not page.more:
                break
            start_after = page.items[-1].key
        meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if more:
            meta["continue"] = _encode_continue(rev, last_key)
        return items, meta

    # -- update / patch ------------------------------------------------------

    async def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, params: dict[str, str],
                     subresource: str = "") -> Result:
        warnings: list[str] = []
        obj = self._check_type(rt, body, params, warnings)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the "
                                     "request")
        kv = await self._get_kv(rt, ns, name)
        expected = parse_rv(meta.get("resourceVersion"))
        if expected and expected != kv.mod_rev:
            raise errors.conflict(rt, name)
        res = await self._write_update(rt, ns, name, obj, kv, params, subresource)
        res.warnings.extend(warnings)
        return res

    async def patch(self, rt: ResourceType, ns: str | None, name: str, content_type: str, body: Any,
                    params: dict[str, str], subresource: str = "") -> Result:
        for _ in range(PATCH_RETRIES):
            kv = await self.store.get(object_key(rt, ns, name))
            if kv is None:
                if content_type == "application/apply-patch+yaml" and not subresource:
                    if not isinstance(body, dict) or not isinstance(body.setdefault("metadata", {}), dict):
                        raise errors.bad_request("an apply patch must be an object, and its metadata too")
                    body["metadata"].setdefault("name", name)
                    return await self.create(rt, ns, body, params)
                raise errors.not_found(rt, name)
            old = decode(kv)
            new = self._apply_patch(rt, old, content_type, body)
            if not isinstance(new, dict):
                raise errors.invalid(rt, name, [{"reason": "FieldValueInvalid", "field": "",
                                                 "message": "the patch did not produce an object"}])
            warnings: list[str] = []
            new = self._check_type(rt, new, params, warnings)
            nm = new.setdefault("metadata", {})
            if nm.get("name") != name:
                raise errors.bad_request(f"the name of the object ({nm.get('name')}) does not match the name on the "
                                         f"URL ({name}): metadata.name may not be changed by a patch")
            if rt.namespaced and nm.get("namespace") != ns:
                raise errors.bad_request("metadata.namespace may not be changed by a patch")
            explicit = nm.get("resourceVersion") != old["metadata"]["resourceVersion"]
            if explicit and parse_rv(nm.get("resourceVersion")) not in (0, kv.mod_rev):
                raise errors.conflict(rt, name)
            try:
                res = await self._write_update(rt, ns, name, new, kv, params, subresource, raise_conflict=explicit)
            except RevisionConflict:
                continue
            res.warnings.extend(warnings)
            return res
        raise errors.conflict(rt, name, "the object kept changing while the patch was applied; try again")

    def _apply_patch(self, rt: ResourceType, old: dict[str, Any], content_type: str, body: Any) -> Any:
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    raise errors.bad_request("a JSON patch must be a list of operations")
                return patch.json_patch(old, body)
            if not isinstance(body, dict):
                raise errors.bad_request("the patch must be a JSON object")
            if content_type == "application/merge-patch+json":
                return patch.json_merge_patch(old, body)
            if content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
                return patch.strategic_merge_patch(old, body, rt.kind)
        except patch.PatchError as e:
            raise errors.invalid(rt, old["metadata"].get("name", ""),
                                 [{"reason": "FieldValueInvalid", "field": "", "message": str(e)}]) from None
        raise errors.unsupported_media_type(content_type)

    async def _write_update(self, rt: ResourceType, ns: str | None, name: str, new: dict[str, Any], kv: KV,
                            params: dict[str, str], subresource: str, raise_conflict: bool = True) -> Result:
        old = decode(kv)
        new = self._merge_system_fields(rt, new, old, subresource)
        if subresource not in ("status", "finalize"):  # defaults would put spec.finalizers back
            defaults.apply_defaults(rt.name, new)
        self._validate(rt, new, old, subresource)
        undo: list[Callable[[], None]] = []
        if rt.name == "services" and subresource != "status":
            self._allocate_service(rt, new, old, undo)
        if params.get("dryRun"):
            for u in undo:
                u()
            return Result(200, new)
        if encode(new) == encode(old):
            return Result(200, old)  # no-op: no new revision, as upstream
        key = object_key(rt, ns, name)
        try:
            if self._finalized(rt, new):
                done = await self.store.delete(key, kv.mod_rev)
                if rt.name == "services":
                    self._release_service(old, None)
                return Result(200, decode(KV(key, encode(new), done.create_rev, done.mod_rev)))
            out = await self.store.update(key, encode(new), kv.mod_rev)
        except RevisionConflict:
            for u in undo:
                u()
            if raise_conflict:
                raise errors.conflict(rt, name) from None
            raise
        except KeyNotFound:
            for u in undo:
                u()
            raise errors.not_found(rt, name) from None
        except BaseException:
            for u in undo:
                u()
            raise
        if rt.name == "services":
            self._release_service(old, new)
        return Result(200, decode(out))

    def _merge_system_fields(self, rt: ResourceType, new: dict[str, Any], old: dict[str, Any],
                             subresource: str) -> dict[str, Any]:
        """What a client may not set through this endpoint is taken from the stored object."""
        has_status = "status" in rt.subresources
        if subresource == "status":
            out = copy.deepcopy(old)
            out["status"] = new.get("status")
            if out["status"] is None:
                out.pop("status")
            return out
        if subresource == "finalize":  # namespaces: only spec.finalizers
            out = copy.deepcopy(old)
            out.setdefault("spec", {})["finalizers"] = (new.get("spec") or {}).get("finalizers") or []
            return out
        nm, om = new.setdefault("metadata", {}), old["metadata"]
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if k in om:
                nm[k] = om[k]
            else:
                nm.pop(k, None)
        if rt.namespaced:
            nm["namespace"] = om.get("namespace")
        if has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if rt.name == "services":
            self._keep_allocations(new, old)
        if rt.group in GENERATION_GROUPS:
            gen = int(om.get("generation") or 1)
            if new.get("spec") != old.get("spec"):
                gen += 1
            nm["generation"] = gen
        else:
            nm.pop("generation", None)
        nm["resourceVersion"] = om["resourceVersion"]
        return new

    @staticmethod
    def _keep_allocations(new: dict[str, Any], old: dict[str, Any]) -> None:
        """An update that leaves out the allocated clusterIP / nodePorts keeps them (as upstream)."""
        spec, old_spec = new.get("spec"), old.get("spec") or {}
        if not isinstance(spec, dict):
            return
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
            if not spec.get("clusterIPs"):
                spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]
        if spec.get("type", "ClusterIP") in ("NodePort", "LoadBalancer"):
            allocated = {(p.get("port"), p.get("protocol", "TCP")): p["nodePort"]
                         for p in old_spec.get("ports") or [] if isinstance(p, dict) and p.get("nodePort")}
            for p in spec.get("ports") or []:
                if isinstance(p, dict) and not p.get("nodePort"):
                    got = allocated.get((p.get("port"), p.get("protocol", "TCP")))
                    if got:
                        p["nodePort"] = got

    @staticmethod
    def _finalized(rt: ResourceType, obj: dict[str, Any]) -> bool:
        """Deletion is pending and nothing holds the object back any more."""
        m = obj.get("metadata") or {}
        if not m.get("deletionTimestamp") or m.get("finalizers"):
            return False
        if rt.name == "namespaces" and (obj.get("spec") or {}).get("finalizers"):
            return False
        if rt.name == "pods" and int(m.get("deletionGracePeriodSeconds") or 0) > 0:
            return False
        return True

    # -- delete --------------------------------------------------------------

    async def delete(self, rt: ResourceType, ns: str | None, name: str, options: dict[str, Any],
                     params: dict[str, str]) -> Result:
        if not isinstance(options, dict):
            raise errors.bad_request("the DeleteOptions body must be a JSON object")
        if options.get("kind") not in (None, "DeleteOptions"):
            raise errors.bad_request(f"the body of a delete must be DeleteOptions, not {options.get('kind')}")
        problems = schema.type_errors("v1", "DeleteOptions", options)
        if problems:
            raise errors.bad_request(schema.decode_error("v1", "DeleteOptions", problems[0]))
        grace: int | None = None
        raw_grace = options.get("gracePeriodSeconds", params.get("gracePeriodSeconds"))
        if raw_grace not in (None, ""):
            try:
                grace = max(0, int(raw_grace))  # type: ignore[arg-type]
                if grace > INT64_MAX:
                    raise ValueError(raw_grace)
            except (TypeError, ValueError):
                raise errors.bad_request(f"gracePeriodSeconds must be an integer, not {raw_grace!r}") from None
        policy = options.get("propagationPolicy") or params.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.bad_request(f'propagationPolicy must be one of "Orphan", "Background", "Foreground", not '
                                     f'{policy!r}')
        orphan = options.get("orphanDependents", params.get("orphanDependents"))
        if policy is None and orphan in (True, "true"):
            policy = "Orphan"
        pre = options.get("preconditions") or {}
        for _ in range(PATCH_RETRIES):
            kv = await self._get_kv(rt, ns, name)
            obj = decode(kv)
            m = obj["metadata"]
            if pre.get("uid") and pre["uid"] != m.get("uid"):
                raise errors.conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                                f"object meta: {m.get('uid')}")
            if pre.get("resourceVersion") and str(pre["resourceVersion"]) != m["resourceVersion"]:
                raise errors.conflict(rt, name, f"Precondition failed: ResourceVersion in precondition: "
                                                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                                f"{m['resourceVersion']}")
            g = self._grace_period(rt, obj, grace)
            finalizers = list(m.get("finalizers") or [])
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            elif policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            spec_finalizers = rt.name == "namespaces" and bool((obj.get("spec") or {}).get("finalizers"))
            try:
                if g == 0 and not finalizers and not spec_finalizers:
                    if params.get("dryRun"):
                        return Result(200, obj)
                    done = await self.store.delete(kv.key, kv.mod_rev)
                    if rt.name == "services":
                        self._release_service(obj, None)
                    if rt.name in RETURN_DELETED_OBJECT:
                        return Result(200, decode(done))
                    return Result(200, errors.success_status(rt, name, m.get("uid", "")))
                # Deletion is pending: mark it and let the agent / finalizers finish it.
                new = copy.deepcopy(obj)
                nm = new["metadata"]
                if nm.get("deletionTimestamp"):
                    if rt.name == "pods" and g < int(nm.get("deletionGracePeriodSeconds") or 0):
                        nm["deletionGracePeriodSeconds"] = g
                        nm["deletionTimestamp"] = self._deadline(g)
                else:
                    nm["deletionTimestamp"] = self._deadline(g)
                    nm["deletionGracePeriodSeconds"] = g
                    if nm.get("generation"):
                        nm["generation"] = int(nm["generation"]) + 1
                if finalizers:
                    nm["finalizers"] = finalizers
                if rt.name == "namespaces":
                    new.setdefault("status", {})["phase"] = "Terminating"
                if params.get("dryRun") or encode(new) == encode(obj):
                    return Result(202, obj)
                key = kv.key
                if self._finalized(rt, new):
                    done = await self.store.delete(key, kv.mod_rev)
                    if rt.name in RETURN_DELETED_OBJECT:
                        return Result(200, decode(done))
                    return Result(200, errors.success_status(rt, name, m.get("uid", "")))
                out = await self.store.update(key, encode(new), kv.mod_rev)
                return Result(202, decode(out))
            except RevisionConflict:
                if pre.get("resourceVersion"):
                    raise errors.conflict(rt, name) from None
                continue
            except KeyNotFound:
                raise errors.not_found(rt, name) from None
        raise errors.conflict(rt, name, "the object kept changing during the delete; try again")

    @staticmethod
    def _deadline(grace: int) -> str:
        return (datetime.now(UTC) + timedelta(seconds=grace)).strftime("%Y-%m-%dT%H:%M:%SZ")

    @staticmethod
    def _grace_period(rt: ResourceType, obj: dict[str, Any], requested: int | None) -> int:
        if rt.name != "pods":
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0  # never started anywhere: nothing to wait for
        if requested is not None:
            return requested
        return int(spec.get("terminationGracePeriodSeconds", 30) or 0)

    async def delete_collection(self, rt: ResourceType, ns: str | None, options: dict[str, Any],
                                params: dict[str, str]) -> Result:
        if not isinstance(options, dict):
            raise errors.bad_request("the DeleteOptions body must be a JSON object")
        opts = list_options(rt, params)
        opts.limit = 0
        items, meta = await self.list(rt, ns, opts)
        deleted = []
        for obj in items:
            m = obj["metadata"]
            try:
                res = await self.delete(rt, m.get("namespace"), m["name"], dict(options), params)
            except APIError as e:
                if e.code == 404:
                    continue
                raise
            if isinstance(res.body, dict) and res.body.get("kind") == rt.kind:
                deleted.append(res.body)
            else:
                deleted.append(obj)
        return Result(200, {"kind": rt.list_kind_name, "apiVersion": rt.api_version, "metadata": meta,
                            "items": deleted})

    # -- subresources --------------------------------------------------------

    def scale_of(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        sel = ""
        try:
            sel = str(selectors.label_selector_from_dict(spec.get("selector")))
        except selectors.SelectorError:
            pass
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in m},
            "spec": {"replicas": int(spec.get("replicas", 1) or 0)},
            "status": {"replicas": int(status.get("replicas", 0) or 0), "selector": sel},
        }

    async def get_scale(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        return self.scale_of(rt, await self.get(rt, ns, name))

    async def update_scale(self, rt: ResourceType, ns: str | None, name: str, content_type: str | None, body: Any,
                           params: dict[str, str]) -> Result:
        for _ in range(PATCH_RETRIES):
            kv = await self._get_kv(rt, ns, name)
            obj = decode(kv)
            scale = self.scale_of(rt, obj)
            if content_type is None:
                new_scale = body
            elif content_type == "application/json-patch+json":
                try:
                    new_scale = patch.json_patch(scale, body)
                except patch.PatchError as e:
                    raise errors.bad_request(str(e)) from None
            elif isinstance(body, dict):
                new_scale = patch.json_merge_patch(scale, body)
            else:
                raise errors.bad_request("the patch must be a JSON object")
            if not isinstance(new_scale, dict) or not isinstance(new_scale.get("spec"), dict):
                raise errors.bad_request("the body must be an autoscaling/v1 Scale with spec.replicas")
            problems = schema.type_errors("autoscaling/v1", "Scale", new_scale)
            if problems:
                raise errors.bad_request(schema.decode_error("autoscaling/v1", "Scale", problems[0]))
            replicas = new_scale["spec"].get("replicas", 0)
            if not isinstance(replicas, int) or isinstance(replicas, bool):
                raise errors.bad_request("Scale.spec.replicas must be an integer")
            if replicas < 0:
                raise errors.APIError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                                      f'Invalid value: {replicas}: must be greater than or equal to 0',
                                      details={"name": name, "group": "autoscaling", "kind": "Scale",
                                               "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                                           "message": f"Invalid value: {replicas}: must be greater "
                                                                      f"than or equal to 0"}]})
            want_rv = parse_rv((new_scale.get("metadata") or {}).get("resourceVersion"))
            if content_type is None and want_rv and want_rv != kv.mod_rev:
                raise errors.conflict(rt, name)
            new = copy.deepcopy(obj)
            new.setdefault("spec", {})["replicas"] = replicas
            try:
                res = await self._write_update(rt, ns, name, new, kv, params, "", raise_conflict=False)
            except RevisionConflict:
                continue
            return Result(200, self.scale_of(rt, res.body))
        raise errors.conflict(rt, name)

    async def bind(self, rt: ResourceType, ns: str | None, name: str, body: Any) -> Result:
        if not isinstance(body, dict) or body.get("kind") not in (None, "Binding"):
            raise errors.bad_request("the body must be a v1 Binding")
        problems = schema.type_errors("v1", "Binding", body)
        if problems:
            raise errors.bad_request(schema.decode_error("v1", "Binding", problems[0]))
        target = body.get("target") or {}
        node = target.get("name")
        if not node or not isinstance(node, str):
            raise errors.APIError(422, "Invalid", f'Binding "{name}" is invalid: target.name: Required value',
                                  details={"name": name, "kind": "Binding", "causes": [
                                      {"reason": "FieldValueRequired", "field": "target.name",
                                       "message": "Required value"}]})
        for _ in range(PATCH_RETRIES):
            kv = await self._get_kv(rt, ns, name)
            pod = decode(kv)
            spec = pod.setdefault("spec", {})
            if pod["metadata"].get("deletionTimestamp"):
                raise errors.conflict(rt, name, "pod is being deleted, cannot be assigned to a host")
            if spec.get("nodeName"):
                raise errors.conflict(rt, name, f'pod {name} is already assigned to node "{spec["nodeName"]}"')
            spec["nodeName"] = node
            status = pod.setdefault("status", {})
            conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": now_rfc3339()})
            status["conditions"] = conds
            try:
                await self.store.update(kv.key, encode(pod), kv.mod_rev)
            except RevisionConflict:
                continue
            return Result(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                "code": 201})
        raise errors.conflict(rt, name)

    # -- watch ---------------------------------------------------------------

    async def watch(self, rt: ResourceType, ns: str | None, opts: ListOptions) -> AsyncIterator[dict[str, Any]]:
        """Yields watch events as {"type", "object"} dicts; ends on timeout."""
        rv = parse_rv(opts.resource_version)
        initial: list[dict[str, Any]] = []
        send_initial = opts.send_initial_events
        if rv == 0 or send_initial:
            items, meta = await self.list(rt, ns, ListOptions(opts.label_selector, opts.field_selector))
            initial = items
            if rv == 0:
                rv = int(meta["resourceVersion"])
        if rv < self.store.compacted_revision:
            yield {"type": "ERROR", "object": errors.gone(f"too old resource version: {rv} "
                                                          f"({self.store.compacted_revision})").status()}
            return
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        if send_initial:
            yield self._bookmark(rt, rv, initial_end=True)
        queue: asyncio.Queue[Event | None | Exception] = asyncio.Queue()
        events = self.store.watch(collection_prefix(rt, ns), rv)

        async def pump() -> None:
            try:
                async for ev in events:
                    queue.put_nowait(ev)
                queue.put_nowait(None)
            except (StoreUnavailable, Compacted) as ex:
                queue.put_nowait(ex)
            except Exception as ex:  # never leave the stream hanging on a bug
                log.exception("watch on %s failed", rt.name)
                queue.put_nowait(ex)

        task = asyncio.create_task(pump())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.timeout_seconds if opts.timeout_seconds else None
        last_rev = rv
        try:
            while True:
                wait = self.bookmark_interval if opts.allow_bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        return
                    wait = left if wait is None else min(wait, left)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if opts.allow_bookmarks and queue.empty():
                        yield self._bookmark(rt, last_rev)  # everything up to here was delivered
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    if isinstance(item, Compacted):
                        yield {"type": "ERROR", "object": errors.gone(
                            f"too old resource version: {item.requested} ({item.compacted})").status()}
                    return
                last_rev = item.rev
                out = self._filter_event(item, opts)
                if out is not None:
                    yield out
        finally:
            task.cancel()

    def _bookmark(self, rt: ResourceType, rev: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

    @staticmethod
    def _filter_event(ev: Event, opts: ListOptions) -> dict[str, Any] | None:
        obj = orjson.loads(ev.value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(ev.rev)
        if opts.label_selector is None and opts.field_selector is None:
            return {"type": ev.type, "object": obj}
        now_match = opts.matches(obj)
        if ev.type == "MODIFIED" and ev.prev is not None:
            prev = orjson.loads(ev.prev)
            was = opts.matches(prev)
            if was and not now_match:
                return {"type": "DELETED", "object": obj}
            if now_match and not was:
                return {"type": "ADDED", "object": obj}
        return {"type": ev.type, "object": obj} if now_match else None
