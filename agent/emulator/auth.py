"""The emulated Salesforce login (JWT bearer) and the a360 token exchange.

Checks follow the Salesforce JWT bearer flow (datacloud-api.md §1): RS256 only, ``iss`` =
consumer key, ``sub`` (or legacy ``prn``, which wins) = a pre-approved user, ``aud`` = an
accepted login URL, ``exp`` in the future and at most 3 minutes ahead. Error descriptions are
the ones Salesforce is commonly seen to return.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CDP_EXCHANGE: Final = "urn:salesforce:grant-type:external:cdp"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
MAX_ASSERTION_AHEAD_SECONDS: Final = 180
CLOCK_SKEW_SECONDS: Final = 10  # tolerance on the 3-minute bound only; a past exp is always refused
ORG_ID: Final = "00DXX0000000001EAA"
USER_ID: Final = "005XX0000001SvQYAU"


class OAuthError(Exception):
    """An OAuth error answer: HTTP status plus the ``error``/``error_description`` body."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def load_verifying_key(pem: bytes) -> RSAPublicKey:
    """The RSA public key from a PEM public key or a PEM X.509 certificate."""
    if b"BEGIN CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = load_pem_public_key(pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the JWT verification key must be RSA (Salesforce accepts RS256 only)")
    return key


@dataclass
class _Token:
    value: str
    expires_at: float
    exchanged: int = 0  # core tokens: how often exchanged at /services/a360/token
    dataspace: str = "default"


@dataclass
class TokenAuthority:
    """Issues and checks core and Data Cloud tokens; all state in memory."""

    key: RSAPublicKey | None
    client_id: str
    username: str
    audiences: tuple[str, ...]
    lifetime_seconds: int
    core: dict[str, _Token] = field(default_factory=dict)
    dc: dict[str, _Token] = field(default_factory=dict)
    _signing_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def login(self, form: dict[str, str], instance_url: str) -> dict[str, Any]:
        """Answer a /services/oauth2/token request or raise OAuthError."""
        if form.get("grant_type") != JWT_BEARER:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        assertion = form.get("assertion", "")
        if not assertion:
            raise OAuthError("invalid_request", "assertion is required")
        self._verify(assertion)
        now = time.time()
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        self.core[token] = _Token(token, now + self.lifetime_seconds)
        issued_at = str(int(now * 1000))
        ident = f"{instance_url}/id/{ORG_ID}/{USER_ID}"
        signature = base64.b64encode(
            hmac.new(self._signing_secret, (ident + issued_at).encode(), hashlib.sha256).digest()
        ).decode()
        return {
            "access_token": token,
            "scope": "cdp_ingest_api api",
            "instance_url": instance_url,
            "id": ident,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": signature,
        }

    def _verify(self, assertion: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        if header.get("alg") != "RS256":
            raise OAuthError("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if self.key is None:
            raise OAuthError("invalid_grant", "invalid assertion")
        try:
            jwt.decode(
                assertion, self.key, algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.rstrip("/") in self.audiences for a in auds):
            raise OAuthError("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise OAuthError("invalid_grant", "invalid assertion")
        now = time.time()
        if exp <= now:
            raise OAuthError("invalid_grant", "expired authorization code")
        if exp > now + MAX_ASSERTION_AHEAD_SECONDS + CLOCK_SKEW_SECONDS:
            raise OAuthError("invalid_grant", "invalid assertion")
        subject = claims.get("prn", claims.get("sub"))  # legacy prn wins when both are present
        if subject != self.username:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return claims

    def exchange(self, form: dict[str, str], *, html_on_reuse: bool) -> dict[str, Any] | None:
        """Answer a /services/a360/token request; None means "answer the HTML page" (reused token)."""
        if form.get("grant_type") != CDP_EXCHANGE:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", "subject_token_type must be " + ACCESS_TOKEN_TYPE)
        subject = form.get("subject_token", "")
        core = self.core.get(subject)
        if core is None or core.expires_at <= time.time():
            raise OAuthError("invalid_grant", "invalid subject token: unknown or expired session")
        core.exchanged += 1
        if html_on_reuse and core.exchanged > 1:
            return None
        now = time.time()
        token = "dc." + secrets.token_urlsafe(48)
        self.dc[token] = _Token(token, now + self.lifetime_seconds, dataspace=form.get("dataspace") or "default")
        return {
            "access_token": token,
            "token_type": "Bearer",
            "issued_token_type": JWT_TOKEN_TYPE,
            "expires_in": self.lifetime_seconds,
        }

    def check_bearer(self, header: str | None) -> bool:
        """True when the Authorization header carries a live Data Cloud token."""
        if not header or not header.startswith("Bearer "):
            return False
        tok = self.dc.get(header[len("Bearer "):].strip())
        return tok is not None and tok.expires_at > time.time()

    def expire_all(self) -> None:
        """Expire every token issued so far; new ones work."""
        past = time.time() - 1
        for tok in (*self.core.values(), *self.dc.values()):
            tok.expires_at = past


HTML_REDIRECT_PAGE: Final = """<html><head><meta HTTP-EQUIV="PRAGMA" CONTENT="NO-CACHE">
<script>if (window.location.replace){window.location.replace('/');} else {window.location.href='/';}</script>
</head><body>Redirecting...</body></html>
"""
