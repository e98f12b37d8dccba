"""Check JSON the emulator serves against Microsoft's published Graph models (msgraph-sdk's generated classes).

`check_object(raw, User)` parses one object with kiota's JSON parse node into the msgraph-sdk model and fails (an
AssertionError naming every problem by its JSON path) when
- a property is not defined by the model (kiota parks it in `additional_data`), at any depth, or
- a value does not survive the model's parser: a wrong type (a string where Graph has a boolean, a number in a
  string collection), an unknown enum member, a malformed date or GUID. The parsed object is written back with
  kiota's JSON writer and compared with what was sent (nulls may be left out; dates and GUIDs compare as values).

`check_page(page, User)` checks a collection or delta page: its envelope (`@odata.context`, `@odata.nextLink`,
`@odata.deltaLink`, `@odata.count`, `value`) and every item. `delta=True` allows what Microsoft documents for delta
items: `@removed: {"reason": "changed" | "deleted"}` on any item, and `members@delta` / `owners@delta` (directory
object references, each possibly `@removed`) on groups (https://learn.microsoft.com/graph/api/user-delta,
https://learn.microsoft.com/graph/api/group-delta: "track other changes such as ownership by selecting any group
relationship of type directoryObject collection"). Directory objects of mixed types (memberOf, members, manager)
are parsed with `DirectoryObject`, whose discriminator picks the model from `@odata.type`.

Usage from a test: `check_page(client.get("/users", params={"$select": ...}).json(), User)`; models live in
`msgraph.generated.models.<snake_name>` (see `MODELS`). `one_of_each_shape(items)` picks the items worth parsing
from a long page of generated objects (kiota's parser costs ~20 ms of CPU per sign-in event).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime
from enum import Enum
from typing import Any, Iterator

from kiota_abstractions.serialization import AdditionalDataHolder, Parsable
from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from kiota_serialization_json.json_serialization_writer_factory import JsonSerializationWriterFactory
from msgraph.generated.models.app_role_assignment import AppRoleAssignment
from msgraph.generated.models.conditional_access_guest_or_external_user_types import (
    ConditionalAccessGuestOrExternalUserTypes,
)
from msgraph.generated.models.application import Application
from msgraph.generated.models.directory_object import DirectoryObject
from msgraph.generated.models.domain import Domain
from msgraph.generated.models.group import Group
from msgraph.generated.models.organization import Organization
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.models.user import User

# the model of each collection the emulator serves, by the Graph path of the collection
MODELS: dict[str, type[Parsable]] = {
    "users": User,
    "groups": Group,
    "applications": Application,
    "servicePrincipals": ServicePrincipal,
    "appRoleAssignedTo": AppRoleAssignment,
    "domains": Domain,
    "organization": Organization,
    "directoryObjects": DirectoryObject,
}

# multi-valued ("flags") enums: Graph sends "a,b"; kiota-python reads only single members, so check each member here
FLAG_ENUMS: dict[str, type[Enum]] = {"guestOrExternalUserTypes": ConditionalAccessGuestOrExternalUserTypes}
PAGE_KEYS = {"@odata.context": str, "@odata.nextLink": str, "@odata.deltaLink": str, "@odata.count": int}
REMOVED_REASONS = {"changed", "deleted"}
# group delta tracks any directoryObject-collection relationship selected (members, owners) as `<name>@delta`
REFERENCE_DELTAS = ("members@delta", "owners@delta")

_PARSE = JsonParseNodeFactory()
_WRITE = JsonSerializationWriterFactory()


def check_object(raw: dict[str, Any], model: type[Parsable], *, delta: bool = False, where: str = "$") -> Parsable:
    """Parse `raw` with `model`; fail on properties the model lacks and on values its parser does not accept.

    A single entity (`GET /users/{id}`) may carry `@odata.context` at its root, as Graph sends it."""
    problems: list[str] = []
    if where == "$" and "@odata.context" in raw:
        if not isinstance(raw["@odata.context"], str):
            problems.append("$.@odata.context: not a string")
        raw = {k: v for k, v in raw.items() if k != "@odata.context"}
    parsed = _check(raw, model, delta=delta, where=where, problems=problems)
    assert not problems, f"not a valid {model.__name__} per msgraph-sdk:\n  " + "\n  ".join(problems)
    assert parsed is not None
    return parsed


def check_page(page: dict[str, Any], model: type[Parsable], *, delta: bool = False) -> list[Parsable]:
    """Check a collection (or delta) page's envelope and each of its items; returns the parsed items."""
    problems: list[str] = []
    for key, value in page.items():
        if key == "value":
            if not isinstance(value, list):
                problems.append("$.value: not a list")
            continue
        want = PAGE_KEYS.get(key)
        if want is None or (key == "@odata.deltaLink" and not delta):
            problems.append(f"$.{key}: not a page annotation Graph documents here")
        elif not isinstance(value, want) or isinstance(value, bool):
            problems.append(f"$.{key}: expected {want.__name__}, got {type(value).__name__}")
    if "value" not in page:
        problems.append("$.value: missing")
    if "@odata.nextLink" in page and "@odata.deltaLink" in page:
        problems.append("$: both @odata.nextLink and @odata.deltaLink")
    items = page.get("value") if isinstance(page.get("value"), list) else []
    parsed: list[Parsable] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"$.value[{i}]: not an object")
            continue
        one = _check(item, model, delta=delta, where=f"$.value[{i}]", problems=problems)
        if one is not None:
            parsed.append(one)
    assert not problems, f"not a valid page of {model.__name__} per msgraph-sdk:\n  " + "\n  ".join(_summary(problems))
    return parsed


def one_of_each_shape(items: list[Any]) -> list[Any]:
    """The first item of each shape among `items`, in their order. Two items have the same shape when they have the
    same keys at every depth, the same value types, the same enum-like strings (a camelCase word, as Graph's enum
    members are written), the same date-time layout (digits compared as 9s) and GUIDs where the other has GUIDs:
    what a model's parser accepts or refuses depends on these, not on the names, ids and numbers that vary between
    generated objects. A 1,000-event sign-in page of the small emulator has 12 shapes (~21 s of CPU to parse whole,
    ~1 s for its shapes)."""
    seen: dict[Any, Any] = {}
    for item in items:
        seen.setdefault(_shape(item), item)
    return list(seen.values())


_ENUM_LIKE = re.compile(r"^[a-z][A-Za-z]*$")
_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return ("{}", tuple(sorted((k, _shape(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("[]", tuple(sorted({_shape(v) for v in value}, key=repr)))
    if isinstance(value, str):
        if _ENUM_LIKE.match(value):
            return value
        if _DATE_TIME.match(value):
            return re.sub(r"\d", "9", value)
        return "guid" if _GUID.match(value) else "str"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------- internals

def _summary(problems: list[str], limit: int = 40) -> list[str]:
    """One line per kind of problem: the first place it occurs and how many items share it."""
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for p in problems:
        kind = re.sub(r"\[\d+\]", "[]", p.split(": ", 1)[0]) + ": " + p.split(": ", 1)[-1].split(" ")[0]
        first.setdefault(kind, p)
        count[kind] = count.get(kind, 0) + 1
    return [first[k] + (f"  (and {count[k] - 1} more like it)" if count[k] > 1 else "") for k in list(first)[:limit]]


def _parse(raw: dict[str, Any], model: type[Parsable]) -> Parsable:
    node = _PARSE.get_root_parse_node("application/json", json.dumps(raw).encode())
    return node.get_object_value(model)  # type: ignore[arg-type]  # a model class is its own ParsableFactory


def _write(obj: Parsable) -> Any:
    writer = _WRITE.get_serialization_writer("application/json")
    writer.write_object_value(None, obj)
    return json.loads(writer.get_serialized_content())


def _strip_annotations(raw: dict[str, Any], delta: bool) -> dict[str, Any]:
    if not delta:
        return raw
    return {k: v for k, v in raw.items() if k != "@removed" and k not in REFERENCE_DELTAS}


def _check(raw: dict[str, Any], model: type[Parsable], *, delta: bool, where: str,
           problems: list[str]) -> Parsable | None:
    """Appends what is wrong with `raw` to `problems`; returns the parsed object (None when the parser failed)."""
    problems.extend(_annotation_problems(raw, model, delta=delta, where=where))
    clean = _strip_annotations(raw, delta)
    try:
        parsed = _parse(clean, model)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the finding
        problems.append(f"{where}: the model's parser failed: {type(exc).__name__}: {exc}")
        return None
    problems.extend(_unknown(parsed, where))
    problems.extend(_differences(clean, _write(parsed), where))
    return parsed


def _annotation_problems(raw: dict[str, Any], model: type[Parsable], *, delta: bool, where: str) -> Iterator[str]:
    if delta:
        removed = raw.get("@removed")
        if "@removed" in raw and (not isinstance(removed, dict) or set(removed) != {"reason"}
                                  or removed["reason"] not in REMOVED_REASONS):
            yield f"{where}.@removed: expected {{\"reason\": \"changed\" | \"deleted\"}}, got {removed!r}"
        for name in (n for n in REFERENCE_DELTAS if n in raw):
            refs = raw[name]
            if model is not Group:
                yield f"{where}.{name}: only groups carry {name}"
            elif not isinstance(refs, list):
                yield f"{where}.{name}: not a list"
            else:
                for i, ref in enumerate(refs):
                    here = f"{where}.{name}[{i}]"
                    if not isinstance(ref, dict) or not {"@odata.type", "id"} <= set(ref):
                        yield f"{here}: expected a reference with @odata.type and id, got {ref!r}"
                        continue
                    found: list[str] = []
                    _check(ref, DirectoryObject, delta=True, where=here, problems=found)
                    yield from found


def _unknown(obj: Any, where: str) -> Iterator[str]:
    """Properties the model does not define, at any depth (kiota keeps them in additional_data)."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _unknown(item, f"{where}[{i}]")
        return
    if not isinstance(obj, Parsable):
        return
    if isinstance(obj, AdditionalDataHolder) and obj.additional_data:
        for key in obj.additional_data:
            yield f"{where}.{key}: not a property of {type(obj).__name__}"
    for name, value in vars(obj).items():
        if name in ("additional_data", "backing_store") or value is None:
            continue
        if isinstance(value, (Parsable, list)):
            yield from _unknown(value, f"{where}.{_camel(name)}")


def _differences(sent: Any, back: Any, where: str) -> Iterator[str]:
    """What the model's parser did not keep: values it read as null (wrong type) or read differently."""
    if isinstance(sent, dict):
        if not isinstance(back, dict):
            yield f"{where}: sent an object, the model read {back!r}"
            return
        for key, value in sent.items():
            if value is None:
                continue  # Graph sends null for unset properties of any type
            if key in FLAG_ENUMS and isinstance(value, str):
                members = {m.value for m in FLAG_ENUMS[key]}
                wrong = [v for v in value.split(",") if v.strip() not in members]
                if wrong:
                    yield f"{where}.{key}: {wrong} are not members of {FLAG_ENUMS[key].__name__}"
            elif key not in back or back[key] is None:
                yield f"{where}.{key}: value {value!r} is not of the model's type"
            else:
                yield from _differences(value, back[key], f"{where}.{key}")
        return
    if isinstance(sent, list):
        if not isinstance(back, list) or len(back) != len(sent):
            yield f"{where}: sent a list of {len(sent)}, the model read {back!r}"
            return
        for i, (a, b) in enumerate(zip(sent, back)):
            if a is not None and b is None:
                yield f"{where}[{i}]: value {a!r} is not of the model's type"
            else:
                yield from _differences(a, b, f"{where}[{i}]")
        return
    if not _same_scalar(sent, back):
        yield f"{where}: sent {sent!r}, the model read {back!r}"


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        if a == b:
            return True
        for parse in (_as_datetime, _as_date, uuid.UUID):
            try:
                return bool(parse(a) == parse(b))
            except ValueError:
                continue
    return bool(a == b)


def _as_datetime(text: str) -> datetime:
    if "T" not in text:
        raise ValueError(text)
    return datetime.fromisoformat(text)


def _as_date(text: str) -> date:
    return date.fromisoformat(text)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)
