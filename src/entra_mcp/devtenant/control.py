"""The emulator's control API under /_emulator: a loopback test bed, so no auth and secrets in the clear.

Routes (JSON in and out):
  GET  /_emulator/tenants                                   tenants, domains, registrations (client ids, secrets,
                                                            certificate + key PEM, granted roles, redirect URIs)
  GET  /_emulator/tenants/{tid}/snapshot                    ground truth: every live object and link
  POST /_emulator/tenants/{tid}/mutations                   {"mutations": [op, ...]} or [op, ...]: applied in order
  PUT  /_emulator/tenants/{tid}/registrations/{cid}/roles   {"roles": [...]} (replace) or {"grant": [...], "revoke": [...]}
  POST /_emulator/tenants/{tid}/registrations/{cid}/redirect_uris   {"add": [...], "remove": [...]} or {"set": [...]}
  GET  /_emulator/faults, POST /_emulator/faults            FaultPlan fields and delta settings (see `set_faults`)
  POST /_emulator/clock                                     {"seconds": N}: advance emulator time (delta-token age)
  POST /_emulator/throttle/reset                            empty every resource-unit bucket
  POST /_emulator/tenants/{tid}/signins                     {"events": [...]}: add sign-in events (graph_signins.py)
  GET  /_emulator/signins/settings, POST (same path)        the sign-in stream's knobs (SignInSettings)
A tenant is addressed by id or domain. The same operations are plain functions here (`apply_mutations`,
`set_faults`, `tenants_document`) for in-process tests and the soak test.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from entra_mcp.devtenant import graph_access
from entra_mcp.devtenant.delta import expire_all
from entra_mcp.devtenant.graph_account import ACCOUNT_OPS
from entra_mcp.devtenant.graph_signins import emulation
from entra_mcp.devtenant.model import DEFAULT_ACCESS_ROLE, EXPIRY_RESPONSES, EmulatedTenant, EmulatorState, MutationError
from entra_mcp.devtenant.runtime import EmulatorRuntime
from entra_mcp.logs import get_logger

log = get_logger("devtenant.control")


def _arg(op: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in op:
            return op[n]
    raise MutationError(f"operation '{op.get('op')}' needs '{names[0]}'")


def _props(op: dict[str, Any]) -> dict[str, Any]:
    props = op.get("set", op.get("props", {}))
    if not isinstance(props, dict):
        raise MutationError(f"operation '{op.get('op')}': 'set' must be an object")
    return props


_OPS: dict[str, Callable[[EmulatedTenant, dict[str, Any]], Any]] = {
    "create_user": lambda t, op: t.create_user(_props(op)),
    "create_group": lambda t, op: t.create_group({**_props(op), **({"members": op["members"]} if "members" in op else {})}),
    "create_application": lambda t, op: t.create_application(_props(op)),
    "create_service_principal": lambda t, op: t.create_service_principal(_props(op)),
    "update_user": lambda t, op: t.update_object(_arg(op, "id"), _props(op), "users"),
    "update_group": lambda t, op: t.update_object(_arg(op, "id"), _props(op), "groups"),
    "update_application": lambda t, op: t.update_object(_arg(op, "id"), _props(op), "applications"),
    "update_service_principal": lambda t, op: t.update_object(_arg(op, "id"), _props(op), "servicePrincipals"),
    "update_object": lambda t, op: t.update_object(_arg(op, "id"), _props(op)),
    "set_password": lambda t, op: t.update_object(_arg(op, "id"), {"password": _arg(op, "password")}, "users"),
    "disable_user": lambda t, op: t.disable_user(_arg(op, "id")),
    "enable_user": lambda t, op: t.enable_user(_arg(op, "id")),
    "soft_delete": lambda t, op: {"id": op.get("id"), "reason": t.soft_delete(_arg(op, "id")).reason},
    "restore": lambda t, op: t.restore(_arg(op, "id")),
    "hard_delete": lambda t, op: {"id": op.get("id"), "reason": t.hard_delete(_arg(op, "id")).reason},
    "add_member": lambda t, op: {"changed": t.add_member(_arg(op, "group", "groupId"), _arg(op, "member", "memberId"))},
    "remove_member": lambda t, op: {"changed": t.remove_member(_arg(op, "group", "groupId"), _arg(op, "member", "memberId"))},
    "set_manager": lambda t, op: t.set_manager(_arg(op, "user", "id"), op.get("manager")),
    "add_app_role_assignment": lambda t, op: t.add_app_role_assignment(
        _arg(op, "resource", "resourceId"), _arg(op, "principal", "principalId"), op.get("appRoleId") or DEFAULT_ACCESS_ROLE),
    "remove_app_role_assignment": lambda t, op: t.remove_app_role_assignment(_arg(op, "id")),
    "add_password_credential": lambda t, op: dict(zip(("credential", "secretText"), t.add_password_credential(
        _arg(op, "id"), op.get("displayName", ""), op.get("endDateTime")))),
    "remove_password_credential": lambda t, op: t.remove_password_credential(_arg(op, "id"), _arg(op, "keyId")),
    "add_key_credential": lambda t, op: t.add_key_credential(_arg(op, "id"), op.get("displayName", ""), op.get("endDateTime")),
    "remove_key_credential": lambda t, op: t.remove_key_credential(_arg(op, "id"), _arg(op, "keyId")),
    "set_premium": lambda t, op: setattr(t, "premium", bool(_arg(op, "premium"))),
}
_OPS.update(graph_access.MUTATIONS)  # devices, owners, Conditional Access policies
_OPS.update(ACCOUNT_OPS)  # roles, registration details, licence states, risk (graph_account.py)
MUTATION_OPS = tuple(sorted(_OPS))


def apply_mutation(tenant: EmulatedTenant, op: dict[str, Any]) -> Any:
    """Apply one operation {"op": name, ...}; returns what it made (an object, a credential...) or None."""
    name = op.get("op") if isinstance(op, dict) else None
    fn = _OPS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise MutationError(f"unknown operation {name!r}; known: {', '.join(MUTATION_OPS)}")
    with tenant.lock:
        return fn(tenant, op)


def apply_mutations(tenant: EmulatedTenant, ops: list[dict[str, Any]]) -> list[Any]:
    """Apply operations in order (not atomic: those before a failing one stay applied)."""
    return [apply_mutation(tenant, op) for op in ops]


def _registration_doc(reg: Any) -> dict[str, Any]:
    return {
        "clientId": reg.client_id, "displayName": reg.display_name, "grantedRoles": list(reg.granted_roles),
        "redirectUris": list(reg.redirect_uris), "exposedScopes": list(reg.exposed_scopes),
        "exposedAppRoles": list(reg.exposed_app_roles), "signInAudience": reg.sign_in_audience,
        "secrets": [{"keyId": s.key_id, "value": s.value, "displayName": s.display_name, "endDateTime": s.end_date_time}
                    for s in reg.secrets],
        "certificates": [{"keyId": c.key_id, "thumbprintSha1": c.thumbprint_sha1_b64url,
                          "thumbprintSha256": c.thumbprint_sha256_b64url, "endDateTime": c.end_date_time,
                          "certificatePem": c.certificate_pem.decode(), "privateKeyPem": c.private_key_pem.decode(),
                          "pem": (c.certificate_pem + c.private_key_pem).decode()} for c in reg.certificates],
    }


def tenants_document(state: EmulatorState) -> dict[str, Any]:
    out = []
    for t in state.tenants.values():
        with t.lock:
            out.append({
                "tenantId": t.tenant_id, "domain": t.domain, "displayName": t.display_name, "premium": t.premium,
                "domains": [d.get("id") for d in t.domains] or [t.domain], "seq": t.changes.seq,
                "counts": {"users": len(t.users), "groups": len(t.groups), "applications": len(t.applications),
                           "servicePrincipals": len(t.service_principals),
                           "memberships": sum(len(m) for m in t.members.values())},
                "registrations": [_registration_doc(r) for r in t.registrations.values()],
            })
    return {"tenants": out}


_DELTA_KEYS = {
    "delta_users_page_size": "users_page_size", "delta_groups_page_size": "groups_page_size",
    "delta_groups_page_units": "groups_page_units", "delta_empty_page_every": "empty_page_every",
    "delta_duplicate_every": "duplicate_every", "delta_token_max_age_s": "token_max_age_s",
    "delta_expiry_response": "expiry_response",
}


def faults_document(runtime: EmulatorRuntime) -> dict[str, Any]:
    f = runtime.faults
    doc = {fl.name: getattr(f, fl.name) for fl in fields(f) if fl.name != "lock"}
    d = runtime.state.delta
    doc.update({k: getattr(d, v) for k, v in _DELTA_KEYS.items()})
    doc["delta_epoch"] = d.epoch
    doc["throttle_limit"] = runtime.state.throttle.limit_override
    doc["throttle_step_ms"] = round(runtime.state.throttle.step_s * 1000)
    return doc


def set_faults(runtime: EmulatorRuntime, changes: dict[str, Any]) -> dict[str, Any]:
    """Set FaultPlan fields (latency_ms, throttle_next, throttle_retry_after, error_next, drop_next,
    token_lifetime_s, expire_delta_tokens, throttling_enabled), delta settings (delta_* keys), throttle_limit
    (resource units per 10 s for every app, 0 = Microsoft's limits by tenant size) and throttle_step_ms (the
    buckets' clock moved by the requests, this many ms each; 0 = the wall clock: devtenant/throttle.py). Setting
    expire_delta_tokens true refuses every delta link issued so far, at once."""
    f = runtime.faults
    plan_fields = {fl.name: fl.type for fl in fields(f) if fl.name != "lock"}
    for key, value in changes.items():
        if key in plan_fields:
            current = getattr(f, key)
            if isinstance(current, bool):
                ok = isinstance(value, bool)
            elif isinstance(current, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            else:
                ok = True
            if not ok:
                raise MutationError(f"fault '{key}' needs a {type(current).__name__} (>= 0), got {value!r}")
            if key == "expire_delta_tokens":
                if value:
                    expire_all(runtime.state.delta)
                continue
            with f.lock:
                setattr(f, key, type(current)(value) if not isinstance(current, bool) else value)
        elif key in _DELTA_KEYS:
            attr = _DELTA_KEYS[key]
            if attr == "expiry_response":
                if value not in EXPIRY_RESPONSES:
                    raise MutationError(f"delta_expiry_response must be one of {', '.join(EXPIRY_RESPONSES)}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise MutationError(f"'{key}' needs a number >= 0")
            elif attr.endswith("_size") or attr.endswith("_units"):
                value = max(1, int(value))
            setattr(runtime.state.delta, attr, value)
        elif key == "throttle_limit":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MutationError("'throttle_limit' needs resource units per 10 s (an integer; 0: Microsoft's limits)")
            runtime.state.throttle.limit_override = value
            runtime.state.throttle.reset()
        elif key == "throttle_step_ms":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MutationError("'throttle_step_ms' needs milliseconds per request (an integer; 0: the wall clock)")
            runtime.state.throttle.step_s = value / 1000.0
            runtime.state.throttle.reset()
        else:
            known = sorted([*plan_fields, *_DELTA_KEYS, "throttle_limit", "throttle_step_ms"])
            raise MutationError(f"unknown fault '{key}'; known: {', '.join(known)}")
    return faults_document(runtime)


def build_control_app(runtime: EmulatorRuntime) -> Starlette:
    """The ASGI app server.py mounts at /_emulator."""
    state = runtime.state

    def tenant_or_404(request: Request) -> EmulatedTenant:
        t = state.resolve(request.path_params["tid"])
        if t is None:
            raise MutationError(f"no tenant '{request.path_params['tid']}'", status=404)
        return t

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise MutationError("the request body is not JSON") from None

    def guarded(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
                return result if isinstance(result, Response) else JSONResponse(result)
            except MutationError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return endpoint

    async def tenants(request: Request) -> Any:
        return tenants_document(state)

    async def snapshot(request: Request) -> Any:
        tenant = tenant_or_404(request)
        return {**tenant.snapshot(), **graph_access.ground_truth(tenant)}

    async def mutations(request: Request) -> Any:
        t = tenant_or_404(request)
        body = await body_of(request)
        ops = body.get("mutations") if isinstance(body, dict) else body
        if not isinstance(ops, list):
            raise MutationError('send {"mutations": [{"op": ...}, ...]} or a JSON array of operations')
        results: list[Any] = []
        for i, op in enumerate(ops):
            try:
                results.append(apply_mutation(t, op))
            except MutationError as exc:
                return JSONResponse({"error": f"operation {i}: {exc}", "index": i, "results": results,
                                     "seq": t.changes.seq}, status_code=exc.status)
        return {"results": results, "seq": t.changes.seq}

    def registration(request: Request) -> Any:
        t = tenant_or_404(request)
        reg = t.registrations.get(request.path_params["cid"])
        if reg is None:
            raise MutationError(f"no registration with client id '{request.path_params['cid']}'", status=404)
        return reg

    def str_list(value: Any, name: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MutationError(f"'{name}' must be a list of strings")
        return list(value)

    def edited(current: list[str], body: dict[str, Any], *, replace: str, add: str, remove: str) -> list[str]:
        """A string list after an edit: `replace` sets it, then `add` appends what is missing, then `remove` drops."""
        items = str_list(body[replace], replace) if replace in body else list(current)
        for item in str_list(body.get(add, []), add):
            if item not in items:
                items.append(item)
        gone = set(str_list(body.get(remove, []), remove))
        return [i for i in items if i not in gone]

    async def roles(request: Request) -> Any:
        reg = registration(request)
        body = await body_of(request)
        if not isinstance(body, dict):
            raise MutationError('send {"roles": [...]} or {"grant": [...], "revoke": [...]}')
        reg.granted_roles = edited(reg.granted_roles, body, replace="roles", add="grant", remove="revoke")
        return {"clientId": reg.client_id, "grantedRoles": reg.granted_roles,
                "note": "roles are read from access tokens: get a new token to see the change"}

    async def redirect_uris(request: Request) -> Any:
        reg = registration(request)
        body = await body_of(request)
        if not isinstance(body, dict):
            raise MutationError('send {"add": [...], "remove": [...]} or {"set": [...]}')
        reg.redirect_uris = edited(reg.redirect_uris, body, replace="set", add="add", remove="remove")
        return {"clientId": reg.client_id, "redirectUris": reg.redirect_uris}

    async def get_faults(request: Request) -> Any:
        return faults_document(runtime)

    async def post_faults(request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise MutationError("send an object of fault names and values")
        return set_faults(runtime, body)

    async def clock(request: Request) -> Any:
        body = await body_of(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise MutationError('send {"seconds": <number>}')
        state.clock.advance(float(seconds))
        return {"now": state.clock.now().isoformat(), "offsetSeconds": state.clock.offset_s}

    async def throttle_reset(request: Request) -> Any:
        state.throttle.reset()
        return {"reset": True}

    async def add_sign_ins(request: Request) -> Any:
        t, body = tenant_or_404(request), await body_of(request)
        events = body.get("events") if isinstance(body, dict) else body
        try:
            return {"added": emulation(runtime).log(t).add(list(events or []), state.clock.timestamp())}
        except (ValueError, TypeError) as exc:
            raise MutationError(str(exc)) from None

    async def sign_in_settings(request: Request) -> Any:
        em = emulation(runtime)
        if request.method == "GET":
            return dict(vars(em.settings))
        body = await body_of(request)
        try:
            return em.set_settings(body if isinstance(body, dict) else {})
        except ValueError as exc:
            raise MutationError(str(exc)) from None

    return Starlette(routes=[
        Route("/tenants/{tid}/signins", guarded(add_sign_ins), methods=["POST"]),
        Route("/signins/settings", guarded(sign_in_settings), methods=["GET", "POST"]),
        Route("/tenants", guarded(tenants), methods=["GET"]),
        Route("/tenants/{tid}/snapshot", guarded(snapshot), methods=["GET"]),
        Route("/tenants/{tid}/mutations", guarded(mutations), methods=["POST"]),
        Route("/tenants/{tid}/registrations/{cid}/roles", guarded(roles), methods=["PUT", "POST"]),
        Route("/tenants/{tid}/registrations/{cid}/redirect_uris", guarded(redirect_uris), methods=["POST"]),
        Route("/faults", guarded(get_faults), methods=["GET"]),
        Route("/faults", guarded(post_faults), methods=["POST"]),
        Route("/clock", guarded(clock), methods=["POST"]),
        Route("/throttle/reset", guarded(throttle_reset), methods=["POST"]),
    ])


__all__ = ["MUTATION_OPS", "apply_mutation", "apply_mutations", "build_control_app", "faults_document", "set_faults",
           "tenants_document"]
