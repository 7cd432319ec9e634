"""JWT bearer login and the Data Cloud (a360) token exchange, behind one cached token provider.

Flow (datacloud-api.md §1): sign an RS256 assertion (iss = consumer key, sub = username,
aud = login URL, exp at most 3 minutes ahead), POST it to ``{login_url}/services/oauth2/token``
for a core token, exchange that at ``{core instance_url}/services/a360/token`` for the Data Cloud
token and tenant host. The HTTP clients only ever call :meth:`TokenProvider.token` and
:meth:`TokenProvider.invalidate`; they never see an assertion. Tokens and assertions are never
logged and never shown in a repr.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import jwt

from agent.config import DataCloudConfig, is_loopback_host
from agent.datacloud._http import excerpt, parse_json, parse_retry_after, translate
from agent.errors import AuthError, RetryableError, ThrottledError

log = logging.getLogger(__name__)

JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CDP_GRANT: Final = "urn:salesforce:grant-type:external:cdp"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
# Salesforce refuses assertions whose exp is more than 3 minutes ahead; stay well inside.
ASSERTION_LIFETIME_SECONDS: Final = 170
# Refresh this long before the token expires (capped at half the lifetime for short tokens).
REFRESH_MARGIN_SECONDS: Final = 300.0


@dataclass(frozen=True, slots=True)
class Token:
    """A Data Cloud bearer token. The token itself never appears in a repr or a log line."""

    access_token: str = field(repr=False)
    instance_url: str            # always with a scheme, no trailing slash
    expires_at: float            # epoch seconds

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def make_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system store, plus ``ca_file`` when given. There is no 'off'."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise AuthError(f"cannot load CA file {ca_file}: {exc}",
                            hint="datacloud.ca_file must be a PEM file with the CA certificate(s)") from exc
    return ctx


def normalise_url(url: str, what: str) -> str:
    """``https://host[:port]`` from a URL or a bare host; plain http only for loopback (the emulator)."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    url = url.rstrip("/") if not url.endswith("://") else url
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise AuthError(f"{what} {url!r} is not an http(s) URL",
                        hint="use https://login.salesforce.com (or https://test.salesforce.com for sandboxes)")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise AuthError(f"{what} {url!r} uses plain http to a non-loopback host",
                        hint="Data Cloud needs https; plain http is only for the local emulator on 127.0.0.1")
    return url


def auth_hint(description: str) -> str:
    """What a technician should do about a token endpoint's ``error``/``error_description``."""
    d = description.lower()
    if "approve" in d:
        return ("the user is not pre-approved: in the connected app set 'Admin approved users are pre-authorized' "
                "and add the user's profile or permission set")
    if "audience" in d:
        return ("datacloud.login_url must be https://login.salesforce.com (production) or "
                "https://test.salesforce.com (sandboxes) or your My Domain login URL")
    if "signature" in d:
        return ("the certificate uploaded to the connected app ('Use digital signatures') must match "
                "datacloud.private_key_path")
    if "client" in d and ("id" in d or "identifier" in d or "invalid_client" in d):
        return "datacloud.client_id must be the connected app's consumer key"
    if "expired" in d or "iat" in d or "not yet valid" in d:
        return "the assertion time is off: check the gateway clock (timedatectl; enable NTP)"
    if "assertion" in d:
        # Salesforce says "invalid assertion" both for a bad time window and for a bad signature.
        return ("check the gateway clock (timedatectl; enable NTP), and that the certificate uploaded to the "
                "connected app matches datacloud.private_key_path")
    if "user" in d or "username" in d:
        return "datacloud.username must be the Salesforce username of the integration user"
    return "check the connected app, the user and datacloud.* settings against the setup guide"


class TokenProvider:
    """Fetches and caches the Data Cloud token.

    Contract: ``token()`` returns a token valid for at least the refresh margin; concurrent callers
    share one fetch (single flight). ``invalidate(token)`` after a 401 drops that token so the next
    ``token()`` fetches a new one (a stale token someone else already replaced is ignored). Raises
    ``AuthError`` (refused, with ``hint``), ``ThrottledError`` or ``RetryableError`` (transient).
    The session is the caller's; this class never closes it.
    """

    def __init__(self, cfg: DataCloudConfig, session: aiohttp.ClientSession, *,
                 now: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._session = session
        self._now = now
        self.login_url = normalise_url(cfg.login_url, "datacloud.login_url")
        self.ssl_context = make_ssl_context(cfg.ca_file)
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout_seconds)
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self._key: bytes | None = None
        self.fetches = 0  # successful logins, for tests and metrics

    def invalidate(self, token: Token | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given)."""
        if token is None or token is self._token:
            self._token = None

    async def token(self) -> Token:
        tok = self._token
        if tok is not None and self._fresh(tok):
            return tok
        async with self._lock:
            # Whoever held the lock before us may have fetched already.
            tok = self._token
            if tok is not None and self._fresh(tok):
                return tok
            self._token = await self._fetch()
            return self._token

    def _fresh(self, tok: Token) -> bool:
        return self._now() < tok.expires_at

    async def _fetch(self) -> Token:
        try:
            return await self._login_and_exchange()
        except _HtmlAnswer:
            # Help 005104785: an exchange can answer an HTML page; a fresh core token fixes it.
            log.warning("a360 exchange answered HTML; logging in again once login_url=%s", self.login_url)
            try:
                return await self._login_and_exchange()
            except _HtmlAnswer as exc:
                raise AuthError(str(exc), hint=exc.hint) from None

    async def _login_and_exchange(self) -> Token:
        key = await self._private_key()
        now = self._now()
        claims = {"iss": self._cfg.client_id, "sub": self._cfg.username, "aud": self.login_url,
                  "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME_SECONDS}
        try:
            assertion = jwt.encode(claims, key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise AuthError(f"cannot sign the JWT with {self._cfg.private_key_path}: {type(exc).__name__}",
                            hint="the private key must be an unencrypted PEM RSA key") from exc
        core = await self._post("login", f"{self.login_url}/services/oauth2/token",
                                 {"grant_type": JWT_GRANT, "assertion": assertion})
        core_token = core.get("access_token")
        core_url = core.get("instance_url")
        if not isinstance(core_token, str) or not isinstance(core_url, str):
            raise AuthError("login answer lacks access_token or instance_url",
                            hint="login_url must point at a Salesforce login host")
        form = {"grant_type": CDP_GRANT, "subject_token": core_token, "subject_token_type": ACCESS_TOKEN_TYPE}
        if self._cfg.dataspace:
            form["dataspace"] = self._cfg.dataspace
        exchange_url = normalise_url(core_url, "login answer instance_url")
        dc = await self._post("a360 exchange", f"{exchange_url}/services/a360/token", form)
        dc_token, dc_url = dc.get("access_token"), dc.get("instance_url")
        if not isinstance(dc_token, str) or not isinstance(dc_url, str):
            raise AuthError("a360 exchange answer lacks access_token or instance_url",
                            hint="the user needs Data Cloud access; check the permission set")
        try:
            lifetime = float(dc.get("expires_in", 7200))
        except (TypeError, ValueError):
            lifetime = 7200.0
        margin = min(REFRESH_MARGIN_SECONDS, lifetime / 2)
        token = Token(dc_token, normalise_url(dc_url, "Data Cloud instance_url"),
                      self._now() + lifetime - margin)
        self.fetches += 1
        log.info("data cloud token fetched instance_url=%s expires_in=%.0f", token.instance_url, lifetime)
        return token

    async def _post(self, what: str, url: str, form: dict[str, str]) -> dict[str, Any]:
        with translate(what):
            async with self._session.post(url, data=form, ssl=self.ssl_context, timeout=self.timeout,
                                          allow_redirects=False) as resp:
                body = await resp.read()
                status, ctype = resp.status, resp.content_type
                retry_after = resp.headers.get("Retry-After")
        doc = parse_json(body) if "json" in ctype else None
        if status == 429:
            raise ThrottledError(f"{what}: HTTP 429", retry_after=parse_retry_after(retry_after))
        if status >= 500:
            raise RetryableError(f"{what}: HTTP {status}: {excerpt(body)}", status=status)
        if not isinstance(doc, dict):
            raise _HtmlAnswer(f"{what}: HTTP {status} answered {ctype or 'no content type'} instead of JSON",
                              hint=f"{url} is not a Salesforce token endpoint (wrong login_url, proxy or "
                                   "captive portal?)")
        if status != 200 or "error" in doc:
            code = str(doc.get("error", ""))
            description = str(doc.get("error_description") or code or f"HTTP {status}")
            raise AuthError(f"{what} refused: {code}: {description}", status=status,
                            error_description=description, hint=auth_hint(f"{code} {description}"))
        return doc

    async def _private_key(self) -> bytes:
        if self._key is None:
            self._key = await asyncio.to_thread(read_private_key, self._cfg.private_key_path)
        return self._key


class _HtmlAnswer(AuthError):
    """A token endpoint answered something that is not JSON."""


def read_private_key(path: Path) -> bytes:
    """The PEM bytes of the signing key; refuses a file that group or others can read."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"private key {path} is accessible by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})",
                            hint=f"run: chmod 600 {path} (and chown it to the agent's user)")
        return path.read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read private key {path}: {exc.strerror}",
                        hint="datacloud.private_key_path must point at the PEM key of the connected app's "
                             "certificate, readable by the agent's user") from exc
