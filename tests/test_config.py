"""Config loading: bad files name the key and the fix; secrets come from the environment and are never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from entra_mcp.config import load_settings, parse_settings
from entra_mcp.errors import ConfigError

GOOD = """
[server]
cache_dir = "{cache}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.example"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret_env = "CONTOSO_SECRET_TEST"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_config_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD.format(cache=tmp_path)))
    t = s.tenant(None)
    assert t.name == "contoso"
    assert t.authority == "https://login.microsoftonline.com/contoso.example"
    assert t.graph_host == "https://graph.microsoft.com"
    assert s.server.cache_dir == tmp_path


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    text = GOOD.format(cache=tmp_path).replace("client_secret_env", "client_secret_evn")
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    msg = str(e.value)
    assert "tenants['contoso'].client_secret_evn" in msg
    assert "did you mean 'client_secret_env'" in msg


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.toml")
    assert "--config" in str(e.value) and "entra-mcp demo" in str(e.value)


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, "[server\n"))
    assert "not valid TOML" in str(e.value)


def test_missing_secret_variable_is_named_not_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTOSO_SECRET_TEST", raising=False)
    s = load_settings(write(tmp_path, GOOD.format(cache=tmp_path)))
    with pytest.raises(ConfigError) as e:
        s.tenant("contoso").client_secret()
    assert "CONTOSO_SECRET_TEST" in str(e.value)
    monkeypatch.setenv("CONTOSO_SECRET_TEST", "s3cr3t-value")
    assert s.tenant("contoso").client_secret() == "s3cr3t-value"


def test_custom_cloud_requires_urls() -> None:
    data = {"tenants": [{"name": "a", "tenant_id": "t", "client_id": "c", "client_secret_env": "X", "cloud": "custom"}]}
    with pytest.raises(ConfigError) as e:
        parse_settings(data)
    assert "login_url and graph_url" in str(e.value)


def test_national_cloud_hosts() -> None:
    data = {"tenants": [{"name": "a", "tenant_id": "t", "client_id": "c", "client_secret_env": "X", "cloud": "usgov-dod"}]}
    t = parse_settings(data).tenant("a")
    assert t.login_host == "https://login.microsoftonline.us"
    assert t.graph_host == "https://dod-graph.microsoft.us"


def test_auth_none_refused_off_loopback() -> None:
    data = {"server": {"transport": "http", "host": "0.0.0.0", "auth": {"mode": "none"}}}
    with pytest.raises(ConfigError) as e:
        parse_settings(data)
    assert "loopback" in str(e.value)


def test_unknown_tenant_suggests_close_name() -> None:
    data = {"tenants": [{"name": "contoso", "tenant_id": "t", "client_id": "c", "client_secret_env": "X"}]}
    with pytest.raises(ConfigError) as e:
        parse_settings(data).tenant("contosso")
    assert "contoso" in str(e.value)


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    s = load_settings(root / "config.example.toml")
    assert s.tenants[0].name == "contoso"
    assert s.server.port == 8765


def test_global_options_also_after_the_command(tmp_path: Path) -> None:
    """`--config` and `--log-level` work before or after the command: the README's agent-runtime snippet writes
    `entra-mcp serve --config PATH`."""
    import json
    import re

    from entra_mcp.cli import build_parser

    parser = build_parser()
    for argv in (["--config", "a.toml", "serve"], ["serve", "--config", "a.toml"], ["--config", "b.toml", "serve", "--config", "a.toml"]):
        args = parser.parse_args(argv)
        assert args.config == "a.toml" and args.log_level == "INFO" and args.command == "serve"
    assert parser.parse_args(["status", "--log-level", "warning"]).log_level == "WARNING"
    assert parser.parse_args(["status"]).config is None
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = json.loads(re.search(r"```json\n(\{\n  \"mcpServers\".*?)\n```", readme, re.S).group(1))  # type: ignore[union-attr]
    args = parser.parse_args(snippet["mcpServers"]["entra"]["args"])
    assert args.command == "serve" and args.config == "/etc/entra-mcp/config.toml"
