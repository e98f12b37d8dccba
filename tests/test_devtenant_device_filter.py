"""Conditional Access filters for devices in the emulator's What If (devtenant/device_filter.py): the documented rule
syntax and the documented behaviour for unregistered devices, unit by unit and over HTTPS through
POST /identity/conditionalAccess/evaluate."""

from __future__ import annotations

from typing import Any

import pytest

from entra_mcp.devtenant.device_filter import RuleError, compile_rule, in_scope
from entra_mcp.devtenant.server import RunningEmulator
from tests._graph_fixtures import graph, mutate

SAW = {"deviceId": "0b1c", "displayName": "SAW-0042", "trustType": "AzureAD", "isCompliant": True,
       "operatingSystem": "Windows", "operatingSystemVersion": "10.0.22631", "extensionAttribute1": "SAW",
       "physicalIds": ["[ZTDId]:abc", "[OrderId]:7"], "systemLabels": ["M365Managed"], "ownership": "Company"}


@pytest.mark.parametrize("rule,on_saw,on_unregistered", [
    ('device.extensionAttribute1 -eq "SAW"', True, False),
    ('device.extensionAttribute1 -ne "SAW"', False, True),          # negative operators match unregistered devices
    ('device.EXTENSIONATTRIBUTE1 -EQ "saw"', True, False),          # names and values case-insensitive
    ('device.displayName -startsWith "SAW-"', True, False),
    ('device.displayName -notStartsWith "SAW-"', False, True),
    ('device.displayName -endsWith "42"', True, False),
    ('device.model -notContains "Surface"', True, True),            # no model on the SAW either: null, negative
    ('device.operatingSystemVersion -in ["10.0.19045", "10.0.22631"]', True, False),
    ('device.operatingSystemVersion -notIn ["10.0.22631"]', False, True),
    ('device.physicalIds -contains "[ZTDId]:abc"', True, False),   # a whole entry of a collection
    ('device.physicalIds -contains "[ZTDId]"', False, False),
    ('device.isCompliant -eq "True"', True, False),
    ('device.deviceOwnership -eq "Company"', True, False),          # the What If deviceInfo calls it ownership
    ('device.trustType -eq "ServerAD" -or device.extensionAttribute1 -eq "SAW"', True, False),
    ('device.trustType -eq "AzureAD" -and (device.isCompliant -eq "False" -or device.model -eq "X")', False, False),
    ('-not (device.trustType -eq "AzureAD")', False, True),
])
def test_documented_rules(rule: str, on_saw: bool, on_unregistered: bool) -> None:
    match = compile_rule(rule)
    assert match(SAW) is on_saw
    assert match(None) is on_unregistered


@pytest.mark.parametrize("rule", ['device.colour -eq "red"', 'device.model -like "X"', 'device.model -in "X"',
                                  'device.model -eq ["X"]', '(device.model -eq "X"', 'device.model -eq "X" -and',
                                  "", "x" * 3073, 'device.model -eq "X" device.model -eq "Y"'])
def test_rules_outside_the_syntax_are_refused(rule: str) -> None:
    with pytest.raises(RuleError):
        compile_rule(rule)


def test_mode_include_and_exclude() -> None:
    rule = 'device.extensionAttribute1 -eq "SAW"'
    assert in_scope({"mode": "include", "rule": rule}, SAW) is True
    assert in_scope({"mode": "include", "rule": rule}, None) is False
    assert in_scope({"mode": "exclude", "rule": rule}, SAW) is False
    assert in_scope({"mode": "exclude", "rule": rule}, None) is True


def test_what_if_applies_device_filters(emulator: RunningEmulator) -> None:
    """The documented example: admins' sign-ins are blocked unless from a SAW (exclude the filtered devices)."""
    tenant = emulator.tenant()
    user = next(u for u in tenant.users.values() if u.get("userType") != "Guest")
    app = "797f4846-ba00-4fd7-ba43-dac1f8f63013"  # Windows Azure Service Management API
    policy = {"displayName": "Block admin portals outside SAWs", "state": "enabled",
              "conditions": {"users": {"includeUsers": [user["id"]]}, "applications": {"includeApplications": [app]},
                             "devices": {"deviceFilter": {"mode": "exclude", "rule": 'device.extensionAttribute1 -eq "SAW"'}}},
              "grantControls": {"operator": "OR", "builtInControls": ["block"]}}
    broken = {**policy, "displayName": "Broken filter", "conditions": {
        **policy["conditions"], "devices": {"deviceFilter": {"mode": "include", "rule": "device.colour -eq 1"}}}}
    made = mutate(emulator, {"op": "put_ca_policy", "policy": policy}, {"op": "put_ca_policy", "policy": broken})

    def results(conditions: dict[str, Any]) -> dict[str, Any]:
        body = {"signInIdentity": {"@odata.type": "#microsoft.graph.userSignIn", "userId": user["id"]},
                "signInContext": {"@odata.type": "#microsoft.graph.applicationContext", "includeApplications": [app]},
                "signInConditions": conditions}
        r = client.post("/identity/conditionalAccess/evaluate", json=body)
        assert r.status_code == 200, r.text
        return {p["displayName"]: p for p in r.json()["value"]}

    try:
        with graph(emulator) as client:
            from_saw = results({"deviceInfo": {"extensionAttribute1": "SAW", "trustType": "AzureAD"}})
            assert from_saw["Block admin portals outside SAWs"]["policyApplies"] is False
            assert from_saw["Block admin portals outside SAWs"]["analysisReasons"] == "devices"
            elsewhere = results({"deviceInfo": {"extensionAttribute1": "Kiosk"}})
            assert elsewhere["Block admin portals outside SAWs"]["policyApplies"] is True
            unregistered = results({})  # no deviceInfo: an unregistered device, the positive rule does not match
            assert unregistered["Block admin portals outside SAWs"]["policyApplies"] is True
            assert unregistered["Broken filter"]["analysisReasons"] == "invalidCondition"
    finally:
        mutate(emulator, *({"op": "delete_ca_policy", "id": p["id"]} for p in made))
