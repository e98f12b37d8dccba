"""Hostile input sweep over the config loader: anything at all gives a Settings or a ConfigError, never a crash,
and no value from the file's secret-bearing variables ever shows up in a message."""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_mcp.config import Settings, parse_settings
from entra_mcp.errors import ConfigError

SECRET = "hunter2-VERY-secret-value"

keys = st.sampled_from(
    ["server", "tenants", "oidc", "auth", "name", "tenant_id", "client_id", "client_secret_env", "cloud", "login_url",
     "graph_url", "port", "host", "transport", "mode", "sync", "users", "interval_minutes", "enabled", "x", "cache_dir"]
) | st.text(max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=30)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=5))
def test_any_mapping_gives_settings_or_config_error(data: dict[str, Any]) -> None:
    try:
        result = parse_settings(data)
    except ConfigError as exc:
        assert str(exc).startswith("invalid configuration")
    else:
        assert isinstance(result, Settings)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_settings_or_config_error(text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    try:
        parse_settings(data)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["cloud", "port", "client_id", "mode", "login_url"]))
def test_secret_values_never_echoed(bad_key: str) -> None:
    tenant: dict[str, Any] = {"name": "a", "tenant_id": "t", "client_id": "c", "client_secret_env": "S"}
    tenant[bad_key] = {"nested": SECRET}
    try:
        parse_settings({"tenants": [tenant]})
    except ConfigError as exc:
        assert SECRET not in str(exc)
