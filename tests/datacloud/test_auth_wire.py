"""The token provider against the emulator's login and a360 endpoints: happy path over TLS, and
every refusal with the hint a technician gets."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.datacloud import StreamingClient, TokenProvider
from agent.emulator import Emulator, EmulatorSettings, Faults
from agent.errors import AuthError, RetryableError
from tests.datacloud.conftest import make_config, make_rows


async def test_happy_path_over_tls_with_bare_instance_url(tmp_path: Path, key_files: tuple[Path, bytes],
                                                         session: aiohttp.ClientSession) -> None:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1], tls_dir=tmp_path / "tls",
                                dc_instance_url_style="bare")
    async with Emulator(settings) as emu:
        assert emu.ca_file is not None and emu.url.startswith("https://")
        tokens = TokenProvider(make_config(emu.url, key_files[0], ca_file=emu.ca_file), session)
        tok = await tokens.token()
        assert tok.instance_url == emu.url  # bare host from the exchange, https added
        assert tok.expires_at > time.time() + 3600
        client = StreamingClient(tokens, session, "solar_agent", "solar_panel_event")
        await client.send([p for _, p in make_rows(5)])
        await emu.wait_landed(5, timeout=5)
        # Without the CA the certificate is not trusted: verification is never off.
        untrusting = TokenProvider(make_config(emu.url, key_files[0]), session)
        with pytest.raises(RetryableError, match=r"Certificate|certificate|SSL"):
            await untrusting.token()


async def test_never_reuses_a_core_token_for_a_second_exchange(emu: Emulator, key_files: tuple[Path, bytes],
                                            session: aiohttp.ClientSession) -> None:
    emu.set_faults(Faults(html_on_reused_core_token=True))
    tokens = TokenProvider(make_config(emu.url, key_files[0]), session)
    await tokens.token()
    assert tokens.fetches == 1


def _other_key(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "other.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("case", "description", "hint"), [
    ("client_id", "client identifier invalid", "consumer key"),
    ("username", "user hasn't approved this consumer", "pre-authorized"),
    ("clock_behind", "expired authorization code", "NTP"),
    ("wrong_key", "invalid assertion", "certificate"),
    ("audience", "audience is invalid", "datacloud.audience"),
])
async def test_refusals_carry_description_and_hint(tmp_path: Path, key_files: tuple[Path, bytes],
                                                   session: aiohttp.ClientSession,
                                                   case: str, description: str, hint: str) -> None:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1])
    async with Emulator(settings) as emu:
        overrides: dict[str, object] = {
            "client_id": {"client_id": "not-the-consumer-key"},
            "username": {"username": "someone@else.example"},
            "wrong_key": {"private_key_path": _other_key(tmp_path)},
            # What the agent used to sign: the URL it posts to (a My Domain). Salesforce refuses it.
            "audience": {"audience": emu.url},
        }.get(case, {})
        cfg = make_config(emu.url, key_files[0], **overrides)
        now = (lambda: time.time() - 600) if case == "clock_behind" else time.time
        with pytest.raises(AuthError) as info:
            await TokenProvider(cfg, session, now=now).token()
        assert info.value.error_description == description
        assert hint in (info.value.hint or ""), info.value.hint
        assert info.value.status == 400


async def test_world_readable_key_refused(emu: Emulator, key_files: tuple[Path, bytes],
                                          session: aiohttp.ClientSession) -> None:
    key_files[0].chmod(0o644)
    with pytest.raises(AuthError) as info:
        await TokenProvider(make_config(emu.url, key_files[0]), session).token()
    assert str(key_files[0]) in str(info.value) and "chmod 600" in str(info.value)
    assert emu.stats.count("oauth_token") == 0  # refused before anything went on the wire


async def test_token_never_in_logs_or_repr(emu: Emulator, key_files: tuple[Path, bytes],
                                           session: aiohttp.ClientSession,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    tokens = TokenProvider(make_config(emu.url, key_files[0]), session)
    tok = await tokens.token()
    emu.set_faults(Faults(expire_tokens=True))
    await StreamingClient(tokens, session, "solar_agent", "solar_panel_event").send([make_rows(1)[0][1]])
    assert tok.access_token not in repr(tok)
    assert tok.access_token not in caplog.text and "eyJ" not in caplog.text


async def test_my_domain_login_with_the_default_audience_logs_in(key_files: tuple[Path, bytes],
                                                                 session: aiohttp.ClientSession) -> None:
    """The token request goes to login_url (the emulator's URL plays the org's My Domain), the
    assertion's aud is datacloud.audience (default https://login.salesforce.com): Salesforce Help,
    "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration"."""
    async with Emulator(EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1])) as emu:
        cfg = make_config(emu.url, key_files[0])
        assert cfg.audience == "https://login.salesforce.com"
        tok = await TokenProvider(cfg, session).token()
        assert tok.instance_url == emu.url


async def test_a_sandbox_audience_against_a_production_only_org_names_the_setting(
        key_files: tuple[Path, bytes], session: aiohttp.ClientSession) -> None:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1],
                                audiences=("https://login.salesforce.com",))
    async with Emulator(settings) as emu:
        cfg = make_config(emu.url, key_files[0], audience="https://test.salesforce.com")
        with pytest.raises(AuthError) as info:
            await TokenProvider(cfg, session).token()
        assert info.value.error_description == "audience is invalid"
        assert "datacloud.audience" in (info.value.hint or "")
        assert "'https://test.salesforce.com'" in (info.value.hint or "")  # the value in use
