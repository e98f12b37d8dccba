"""Many tenants in the config: [tenant_defaults] merged under every entry, a tenants file, and errors that name the
file, the entry and the key (said once for a shared mistake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from entra_mcp.config import load_settings
from entra_mcp.errors import ConfigError

MAIN = """
tenants_file = "tenants.toml"

[tenant_defaults]
client_id = "11111111-1111-1111-1111-111111111111"
client_secret_env = "MT_SECRET"

[tenant_defaults.sync]
groups = false
interval_minutes = 30

[[tenants]]
name = "own"
tenant_id = "own.example"
"""

FILE = """
[[tenants]]
name = "acme"
tenant_id = "acme.example"

[tenants.sync]
groups = true

[[tenants]]
name = "beta"
tenant_id = "beta.example"
client_secret_env = "BETA_SECRET"
cloud = "usgov"
"""


def write(directory: Path, main: str, tenants: str | None = None) -> Path:
    (directory / "config.toml").write_text(main, encoding="utf-8")
    if tenants is not None:
        (directory / "tenants.toml").write_text(tenants, encoding="utf-8")
    return directory / "config.toml"


def test_defaults_merge_under_each_entry_and_the_file_adds_entries(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MAIN, FILE))
    by = {t.name: t for t in s.tenants}
    assert list(by) == ["own", "acme", "beta"]
    assert {t.client_id for t in s.tenants} == {"11111111-1111-1111-1111-111111111111"}  # one multi-tenant app
    assert by["own"].sync.groups is False and by["own"].sync.interval_minutes == 30
    assert by["acme"].sync.groups is True and by["acme"].sync.interval_minutes == 30  # sync merged key by key
    assert by["beta"].client_secret_env == "BETA_SECRET" and by["beta"].graph_host == "https://graph.microsoft.us"
    assert s.tenants_file == tmp_path / "tenants.toml"


def test_an_entry_with_its_own_credential_drops_the_shared_one(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text("x", encoding="utf-8")
    extra = f'\n[[tenants]]\nname = "gamma"\ntenant_id = "gamma.example"\nclient_certificate_path = "{pem}"\n'
    s = load_settings(write(tmp_path, MAIN, FILE + extra))
    gamma = s.tenant("gamma")
    assert gamma.client_certificate_path == pem and gamma.client_secret_env is None


def test_a_bad_entry_in_the_tenants_file_names_the_file_the_entry_and_the_key(tmp_path: Path) -> None:
    bad = FILE.replace('cloud = "usgov"', 'cloud = "mars"').replace('tenant_id = "acme.example"', 'tenantid = "acme.example"')
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, MAIN, bad))
    msg = str(e.value)
    assert f"{tmp_path / 'tenants.toml'}: tenants['beta'].cloud" in msg
    assert f"{tmp_path / 'tenants.toml'}: tenants['acme'].tenantid: unknown key; did you mean 'tenant_id'?" in msg


def test_a_shared_mistake_is_said_once_for_the_defaults(tmp_path: Path) -> None:
    main = MAIN.replace("groups = false", "groupz = false").replace('client_id = "1', 'name = "x"\nclient_id = "1')
    many = "".join(f'\n[[tenants]]\nname = "t{i}"\ntenant_id = "t{i}.example"\n' for i in range(300))
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, main, many))
    msg = str(e.value)
    assert "tenant_defaults.sync.groupz: unknown key; did you mean 'groups'?" in msg
    assert "tenant_defaults.name: names one tenant" in msg
    assert msg.count("\n") < 5


def test_hundreds_of_bad_entries_are_summarised(tmp_path: Path) -> None:
    many = "".join(f'\n[[tenants]]\nname = "t{i}"\n' for i in range(300))  # every entry lacks tenant_id
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, MAIN, many))
    msg = str(e.value)
    assert "tenants['t0'].tenant_id: required key is missing" in msg
    assert "and 275 more problems like these" in msg


@pytest.mark.parametrize(("text", "expected"), [
    (None, "tenants.toml does not exist"),
    ("[[tenants]\n", "is not valid TOML"),
    ('[server]\nport = 1\n', "unknown key 'server'; a tenants file holds only [[tenants]] tables"),
    ('tenants = "x"\n', "must be an array of tables"),
])
def test_an_unusable_tenants_file_is_named(tmp_path: Path, text: str | None, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, MAIN, text))
    assert expected in str(e.value) and "tenants_file" in str(e.value)


def test_an_unknown_tenant_among_hundreds_gets_close_matches_not_the_whole_list(tmp_path: Path) -> None:
    many = "".join(f'\n[[tenants]]\nname = "customer-{i:03d}"\ntenant_id = "c{i}.example"\n' for i in range(200))
    s = load_settings(write(tmp_path, MAIN, many))
    with pytest.raises(ConfigError) as e:
        s.tenant("customer-1234")
    assert "Did you mean" in str(e.value) and "customer-123" in str(e.value)
    with pytest.raises(ConfigError) as e:
        s.tenant("zzz")
    assert "and 191 more" in str(e.value) and "customer-150" not in str(e.value)


def test_a_dump_of_the_settings_does_not_read_the_file_twice(tmp_path: Path) -> None:
    from entra_mcp.config import parse_settings

    s = load_settings(write(tmp_path, MAIN, FILE))
    again = parse_settings(s.model_dump(mode="python"), source=s.source)
    assert [t.name for t in again.tenants] == ["own", "acme", "beta"]


def test_no_tenant_named_among_hundreds_says_so_briefly(tmp_path: Path) -> None:
    many = "".join(f'\n[[tenants]]\nname = "customer-{i:03d}"\ntenant_id = "c{i}.example"\n' for i in range(200))
    s = load_settings(write(tmp_path, MAIN, many))
    with pytest.raises(ConfigError) as e:
        s.tenant(None)
    assert "and 191 more" in str(e.value) and len(str(e.value)) < 400
