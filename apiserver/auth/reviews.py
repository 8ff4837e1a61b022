"""authorization.k8s.io/v1 access reviews: asked, answered from the authorizer chain, never stored.

- SelfSubjectAccessReview: may I do this? (`kubectl auth can-i VERB RESOURCE`)
- SelfSubjectRulesReview: what may I do in namespace NS? (`kubectl auth can-i --list`)
- SubjectAccessReview / LocalSubjectAccessReview: may user U (groups G) do this? For admins and
  delegating components; creating one needs "create" on it, as any other resource.

The answer is the posted object with its status filled in, 201 Created, as upstream.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from kube.api.resources import REVIEW_RESOURCES, ResourceType

from .. import errors
from . import Attributes, Decision, UserInfo
from .authz import Authz
from .rbac import RulesResult

Obj = dict[str, Any]
RESOURCES = REVIEW_RESOURCES  # the kinds answered here


def _invalid(rt: ResourceType, field: str, value: Any, message: str) -> errors.APIError:
    return errors.invalid(rt, "", [{"reason": "FieldValueInvalid", "field": field,
                                    "message": f"Invalid value: {_go(value)}: {message}"}])


def _go(value: Any) -> str:
    if value is None:
        return '"null"'
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _go_struct(type_name: str, value: Any, fields: tuple[str, ...]) -> str:
    """A pointer to a struct as Go's %#v prints it, e.g. &authorization.NonResourceAttributes{Path:"/x", Verb:"get"}."""
    v = value if isinstance(value, dict) else {}
    inner = ", ".join(f'{f[0].upper()}{f[1:]}:"{_str(v.get(f))}"' for f in fields)
    return f"&{type_name}{{{inner}}}"


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _check_body(rt: ResourceType, body: Any) -> Obj:
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body of the request must be a JSON object describing a {rt.kind}")
    if body.get("apiVersion") not in (None, rt.api_version):
        raise errors.bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the "
                                 f"expected API version ({rt.api_version})")
    if body.get("kind") not in (None, rt.kind):
        raise errors.bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                                 f"({rt.kind})")
    for key in ("spec", "metadata"):
        if body.get(key) is not None and not isinstance(body.get(key), dict):
            raise errors.bad_request(f"{rt.kind}.{key} must be an object")
    return body


def _check_spec(rt: ResourceType, spec: Obj) -> None:
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if res is not None and non is not None:
        shown = _go_struct("authorization.NonResourceAttributes", non, ("path", "verb"))
        raise errors.invalid(rt, "", [{"reason": "FieldValueInvalid", "field": "spec.nonResourceAttributes",
                                       "message": f"Invalid value: {shown}: cannot be specified in combination with "
                                                  f"resourceAttributes"}])
    if res is None and non is None:
        raise _invalid(rt, "spec.resourceAttributes", None,
                       "exactly one of nonResourceAttributes or resourceAttributes must be specified")
    for key, value in (("resourceAttributes", res), ("nonResourceAttributes", non)):
        if value is not None and not isinstance(value, dict):
            raise errors.bad_request(f"{rt.kind}.spec.{key} must be an object")


def spec_attributes(user: UserInfo, spec: Obj) -> Attributes:
    """The Attributes a review's spec asks about (authorizationutil.ResourceAttributesFrom)."""
    res = spec.get("resourceAttributes")
    if isinstance(res, dict):
        fs = res.get("fieldSelector")
        raw = _str(fs.get("rawSelector")) if isinstance(fs, dict) else ""
        return Attributes(user, _str(res.get("verb")), True, _str(res.get("group")), _str(res.get("version")),
                          _str(res.get("resource")), _str(res.get("subresource")), _str(res.get("namespace")),
                          _str(res.get("name")), field_selector=raw)
    non = spec.get("nonResourceAttributes") or {}
    return Attributes(user, _str(non.get("verb")), resource_request=False, path=_str(non.get("path")))


def _status(d: Decision) -> Obj:
    status: Obj = {"allowed": d.allowed}
    if d.reason:
        status["reason"] = d.reason
    return status


def _response(rt: ResourceType, body: Obj, spec: Obj, status: Obj) -> Obj:
    meta = dict(body.get("metadata") or {})
    meta.setdefault("creationTimestamp", None)
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta, "spec": spec, "status": status}


def _rules_status(result: RulesResult) -> Obj:
    def resource_rule(r: Any) -> Obj:
        out: Obj = {"verbs": sorted(r.verbs), "apiGroups": sorted(r.api_groups), "resources": list(r.resources)}
        if r.resource_names:
            out["resourceNames"] = sorted(r.resource_names)
        return out

    status: Obj = {
        "resourceRules": [resource_rule(r) for r in result.resource_rules],
        "nonResourceRules": [{"verbs": sorted(r.verbs), "nonResourceURLs": list(r.non_resource_urls)}
                             for r in result.non_resource_rules],
        "incomplete": result.incomplete,
    }
    if result.errors:
        status["evaluationError"] = ", ".join(result.errors)
    return status


async def _decide(authz: Authz | None, attrs: Attributes) -> Decision:
    if authz is None:
        return Decision(True, "no authorization is configured")
    return await authz.decide(attrs)


async def review(authz: Authz | None, user: UserInfo, rt: ResourceType, namespace: str | None, body: Any) -> Obj:
    """Answer one review posted by `user` (the request's, possibly impersonated, user)."""
    body = copy.deepcopy(_check_body(rt, body))
    spec: Obj = body.get("spec") or {}
    if rt.name == "selfsubjectrulesreviews":
        ns = _str(spec.get("namespace"))
        if not ns:
            raise errors.bad_request("no namespace on request")
        result = authz.rules_for(user, ns) if authz is not None else RulesResult(incomplete=True)
        return _response(rt, body, spec, _rules_status(result))
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if v not in (None, "", {}, [])}
    if rt.name in ("selfsubjectaccessreviews", "subjectaccessreviews") and meta:
        raise _invalid(rt, "metadata", orjson.dumps(meta).decode(), "must be empty")
    _check_spec(rt, spec)
    if rt.name == "selfsubjectaccessreviews":
        return _response(rt, body, spec, _status(await _decide(authz, spec_attributes(user, spec))))
    # SubjectAccessReview / LocalSubjectAccessReview: about the user named in the spec
    who, groups = _str(spec.get("user")), [g for g in spec.get("groups") or [] if isinstance(g, str)]
    if not who and not groups:
        raise _invalid(rt, "spec.user", who, "at least one of user or group must be specified")
    if rt.name == "localsubjectaccessreviews":
        res = spec.get("resourceAttributes")
        if isinstance(res, dict):
            res_ns = _str(res.get("namespace"))
            if not res_ns:
                res["namespace"] = namespace or ""
            elif res_ns != namespace:
                raise errors.bad_request(f"spec.resourceAttributes.namespace must match namespace: {namespace}")
        else:
            shown = _go_struct("authorization.NonResourceAttributes", spec.get("nonResourceAttributes"),
                               ("path", "verb"))
            raise errors.invalid(rt, "", [{"reason": "FieldValueInvalid", "field": "spec.nonResourceAttributes",
                                           "message": f"Invalid value: {shown}: disallowed on this kind of request"}])
    extra = {k: tuple(v) for k, v in (spec.get("extra") or {}).items() if isinstance(v, list)}
    # exactly the groups given, as upstream: "what if this user were in no groups" when there are none
    subject = UserInfo(who, tuple(groups), _str(spec.get("uid")), extra)
    return _response(rt, body, spec, _status(await _decide(authz, spec_attributes(subject, spec))))
