"""Who may talk to an endpoint: static bearer tokens, JWT access tokens, HTTP basic credentials.

An :class:`Authenticator` is built from an endpoint's ``auth`` option. :meth:`Authenticator.authenticate`
reads the credentials of a request (``Authorization: Bearer …``, the query parameter ``accessToken``
that browsers use for WebSockets, or ``Authorization: Basic …``) and returns the :class:`Principal`
they stand for, or raises :class:`AuthError` (401, reason ``unauthenticated``). What a principal may
send is asked with :meth:`Principal.allows`; a refusal there is a 403 with reason ``forbidden``.

Secrets never reach a log line or a ``repr``: the config classes hide them, and errors name what was
wrong (expired, wrong issuer...) without the token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from webrtc_observer.config import Duration

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_QUERY_PARAMETER = "accessToken"
_VERIFIED_CACHE = 10_000
"""JWTs kept verified (until they expire): a client's every POST carries the same token, and an RS256
check costs about 100 us."""
_REALM = "webrtc-observer"


@dataclass
class BearerTokenConfig:
    token: str = field(repr=False)
    """The token a client sends (put it in an environment variable: ``${env:TOKEN_A}``)."""
    service_ids: list[str] = field(default_factory=lambda: ["*"])
    """Service ids this token may send for; ``*`` allows all."""

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if len(self.token) < 16:
            issues.append(("token", "use at least 16 characters (a random string: openssl rand -hex 32)"))
        if not self.service_ids:
            issues.append(("service_ids", "list at least one service id, or * for all"))
        return issues


@dataclass
class JwtConfig:
    secret: str | None = field(default=None, repr=False)
    """Shared secret of HS256/HS384/HS512 tokens."""
    public_key_file: str | None = None
    """PEM public key of RS*/PS*/ES*/EdDSA tokens (the application server keeps the private key)."""
    algorithms: list[str] = field(default_factory=list)
    """Accepted ``alg`` values; empty: HS256 with ``secret``, RS256 with ``public_key_file``."""
    issuer: str | None = None
    """If set, the ``iss`` claim must be this."""
    audience: str | None = None
    """If set, the ``aud`` claim must contain this."""
    leeway: Duration = Duration(0)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""

    def validate(self) -> list[tuple[str, str]]:
        if (self.secret is None) == (self.public_key_file is None):
            return [("", "set exactly one of secret and public_key_file")]
        issues = []
        allowed = _HMAC_ALGORITHMS if self.secret is not None else _KEY_ALGORITHMS
        for i, alg in enumerate(self.algorithms):
            if alg not in allowed:
                which = "secret" if self.secret is not None else "public_key_file"
                issues.append((f"algorithms[{i}]", f"{alg!r} cannot be used with {which} (valid: {', '.join(sorted(allowed))})"))
        if self.secret is not None and len(self.secret) < 32:
            issues.append(("secret", "use at least 32 characters for an HMAC secret"))
        if self.public_key_file is not None:
            try:
                _load_public_key(self.public_key_file)
            except (OSError, ValueError) as exc:
                issues.append(("public_key_file", f"cannot read a PEM public key: {exc}"))
        return issues

    def effective_algorithms(self) -> list[str]:
        if self.algorithms:
            return list(self.algorithms)
        return ["HS256"] if self.secret is not None else ["RS256"]


@dataclass
class BasicAuthConfig:
    username: str
    password: str = field(repr=False)

    def validate(self) -> list[tuple[str, str]]:
        issues = []
        if not self.username or ":" in self.username:
            issues.append(("username", "must be non-empty and without ':'"))
        if len(self.password) < 12:
            issues.append(("password", "use at least 12 characters"))
        return issues


@dataclass
class AuthConfig:
    """An endpoint's ``auth`` option. Which methods an endpoint accepts, its config checks."""

    bearer_tokens: list[BearerTokenConfig] = field(default_factory=list)
    jwt: JwtConfig | None = None
    basic: BasicAuthConfig | None = None

    def validate(self) -> list[tuple[str, str]]:
        if not self.bearer_tokens and self.jwt is None and self.basic is None:
            return [("", "set bearer_tokens, jwt or basic (or remove auth)")]
        return []


def scrape_auth_issues(config: AuthConfig | None, shows: str) -> list[tuple[str, str]]:
    """Config issues of ``auth`` on an endpoint that people and scrapers read (``/metrics``, ``/ui``)."""
    if config is None:
        return []
    issues = []
    if config.jwt is not None:
        issues.append(("auth.jwt", "use bearer_tokens or basic here (jwt is for the receiver)"))
    for i, token in enumerate(config.bearer_tokens):
        if token.service_ids != ["*"]:
            issues.append((f"auth.bearer_tokens[{i}].service_ids", f'{shows}: leave it out or set ["*"]'))
    return issues


@dataclass(frozen=True)
class Principal:
    """What a request's credentials allow: service ids (None: all), and the client, call and room a
    JWT binds it to (None: any)."""

    service_ids: frozenset[str] | None = None
    client_id: str | None = None
    call_id: str | None = None
    room_id: str | None = None
    expires_at: float | None = None
    """Epoch seconds after which the credentials are no longer valid (a JWT's ``exp``)."""

    @property
    def bound(self) -> bool:
        """Bound to one client, call or room: a browser's token, not a server's."""
        return self.client_id is not None or self.call_id is not None or self.room_id is not None

    def allows(
        self, service_id: str, client_id: str | None = None, call_id: str | None = None, room_id: str | None = None
    ) -> bool:
        """May these credentials send for this service (and this client, call, room)? None: not asked."""
        if self.service_ids is not None and service_id not in self.service_ids:
            return False
        for bound, asked in ((self.client_id, client_id), (self.call_id, call_id), (self.room_id, room_id)):
            if bound is not None and asked is not None and asked != bound:
                return False
        return True

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) > self.expires_at


ANYONE = Principal()
"""The principal of an endpoint without ``auth``."""


class AuthError(Exception):
    """Credentials missing or invalid (401, ``unauthenticated``) or not allowed this (403, ``forbidden``)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


def forbidden(detail: str) -> AuthError:
    return AuthError(403, "forbidden", detail)


class Authenticator:
    """Checks a request's credentials against an ``auth`` config."""

    def __init__(self, config: AuthConfig) -> None:
        self._tokens = [
            (t.token.encode(), None if "*" in t.service_ids else frozenset(t.service_ids)) for t in config.bearer_tokens
        ]
        self._jwt = config.jwt
        self._jwt_key: Any = None
        self._verified: dict[str, Principal] = {}
        if config.jwt is not None:
            key = config.jwt.secret if config.jwt.secret is not None else _load_public_key(config.jwt.public_key_file or "")
            self._jwt_key = key
        self._basic = (config.basic.username.encode(), config.basic.password.encode()) if config.basic is not None else None
        schemes = []
        if self._tokens or self._jwt is not None:
            schemes.append(f'Bearer realm="{_REALM}"')
        if self._basic is not None:
            schemes.append(f'Basic realm="{_REALM}", charset="UTF-8"')
        self._challenge = ", ".join(schemes)

    def authenticate(self, request: web.BaseRequest) -> Principal:
        """The principal of the request's credentials; :class:`AuthError` (401) if none are valid."""
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "basic" and self._basic is not None:
            return self._check_basic(credentials)
        if scheme == "bearer":
            token = credentials
        elif scheme:
            raise self._unauthenticated(f"Authorization scheme {scheme!r} is not accepted here")
        else:
            token = request.query.get(_QUERY_PARAMETER, "")
        if not token:
            raise self._unauthenticated("credentials required (Authorization header or accessToken query parameter)")
        return self._check_token(token)

    def _check_token(self, token: str) -> Principal:
        given = token.encode()
        found: Principal | None = None
        for expected, services in self._tokens:  # compare with every token: the time tells nothing
            if hmac.compare_digest(given, expected) and found is None:
                found = Principal(service_ids=services)
        if found is not None:
            return found
        if self._jwt is not None and token.count(".") == 2:
            principal = self._verified.get(token)
            if principal is not None and not principal.expired():
                return principal
            principal = self._check_jwt(token, self._jwt)
            if len(self._verified) >= _VERIFIED_CACHE:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = principal
            return principal
        raise self._unauthenticated("invalid access token")

    def _check_jwt(self, token: str, config: JwtConfig) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=config.effective_algorithms(),
                issuer=config.issuer,
                audience=config.audience,
                leeway=float(config.leeway),
                options={"require": ["serviceId"], "verify_aud": config.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise self._unauthenticated("access token expired") from None
        except jwt.InvalidTokenError as exc:
            raise self._unauthenticated(f"invalid access token ({_jwt_problem(exc)})") from None
        strings = {}
        for claim in ("serviceId", "clientId", "callId", "roomId"):
            value = claims.get(claim)
            if value is not None and (not isinstance(value, str) or not value):
                raise self._unauthenticated(f"invalid access token (claim {claim} must be a non-empty string)")
            strings[claim] = value
        exp = claims.get("exp")
        return Principal(
            service_ids=frozenset({str(strings["serviceId"])}),
            client_id=strings["clientId"],
            call_id=strings["callId"],
            room_id=strings["roomId"],
            expires_at=float(exp) + float(config.leeway) if isinstance(exp, (int, float)) else None,
        )

    def _check_basic(self, credentials: str) -> Principal:
        assert self._basic is not None
        try:
            username, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            raise self._unauthenticated("malformed basic credentials") from None
        expected_user, expected_password = self._basic
        user_ok = hmac.compare_digest(username, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        if not (sep and user_ok and password_ok):
            raise self._unauthenticated("invalid username or password")
        return ANYONE

    def _unauthenticated(self, detail: str) -> AuthError:
        return AuthError(401, "unauthenticated", detail, {"WWW-Authenticate": self._challenge})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(
    authenticator: Authenticator | None,
    on_refused: Callable[[str], None] | None = None,
    open_paths: frozenset[str] = frozenset(),
) -> Any:
    """An aiohttp middleware that authenticates every request but those to ``open_paths``, answering
    401 with ``WWW-Authenticate`` (JSON ``{"error", "detail"}``) when the credentials are not valid."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if authenticator is None or request.path in open_paths:
            return await handler(request)
        try:
            authenticator.authenticate(request)
        except AuthError as exc:
            if on_refused is not None:
                on_refused(exc.reason)
            return web.json_response({"error": exc.reason, "detail": exc.detail}, status=exc.status, headers=exc.headers)
        return await handler(request)

    return authenticate


def _load_public_key(path: str) -> str:
    text = Path(path).read_text(encoding="ascii")
    if "PRIVATE KEY" in text:
        raise ValueError("this is a private key; give the collector the public key only")
    if "-----BEGIN" not in text:
        raise ValueError("not a PEM file")
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    load_pem_public_key(text.encode())
    return text


def _jwt_problem(exc: jwt.InvalidTokenError) -> str:
    """What was wrong, in words that never include the token."""
    names = {
        jwt.InvalidSignatureError: "bad signature",
        jwt.InvalidAudienceError: "wrong audience",
        jwt.InvalidIssuerError: "wrong issuer",
        jwt.ImmatureSignatureError: "not valid yet",
        jwt.InvalidAlgorithmError: "algorithm not accepted",
        jwt.MissingRequiredClaimError: "missing claim",
        jwt.DecodeError: "malformed",
    }
    for kind, text in names.items():
        if isinstance(exc, kind):
            if isinstance(exc, jwt.MissingRequiredClaimError):
                return f"missing claim {exc.claim}"
            return text
    return type(exc).__name__
