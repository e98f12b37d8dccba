"""The emulator's change log and mutations (what delta rounds are computed from), in process."""

from __future__ import annotations

import pytest

from entra_mcp.devtenant.control import MUTATION_OPS, apply_mutations
from entra_mcp.devtenant.generate import generate_state
from entra_mcp.devtenant.model import EmulatedTenant, MutationError


@pytest.fixture
def tenant() -> EmulatedTenant:
    state = generate_state("small", 7)
    return next(iter(state.tenants.values()))


def test_generated_state_is_sequence_zero(tenant: EmulatedTenant) -> None:
    assert tenant.changes.seq == 0 and not tenant.changes.memberships and not tenant.changes.tombstones
    assert all(tenant.changes.last_seq(u) == 0 for u in tenant.users)


def test_change_log_answers_what_changed_since(tenant: EmulatedTenant) -> None:
    a, b, c = sorted(tenant.users)[:3]
    tenant.update_object(a, {"jobTitle": "Tester"})
    mark = tenant.changes.seq
    tenant.update_object(b, {"department": "QA"})
    tenant.update_object(b, {"jobTitle": "Lead"})
    tenant.set_manager(c, a)
    assert tenant.changes.changed_ids("users", 0, tenant.changes.seq) == sorted({a, b, c})
    assert tenant.changes.changed_ids("users", mark, tenant.changes.seq) == sorted({b, c})
    assert tenant.changes.changed_props(b, mark, tenant.changes.seq) == {"department", "jobTitle"}
    assert tenant.changes.changed_props(c, mark, tenant.changes.seq) == {"manager"}
    made = tenant.create_user({"displayName": "Zed", "userPrincipalName": f"zed@{tenant.domain}"})
    assert tenant.changes.changed_props(made["id"], mark, tenant.changes.seq) is None, "created: everything"


def test_membership_net_effect_and_restore(tenant: EmulatedTenant) -> None:
    gid = next(g for g, ms in tenant.members.items() if any(k == "user" for k in ms.values()))
    uid = next(m for m, k in tenant.members[gid].items() if k == "user")
    groups_before = set(tenant.member_of(uid))
    before = tenant.changes.seq
    tenant.soft_delete(uid)
    assert uid not in tenant.users and uid not in tenant.members[gid]
    assert tenant.changes.tombstones[uid].reason == "changed"
    tenant.restore(uid)
    assert set(tenant.member_of(uid)) == groups_before and uid in tenant.members[gid]
    net = tenant.changes.membership_changes(before, tenant.changes.seq)
    assert net[gid][uid] == ("user", True), "removed then re-added nets to added"
    tenant.hard_delete(uid)
    assert tenant.changes.tombstones[uid].reason == "deleted"
    with pytest.raises(MutationError):
        tenant.restore(uid)


def test_credentials_and_assignments(tenant: EmulatedTenant) -> None:
    sync = next(r for r in tenant.registrations.values() if r.display_name == "entra-mcp sync")
    app = next(a for a in tenant.applications.values() if a["appId"] == sync.client_id)
    cred, secret = tenant.add_password_credential(app["id"], "rotated")
    assert cred["hint"] == secret[:3] and cred["secretText"] is None
    assert any(s.value == secret for s in sync.secrets), "the new secret works at the login host"
    tenant.remove_password_credential(app["id"], cred["keyId"])
    assert all(s.value != secret for s in sync.secrets)
    sp = next(iter(tenant.service_principals))
    uid = next(iter(tenant.users))
    a = tenant.add_app_role_assignment(sp, uid)
    assert a in tenant.assignments_for_resource(sp) and a["principalType"] == "User"
    tenant.soft_delete(uid)
    assert a not in tenant.assignments_for_resource(sp)
    tenant.restore(uid)
    assert a in tenant.assignments_for_resource(sp)


def test_python_mutation_api_names(tenant: EmulatedTenant) -> None:
    assert {"create_user", "update_user", "disable_user", "soft_delete", "restore", "hard_delete", "add_member",
            "remove_member", "set_manager", "add_app_role_assignment", "remove_app_role_assignment",
            "add_password_credential", "remove_password_credential", "create_group", "update_group"} <= set(MUTATION_OPS)
    gid = next(iter(tenant.groups))
    uid = sorted(tenant.users)[-1]
    out = apply_mutations(tenant, [{"op": "remove_member", "group": gid, "member": uid},
                                   {"op": "add_member", "group": gid, "member": uid}])
    assert out[1] == {"changed": True} and uid in tenant.members[gid]
    with pytest.raises(MutationError):
        apply_mutations(tenant, [{"op": "add_member", "group": gid, "member": gid}])
