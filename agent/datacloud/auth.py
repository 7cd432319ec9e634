"""JWT bearer login and the Data Cloud (a360) token exchange, behind one cached token provider.

Flow (datacloud-api.md §1): sign an RS256 assertion (iss = consumer key, sub = username,
aud = ``datacloud.audience``, exp at most 3 minutes ahead), POST it to
``{login_url}/services/oauth2/token`` for a core token, exchange that at
``{core instance_url}/services/a360/token`` for the Data Cloud token and tenant host. The POST
target and the audience are two settings: a My Domain login still signs aud =
https://login.salesforce.com (Salesforce Help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server
Integration"; see ``agent.config`` for the sources). The HTTP clients only ever call :meth:`TokenProvider.token` and
:meth:`TokenProvider.invalidate`; they never see an assertion. Tokens and assertions are never
logged and never shown in a repr.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from agent.config import DataCloudConfig, is_loopback_host
from agent.datacloud._http import describe, excerpt, fetch, parse_retry_after
from agent.datacloud._sign import sign_rs256
from agent.errors import AuthError, RetryableError, ThrottledError

log = logging.getLogger(__name__)

JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CDP_GRANT: Final = "urn:salesforce:grant-type:external:cdp"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
# Salesforce refuses assertions whose exp is more than 3 minutes ahead; stay well inside.
ASSERTION_LIFETIME_SECONDS: Final = 170
# Refresh this long before the token expires (capped at half the lifetime for short tokens).
REFRESH_MARGIN_SECONDS: Final = 300.0
# Token answers are a few hundred bytes; anything past this is not a token answer.
_MAX_TOKEN_ANSWER_BYTES: Final = 64 * 1024
# The exchange documents expires_in around 7200 s ([GS]: 7191). A missing or unreadable value means
# the documented lifetime; an absurd one is clamped so that neither a login per request (0, negative)
# nor a token kept for years (10^12) can happen. A server that really expires it sooner answers 401,
# and the clients fetch a new token once.
DEFAULT_LIFETIME_SECONDS: Final = 7200.0
_LIFETIME_RANGE: Final = (60.0, 86400.0)
# A bearer token goes into an HTTP header: printable ASCII without spaces, bounded.
_TOKEN_RE: Final = re.compile(r"^[\x21-\x7e]{1,8192}$")


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


_URL_HINT: Final = "use https://login.salesforce.com (or https://test.salesforce.com for sandboxes)"


def normalise_url(url: str, what: str) -> str:
    """``https://host[:port]`` from a URL or a bare host; plain http only for loopback (the emulator)."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    url = url.rstrip("/") if not url.endswith("://") else url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        raise AuthError(f"{what} {url[:200]!r} is not a valid URL", hint=_URL_HINT) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise AuthError(f"{what} {url[:200]!r} is not an http(s) URL", hint=_URL_HINT)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise AuthError(f"{what} {url[:200]!r} uses plain http to a non-loopback host",
                        hint="Data Cloud needs https; plain http is only for the local emulator on 127.0.0.1")
    if parts.path or parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        # Every path is appended to this base: a path, query or userinfo in it would garble them all.
        raise AuthError(f"{what} {url[:200]!r} is not a bare scheme://host[:port]",
                        hint="a Salesforce instance URL is a host name only")
    return url


def auth_hint(description: str) -> str:
    """What a technician should do about a token endpoint's ``error``/``error_description``."""
    d = description.lower()
    if "approve" in d:
        return ("the user is not pre-approved: in the connected app set 'Admin approved users are pre-authorized' "
                "and add the user's profile or permission set")
    if "audience" in d:
        return ("datacloud.audience must be https://login.salesforce.com (production), https://test.salesforce.com "
                "(sandboxes) or your Experience Cloud site URL; never the My Domain, which belongs in login_url")
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
        # Sent as configured, without a trailing slash: the documented values have none.
        self.audience = cfg.audience.strip().rstrip("/")
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
        claims = {"iss": self._cfg.client_id, "sub": self._cfg.username, "aud": self.audience,
                  "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME_SECONDS}
        # Signed in a child process: PyJWT and cryptography never load into the agent (_sign.py).
        assertion = await sign_rs256(claims, key, key_name=str(self._cfg.private_key_path))
        core = await self._post("login", f"{self.login_url}/services/oauth2/token",
                                {"grant_type": JWT_GRANT, "assertion": assertion})
        core_token = _bearer(core, "login")
        exchange_url = normalise_url(_string(core, "instance_url", "login"), "login answer instance_url")
        form = {"grant_type": CDP_GRANT, "subject_token": core_token, "subject_token_type": ACCESS_TOKEN_TYPE}
        if self._cfg.dataspace:
            form["dataspace"] = self._cfg.dataspace
        dc = await self._post("a360 exchange", f"{exchange_url}/services/a360/token", form)
        dc_token = _bearer(dc, "a360 exchange")
        dc_url = normalise_url(_string(dc, "instance_url", "a360 exchange"), "Data Cloud instance_url")
        lifetime = _lifetime(dc.get("expires_in"))
        margin = min(REFRESH_MARGIN_SECONDS, lifetime / 2)
        token = Token(dc_token, dc_url, self._now() + lifetime - margin)
        self.fetches += 1
        log.info("data cloud token fetched instance_url=%s expires_in=%.0f", token.instance_url, lifetime)
        return token

    async def _post(self, what: str, url: str, form: dict[str, str]) -> dict[str, Any]:
        answer = await fetch(self._session, "POST", url, what=what, timeout=self.timeout, ssl=self.ssl_context,
                             data=form, max_bytes=_MAX_TOKEN_ANSWER_BYTES)
        status = answer.status
        if status == 429:
            raise ThrottledError(f"{what}: HTTP 429", retry_after=parse_retry_after(answer.retry_after))
        if status >= 500:
            raise RetryableError(f"{what}: HTTP {status}: {excerpt(answer.body)}", status=status)
        doc = answer.json()
        if not isinstance(doc, dict):
            raise _HtmlAnswer(f"{what}: HTTP {status} answered {describe(answer)}",
                              hint=f"{url} did not answer like a Salesforce token endpoint (wrong login_url, "
                                   "a proxy or captive portal?)")
        if status != 200 or "error" in doc:
            code = _text(doc.get("error"))
            description = _text(doc.get("error_description")) or code or f"HTTP {status}"
            hint = auth_hint(f"{code} {description}")
            if "audience" in description.lower():
                hint += f" (now {self.audience!r}, login_url {self.login_url!r})"
            raise AuthError(f"{what} refused: {code}: {description}", status=status,
                            error_description=description, hint=hint)
        return doc

    async def _private_key(self) -> bytes:
        if self._key is None:
            self._key = await asyncio.to_thread(read_private_key, self._cfg.private_key_path)
        return self._key


class _HtmlAnswer(AuthError):
    """A token endpoint answered something that is not a JSON object."""


def _text(value: object) -> str:
    """A server-sent string for a message: only strings count, and only their start."""
    return value[:300] if isinstance(value, str) else ""


def _string(doc: dict[str, Any], key: str, what: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise AuthError(f"{what} answer has no {key} (got {type(value).__name__})",
                        hint="the answer did not come from Salesforce's token service: check login_url "
                             "and the user's Data Cloud access (permission set)")
    return value


def _bearer(doc: dict[str, Any], what: str) -> str:
    """The access token, fit for an Authorization header (no spaces, controls or non-ASCII)."""
    token = _string(doc, "access_token", what)
    if not _TOKEN_RE.match(token):
        raise AuthError(f"{what} answer has an access_token that cannot be a bearer token "
                        f"({len(token)} characters, not printable ASCII)",
                        hint="the answer did not come from Salesforce's token service")
    return token


def _lifetime(value: object) -> float:
    """Seconds the Data Cloud token lives: ``expires_in`` clamped to a sane range."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return DEFAULT_LIFETIME_SECONDS
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        return DEFAULT_LIFETIME_SECONDS
    if not math.isfinite(seconds):
        return DEFAULT_LIFETIME_SECONDS
    lo, hi = _LIFETIME_RANGE
    return min(hi, max(lo, seconds))


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
