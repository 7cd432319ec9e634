"""login_url and audience are two settings: check-config and doctor explain the pair and refuse the
combinations Salesforce refuses.

Sources: Salesforce Help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration"
(https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm) names the
audiences https://login.salesforce.com, https://test.salesforce.com and an Experience Cloud site
URL; Salesforce's CLI posts to a My Domain and signs aud = login/test.salesforce.com
(forcedotcom/sfdx-core src/util/sfdcUrl.ts getJwtAudienceUrl); a My Domain or mismatched aud is
answered `invalid_grant` / `audience is invalid` (forcedotcom/cli#3325, Talend/components#1423).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.cli.conftest import cli, write_config
from tests.peers.emulator import make_keypair, running_emulator

MY_DOMAIN = "https://acme.my.salesforce.com"


def _with(site_config: Path, **keys: str) -> Path:
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    text = site_config.read_text().replace('source_name = "solar_agent"\n', f'source_name = "solar_agent"\n{extra}')
    site_config.write_text(text)
    return site_config


@pytest.mark.parametrize(("login_url", "audience", "message", "hint"), [
    (MY_DOMAIN, MY_DOMAIN, "is a My Domain, which Salesforce refuses as a JWT audience",
     'datacloud.audience = "https://login.salesforce.com"'),
    (MY_DOMAIN, "https://acme--dev.sandbox.my.salesforce.com", "is a My Domain", "datacloud.audience"),
    (MY_DOMAIN, "https://na123.salesforce.com", "is a Salesforce instance or UI host", "datacloud.audience"),
    (MY_DOMAIN, "https://acme.lightning.force.com", "is a Salesforce instance or UI host", "datacloud.audience"),
    ("https://test.salesforce.com", "https://login.salesforce.com", "is the production audience",
     'datacloud.audience = "https://test.salesforce.com"'),
    ("https://acme--dev.sandbox.my.salesforce.com", "https://login.salesforce.com", "is the production audience",
     'datacloud.audience = "https://test.salesforce.com"'),
    ("https://login.salesforce.com", "https://test.salesforce.com", "is the sandbox audience",
     'datacloud.audience = "https://login.salesforce.com"'),
    (MY_DOMAIN, "https://login.salesforce.com/services/oauth2/token", "must be exactly https://login.salesforce.com",
     "datacloud.audience"),
    (MY_DOMAIN, "http://login.salesforce.com", "must be https", "datacloud.audience"),
])
def test_refused_pairs_name_the_audience(tmp_path: Path, login_url: str, audience: str, message: str,
                                         hint: str) -> None:
    site = write_config(tmp_path, login_url=login_url)
    with pytest.raises(ConfigError) as info:
        load_config(_with(site.config, audience=audience))
    err = info.value
    assert err.key == "datacloud.audience" and message in err.message, err
    assert hint in (err.hint or ""), err.hint


@pytest.mark.parametrize(("login_url", "audience"), [
    (MY_DOMAIN, "https://login.salesforce.com"),
    ("https://acme--dev.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ("https://test.salesforce.com", "https://test.salesforce.com"),
    (MY_DOMAIN, "https://acme.my.site.com/customers"),     # an Experience Cloud site
    (MY_DOMAIN, "https://acme.force.com/customers"),
    ("https://login.salesforce.com", "https://login.salesforce.com/"),
])
def test_accepted_pairs(tmp_path: Path, login_url: str, audience: str) -> None:
    site = write_config(tmp_path, login_url=login_url)
    cfg = load_config(_with(site.config, audience=audience))
    assert (cfg.datacloud.login_url, cfg.datacloud.audience) == (login_url, audience)


async def test_check_config_explains_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path, login_url=MY_DOMAIN)
    _with(site.config, object_endpoint="solar_panel_event_7f3a")
    assert await cli("check-config", site.config) == 0
    out = capsys.readouterr().out
    assert (f"the token request goes to {MY_DOMAIN}/services/oauth2/token (datacloud.login_url); the JWT names "
            "audience https://login.salesforce.com (datacloud.audience)") in out
    assert "object endpoint solar_panel_event_7f3a (datacloud.object_endpoint)" in out
    assert "schema object solar_panel_event (datacloud.object_name)" in out


async def test_check_config_refuses_a_my_domain_audience(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path, login_url=MY_DOMAIN)
    assert await cli("check-config", _with(site.config, audience=MY_DOMAIN)) == 2
    err = capsys.readouterr().err
    assert "Error: " in err and "datacloud.audience: is a My Domain" in err
    assert 'Try: set datacloud.audience = "https://login.salesforce.com"' in err


async def test_doctor_logs_in_with_the_default_audience_and_says_so(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key)
        await cli("doctor", "--config", site.config, "--timeout", "5")
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("PASS datacloud login"))
    assert f"token request to {emu.url}/services/oauth2/token, JWT audience https://login.salesforce.com" in line
    assert "PASS datacloud test record: /actions/test on solar_agent/solar_panel_event accepted" in out


async def test_doctor_names_the_audience_when_salesforce_refuses_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public, audiences=("https://login.salesforce.com",)) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key)
        assert await cli("doctor", "--config", _with(site.config, audience="https://test.salesforce.com"),
                         "--timeout", "5") == 1
    lines = capsys.readouterr().out.splitlines()
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL datacloud login"))
    assert "audience is invalid" in lines[fail] and "JWT audience https://test.salesforce.com" in lines[fail]
    assert lines[fail + 1].startswith("     Try: datacloud.audience must be https://login.salesforce.com")
