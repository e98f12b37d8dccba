"""Conditional Access "filter for devices" rules, as the emulated What If evaluates them (docs/graph-facts-access.md).

The documented subset (concept-condition-filters-for-devices): `device.<attribute> -<operator> <value>` expressions
joined with `-and` / `-or` (`-and` binds tighter), parentheses, `-not` before an expression. Operators: -eq, -ne,
-startsWith, -notStartsWith, -endsWith, -notEndsWith, -contains, -notContains, -in, -notIn (values: "string" or
["a", "b"]); names of attributes and operators are case-insensitive, so are string comparisons (the rules of dynamic
membership groups, which the filter syntax follows). On collection attributes (physicalIds, systemLabels) -contains
matches one whole entry. A device the sign-in does not describe is an unregistered device: every attribute is null,
so a positive operator never matches and a negative one always does ("The best way to target policies for
unregistered devices is by using the negative operator"). `mode` include puts the matching devices in the policy's
scope, exclude takes them out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_RULE = 3072  # "The maximum length for the filter rule is 3072 characters"
ATTRIBUTES = {a.lower(): a for a in (
    "deviceId", "displayName", "deviceOwnership", "enrollmentProfileName", "isCompliant", "manufacturer", "mdmAppId",
    "model", "operatingSystem", "operatingSystemVersion", "physicalIds", "profileType", "systemLabels", "trustType",
    *(f"extensionAttribute{i}" for i in range(1, 16)))}
_DEVICE_INFO_NAME = {"deviceOwnership": "ownership"}  # the What If body's deviceInfo calls it `ownership`
_TOKEN = re.compile(r'\s*(?:(\()|(\))|(-and\b|-or\b|-not\b)|device\.(\w+)\s+(-\w+)\s+("(?:[^"\\]|\\.)*"|\[[^\]]*\]))',
                    re.IGNORECASE)


class RuleError(ValueError):
    """The rule is outside the documented syntax."""


def _str(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _compare(op: str, actual: Any, wanted: Any) -> bool:
    """One comparison; `actual` None is an unregistered device's attribute."""
    negative = op.startswith("-not") or op == "-ne"
    if actual is None:
        return negative
    values = [_str(v).casefold() for v in (wanted if isinstance(wanted, list) else [wanted])]
    items = [_str(x).casefold() for x in actual] if isinstance(actual, list) else None
    text = _str(actual).casefold()
    base = {"-ne": "-eq", "-notstartswith": "-startswith", "-notendswith": "-endswith", "-notcontains": "-contains",
            "-notin": "-in"}.get(op, op)
    if base == "-eq":
        hit = text == values[0] if items is None else values[0] in items
    elif base == "-in":
        hit = text in values if items is None else any(i in values for i in items)
    elif base == "-startswith":
        hit = text.startswith(values[0])
    elif base == "-endswith":
        hit = text.endswith(values[0])
    elif base == "-contains":
        hit = values[0] in items if items is not None else values[0] in text
    else:
        raise RuleError(f"unsupported operator {op}")
    return not hit if negative else hit


def compile_rule(rule: str) -> Callable[[Mapping[str, Any] | None], bool]:
    """The rule as a function of the device (None: unregistered). RuleError when it is not documented syntax."""
    if not isinstance(rule, str) or not rule.strip() or len(rule) > MAX_RULE:
        raise RuleError("the rule must be a non-empty string of at most 3072 characters")
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(rule):
        if rule[pos:].strip() == "":
            break
        m = _TOKEN.match(rule, pos)
        if m is None:
            raise RuleError(f"cannot read the rule at character {pos + 1}: {rule[pos:pos + 30]!r}")
        pos = m.end()
        if m.group(1) or m.group(2):
            tokens.append((m.group(1) or m.group(2), None))
        elif m.group(3):
            tokens.append((m.group(3).lower(), None))
        else:
            attr = ATTRIBUTES.get(m.group(4).lower())
            op = m.group(5).lower()
            if attr is None:
                raise RuleError(f"device.{m.group(4)} is not a supported attribute")
            if op not in ("-eq", "-ne", "-startswith", "-notstartswith", "-endswith", "-notendswith", "-contains",
                          "-notcontains", "-in", "-notin"):
                raise RuleError(f"{m.group(5)} is not a supported operator")
            try:
                value = json.loads(m.group(6))
            except ValueError:
                raise RuleError(f"cannot read the value {m.group(6)!r}") from None
            if (op in ("-in", "-notin")) != isinstance(value, list):
                raise RuleError(f"{m.group(5)} takes {'a list' if op in ('-in', '-notin') else 'one value'}")
            tokens.append(("cmp", (attr, op, value)))
    at = 0

    def peek() -> str | None:
        return tokens[at][0] if at < len(tokens) else None

    def take() -> tuple[str, Any]:
        nonlocal at
        if at >= len(tokens):
            raise RuleError("the rule ends too early")
        at += 1
        return tokens[at - 1]

    Node = Callable[[Mapping[str, Any] | None], bool]

    def primary() -> Node:
        kind, payload = take()
        if kind == "-not":
            inner = primary()
            return lambda d: not inner(d)
        if kind == "(":
            inner = disjunction()
            if take()[0] != ")":
                raise RuleError("a parenthesis is not closed")
            return inner
        if kind != "cmp":
            raise RuleError(f"unexpected {kind}")
        attr, op, value = payload
        key = _DEVICE_INFO_NAME.get(attr, attr)
        return lambda d: _compare(op, None if d is None else d.get(key, d.get(attr)), value)

    def conjunction() -> Node:
        parts = [primary()]
        while peek() == "-and":
            take()
            parts.append(primary())
        return lambda d: all(p(d) for p in parts)

    def disjunction() -> Node:
        parts = [conjunction()]
        while peek() == "-or":
            take()
            parts.append(conjunction())
        return lambda d: any(p(d) for p in parts)

    node = disjunction()
    if at != len(tokens):
        raise RuleError(f"unexpected {tokens[at][0]} after the end of an expression")
    return node


def in_scope(device_filter: Mapping[str, Any], device: Mapping[str, Any] | None) -> bool:
    """Whether the policy's device condition keeps this sign-in's device in scope (RuleError on a bad filter)."""
    mode = str(device_filter.get("mode") or "").lower()
    if mode not in ("include", "exclude"):
        raise RuleError("mode must be include or exclude")
    matched = compile_rule(str(device_filter.get("rule") or ""))(device)
    return matched if mode == "include" else not matched


__all__ = ["ATTRIBUTES", "MAX_RULE", "RuleError", "compile_rule", "in_scope"]
