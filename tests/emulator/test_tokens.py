"""Token paths over real HTTP: JWT bearer login checks and the a360 exchange."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.emulator import Emulator, Faults
from tests.emulator.conftest import ACCESS, CDP, JWT_BEARER, STREAM, core_login, dc_headers, exchange, record
from tests.peers.emulator import make_assertion, make_keypair, running_emulator


async def _login(http: aiohttp.ClientSession, emu: Emulator, assertion: str) -> tuple[int, dict[str, str]]:
    resp = await http.post(f"{emu.url}/services/oauth2/token", data={"grant_type": JWT_BEARER, "assertion": assertion})
    return resp.status, await resp.json()


async def test_login_success_body(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    body = await core_login(http, emu, tmp_path / "jwt.key")
    assert body["instance_url"] == emu.url
    assert body["token_type"] == "Bearer"
    assert "cdp_ingest_api" in body["scope"]
    assert body["id"].startswith(f"{emu.url}/id/00D")
    assert body["issued_at"].isdigit() and body["signature"]


@pytest.mark.parametrize(("claims", "error", "description"), [
    ({"iss": "someone-else"}, "invalid_client_id", "client identifier invalid"),
    ({"sub": "stranger@example.com"}, "invalid_grant", "user hasn't approved this consumer"),
    ({"aud": "https://evil.example.com"}, "invalid_grant", "audience is invalid"),
    ({"exp_in": -5}, "invalid_grant", "expired authorization code"),
    ({"exp_in": 600}, "invalid_grant", "invalid assertion"),
])
async def test_login_claim_checks(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path, claims: dict[str, object], error: str,
    description: str,
) -> None:
    status, body = await _login(http, emu, make_assertion(tmp_path / "jwt.key", **claims))  # type: ignore[arg-type]
    assert (status, body) == (400, {"error": error, "error_description": description})


async def test_audience_is_a_login_server_never_the_host_posted_to(emu: Emulator, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    """Salesforce Help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration"
    (help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm): aud is
    https://login.salesforce.com, https://test.salesforce.com or an Experience Cloud site URL. The
    token request here goes to the emulator's URL (a My Domain's role); that URL is no audience,
    and the refusal reads `invalid_grant` / `audience is invalid` as users report it
    (forcedotcom/cli#3325, Talend/components#1423)."""
    key = tmp_path / "jwt.key"
    for aud in ("https://login.salesforce.com", "https://test.salesforce.com", "https://login.salesforce.com/"):
        status, body = await _login(http, emu, make_assertion(key, aud=aud))
        assert status == 200, (aud, body)
    for aud in (emu.url, "https://acme.my.salesforce.com", "login.salesforce.com", "http://login.salesforce.com"):
        status, body = await _login(http, emu, make_assertion(key, aud=aud))
        assert (status, body) == (400, {"error": "invalid_grant", "error_description": "audience is invalid"}), aud


async def test_configured_audiences_only(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    site = "https://acme.my.site.com/customers"
    async with running_emulator(tmp_path, audiences=(site,)) as emu:
        status, _ = await _login(http, emu, make_assertion(tmp_path / "jwt.key", aud=site))
        assert status == 200
        status, body = await _login(http, emu, make_assertion(tmp_path / "jwt.key"))  # login.salesforce.com
        assert (status, body["error_description"]) == (400, "audience is invalid")


async def test_login_accepts_legacy_prn(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # Legacy prn wins over sub when both are present.
    status, body = await _login(http, emu, make_assertion(
        tmp_path / "jwt.key", sub="x@y", extra={"prn": "agent@solar.example"}))
    assert status == 200, body


async def test_login_rejects_bad_signature_and_wrong_alg(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    other_key, _ = make_keypair(tmp_path, "other")
    status, body = await _login(http, emu, make_assertion(other_key))
    assert (status, body["error_description"]) == (400, "invalid assertion")
    claims = {"iss": "solar-agent", "sub": "agent@solar.example", "aud": "https://login.salesforce.com",
              "exp": int(time.time()) + 60}
    status, body = await _login(http, emu, jwt.encode(claims, "a-shared-secret-long-enough-for-hs256!!", "HS256"))
    assert (status, body["error_description"]) == (400, "invalid assertion")
    status, body = await _login(http, emu, "not.a.jwt")
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_login_without_exp_and_wrong_grant(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    token = jwt.encode({"iss": "solar-agent", "sub": "agent@solar.example", "aud": "https://login.salesforce.com"},
                       (tmp_path / "jwt.key").read_bytes(), "RS256")
    status, body = await _login(http, emu, token)
    assert (status, body["error_description"]) == (400, "invalid assertion")
    resp = await http.post(f"{emu.url}/services/oauth2/token", data={"grant_type": "password", "assertion": token})
    assert resp.status == 400 and (await resp.json())["error"] == "unsupported_grant_type"


async def test_login_with_certificate_as_verifying_key(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    key_path, _ = make_keypair(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "solar-agent")])
    import datetime as dt
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)  # type: ignore[arg-type]
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    pem = cert.public_bytes(serialization.Encoding.PEM)
    async with running_emulator(tmp_path, public_key_pem=pem) as emu:
        body = await core_login(http, emu, key_path)
        assert body["token_type"] == "Bearer"


async def test_exchange_success_and_instance_url_styles(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path) as emu:
        core = await core_login(http, emu, tmp_path / "jwt.key")
        resp = await http.post(f"{core['instance_url']}/services/a360/token", data={
            "grant_type": CDP, "subject_token": core["access_token"], "subject_token_type": ACCESS,
            "dataspace": "default"})
        body = await resp.json()
        assert resp.status == 200
        # Plain HTTP: the scheme must be explicit, since a bare host means https.
        assert body["instance_url"] == emu.url
        assert body["token_type"] == "Bearer"
        assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
        assert body["expires_in"] == 7200


async def test_exchange_errors(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    resp = await exchange(http, emu.url, "00Dunknown!token")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    core = await core_login(http, emu, tmp_path / "jwt.key")
    resp = await http.post(f"{emu.url}/services/a360/token", data={
        "grant_type": "authorization_code", "subject_token": core["access_token"], "subject_token_type": ACCESS})
    assert resp.status == 400 and (await resp.json())["error"] == "unsupported_grant_type"
    resp = await http.post(f"{emu.url}/services/a360/token", data={
        "grant_type": CDP, "subject_token": core["access_token"], "subject_token_type": "jwt"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
    # A Data Cloud token is not a core token.
    headers = await dc_headers(http, emu, tmp_path / "jwt.key")
    resp = await exchange(http, emu.url, headers["Authorization"].split()[1])
    assert resp.status == 400


async def test_reused_core_token_html_switch(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    core = await core_login(http, emu, tmp_path / "jwt.key")
    assert (await exchange(http, emu.url, core["access_token"])).status == 200
    assert (await exchange(http, emu.url, core["access_token"])).status == 200  # switch off: reuse works
    emu.set_faults(Faults(html_on_reused_core_token=True))
    resp = await exchange(http, emu.url, core["access_token"])
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "<html" in await resp.text()
    fresh = await core_login(http, emu, tmp_path / "jwt.key")
    resp = await exchange(http, emu.url, fresh["access_token"])
    assert resp.content_type == "application/json"


async def test_ingest_needs_a_live_dc_token(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    body = {"data": [record("e1")]}
    resp = await http.post(emu.url + STREAM, json=body)
    err = await resp.json()
    assert resp.status == 401
    assert err["path"] == f"uri={STREAM}" and err["error"] == "Unauthorized" and "tenantId" in err
    core = await core_login(http, emu, tmp_path / "jwt.key")
    resp = await http.post(emu.url + STREAM, json=body, headers={"Authorization": f"Bearer {core['access_token']}"})
    assert resp.status == 401  # a core token is not a Data Cloud token
    headers = await dc_headers(http, emu, tmp_path / "jwt.key")
    assert (await http.post(emu.url + STREAM, json=body, headers=headers)).status == 202
    emu.set_faults(Faults(expire_tokens=True))
    assert (await http.post(emu.url + STREAM, json=body, headers=headers)).status == 401
    assert (await exchange(http, emu.url, core["access_token"])).status == 400  # core tokens expired too
    headers = await dc_headers(http, emu, tmp_path / "jwt.key")
    assert (await http.post(emu.url + STREAM, json=body, headers=headers)).status == 202


async def test_token_lifetime(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, token_lifetime_seconds=0) as emu:
        core = await core_login(http, emu, tmp_path / "jwt.key")
        assert (await exchange(http, emu.url, core["access_token"])).status == 400
