"""Bearer-token authentication and scope checks for every route of a service.

Tokens are JWTs: HS256 signed with a shared secret (`CRM_AUTH_JWT_SECRET`) and/or RS256
signed with a key from a JWKS document (`CRM_AUTH_JWKS_URL` or `CRM_AUTH_JWKS_FILE`).
Every token must carry `exp`, the configured `iss` and `aud`; its scopes come from the
OAuth 2 `scope` claim (space separated) or a `scp`/`scopes` list. The scope `admin`
grants everything. `alg: none` and algorithms not configured are refused.

Routes declare what they need with `requires("contacts:read")`; `public(...)` marks the few
that authenticate another way (a signed link). The app factory refuses to build an app
with a route that declares neither, so no route can be left open by omission.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from fastapi import Depends, FastAPI, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from crm_shared.app.problems import Problem
from crm_shared.app.settings import ServiceSettings

ADMIN = "admin"
# Every scope a route of some service requires (`admin` grants them all).
SCOPES: tuple[str, ...] = (
    "contacts:read",
    "contacts:write",
    "contacts:erase",
    "events:read",
    "events:write",
    "lifecycle:read",
    "lifecycle:admin",
    "scores:read",
    "scores:admin",
    "notifications:read",
    "notifications:admin",
    ADMIN,
)
SCHEME = "bearerAuth"
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_CACHE_LIMIT = 10_000
_JWKS_TTL_S = 300.0
_JWKS_REFETCH_MIN_S = 30.0


class AuthNotConfigured(RuntimeError):
    """No way to check tokens is configured and authentication is not explicitly off."""


class TokenRefused(Exception):
    """The token cannot be trusted; the message says why (safe to show to the caller)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, with the scopes their token grants."""

    subject: str
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(default_factory=dict)

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


ANONYMOUS_ADMIN = Principal(subject="anonymous", scopes=frozenset({ADMIN}))


class JwksKeys:
    """RS256 public keys by key id, from a file (read once) or a URL (cached, refetched
    when a token names a key id it has not seen, at most every 30 s)."""

    def __init__(self, *, url: str = "", path: str = "") -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        if path:
            self._keys = _parse_jwks(json.loads(Path(path).read_text()))
            self._fetched_at = float("inf")

    async def key(self, kid: str | None) -> jwt.PyJWK:
        if self._stale() or (kid not in self._keys and self._may_refetch()):
            await self._fetch()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid is None or kid not in self._keys:
            raise TokenRefused("the token's signing key is unknown")
        return self._keys[kid]

    def _stale(self) -> bool:
        return bool(self.url) and time.monotonic() - self._fetched_at > _JWKS_TTL_S

    def _may_refetch(self) -> bool:
        return bool(self.url) and time.monotonic() - self._fetched_at > _JWKS_REFETCH_MIN_S

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(self.url)
                response.raise_for_status()
                self._keys = _parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as error:
            if not self._keys:
                raise TokenRefused("the signing keys cannot be fetched") from error
        self._fetched_at = time.monotonic()


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", []):
        if entry.get("kty") == "RSA" and entry.get("use", "sig") == "sig":
            key = jwt.PyJWK.from_dict(entry, algorithm="RS256")
            keys[str(entry.get("kid", ""))] = key
    return keys


class TokenVerifier:
    """Checks signature, algorithm, expiry, issuer and audience; remembers good tokens
    until they expire (verification costs tens of microseconds per request otherwise)."""

    def __init__(
        self,
        *,
        secret: str = "",
        jwks: JwksKeys | None = None,
        issuer: str,
        audience: str,
        leeway_s: float = 30.0,
    ) -> None:
        self.secret = secret
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> TokenVerifier | None:
        """The verifier the settings describe; None when authentication is off."""
        if settings.auth_disabled:
            return None
        jwks = None
        if settings.auth_jwks_url or settings.auth_jwks_file:
            jwks = JwksKeys(url=settings.auth_jwks_url, path=settings.auth_jwks_file)
        if not settings.auth_jwt_secret and jwks is None:
            raise AuthNotConfigured(
                "no way to check tokens: set CRM_AUTH_JWT_SECRET (HS256) or "
                "CRM_AUTH_JWKS_URL / CRM_AUTH_JWKS_FILE (RS256); CRM_AUTH_DISABLED=true "
                "serves without authentication (never in production)"
            )
        return cls(
            secret=settings.auth_jwt_secret,
            jwks=jwks,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway_s=settings.auth_leeway_s,
        )

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached[0] > time.time():
            return cached[1]
        claims = await self._decode(token)
        principal = Principal(
            subject=str(claims.get("sub", "")), scopes=_scopes(claims), claims=claims
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (float(claims["exp"]), principal)
        return principal

    async def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise TokenRefused("the token is not a JWT") from error
        key = await self._key_for(str(header.get("alg")), header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(header["alg"])],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenRefused("the token has expired") from error
        except jwt.InvalidAudienceError as error:
            raise TokenRefused(f"the token is not for audience {self.audience!r}") from error
        except jwt.InvalidIssuerError as error:
            raise TokenRefused(f"the token was not issued by {self.issuer!r}") from error
        except jwt.InvalidTokenError as error:
            raise TokenRefused(f"the token is not valid: {error}") from error
        return claims

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm == "HS256" and self.secret:
            return self.secret
        if algorithm == "RS256" and self.jwks is not None:
            return await self.jwks.key(kid if isinstance(kid, str) else None)
        raise TokenRefused(f"tokens signed with {algorithm!r} are not accepted")


def issue_token(
    secret: str,
    *,
    scopes: Iterable[str] = SCOPES,
    subject: str = "crm-dev",
    issuer: str = "crm",
    audience: str = "crm-api",
    ttl_s: float = 3600.0,
    now: float | None = None,
) -> str:
    """An HS256 token (development, tests and tools; production tokens come from the
    organisation's identity provider)."""
    issued = time.time() if now is None else now
    claims = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for name in ("scope", "scp", "scopes"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(item) for item in value)
    return frozenset(found)


SECURITY_SCHEME: dict[str, str] = {
    "type": "http",
    "description": "A JWT with the scopes the operation lists (`admin` grants all).",
    "scheme": "bearer",
    "bearerFormat": "JWT",
}
Guard = Callable[..., Coroutine[Any, Any, Principal]]


def requires(scope: str) -> DependsParam:
    """A dependency that lets the request through only with a valid token granting `scope`;
    use it in a route's or router's `dependencies`, or as a parameter for the principal."""

    # The header is read here rather than through FastAPI's HTTPBearer dependency: one
    # dependency less to solve on every request (the scheme is documented by
    # `document_access`).
    async def guard(request: Request) -> Principal:
        verifier: TokenVerifier | None = request.app.state.token_verifier
        if verifier is None:
            return ANONYMOUS_ADMIN
        principal = await _authenticate(verifier, request.headers.get("authorization"))
        if not principal.allows(scope):
            raise Problem(
                403,
                f"the token does not grant the scope {scope!r}",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
                required_scope=scope,
            )
        request.state.principal = principal
        return principal

    guard.required_scope = scope  # type: ignore[attr-defined]
    marker: DependsParam = Depends(guard)
    return marker


def public(reason: str) -> DependsParam:
    """Marks a route that does not take bearer tokens because it authenticates another way
    (for instance a signed link a customer clicks); `reason` goes into the OpenAPI doc."""

    async def unguarded() -> None:
        return None

    unguarded.public_reason = reason  # type: ignore[attr-defined]
    marker: DependsParam = Depends(unguarded)
    return marker


async def _authenticate(verifier: TokenVerifier, authorization: str | None) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401,
            "a bearer token is required (Authorization: Bearer <JWT>)",
            headers={"WWW-Authenticate": 'Bearer realm="crm"'},
        )
    try:
        return await verifier.verify(token)
    except TokenRefused as refused:
        raise Problem(
            401,
            str(refused),
            headers={"WWW-Authenticate": 'Bearer realm="crm", error="invalid_token"'},
        ) from refused


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every operation route of the app with its effective path (routers included)."""
    return [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def route_access(route: RouteContext) -> tuple[list[str], str | None]:
    """The scopes a route requires and, for a public route, why it is public."""
    scopes: list[str] = []
    reason: str | None = None
    for call in _dependency_calls(route.dependant.dependencies):
        if (scope := getattr(call, "required_scope", None)) is not None:
            scopes.append(scope)
        if (why := getattr(call, "public_reason", None)) is not None:
            reason = why
    return scopes, reason


def _dependency_calls(dependants: Iterable[Any]) -> Iterable[Any]:
    for dependant in dependants:
        yield dependant.call
        yield from _dependency_calls(dependant.dependencies)


def check_every_route_is_guarded(app: FastAPI) -> None:
    """Refuse to serve an app with a route that neither requires a scope nor is public."""
    open_routes = [
        f"{','.join(sorted(route.methods or ()))} {route.path}"
        for route in api_routes(app)
        if route.path not in UNGUARDED_PATHS and route_access(route) == ([], None)
    ]
    if open_routes:
        raise RuntimeError(f"routes without an access rule: {', '.join(open_routes)}")


def document_access(app: FastAPI, schema: dict[str, Any]) -> None:
    """Write each operation's required scopes (or why it is public) into the OpenAPI doc."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = dict(
        SECURITY_SCHEME
    )
    paths = schema.get("paths", {})
    for route in api_routes(app):
        if route.path not in paths:
            continue
        scopes, reason = route_access(route)
        for method in route.methods or ():
            operation = paths[route.path].get(method.lower())
            if operation is None:
                continue
            if route.path in UNGUARDED_PATHS or reason is not None:
                operation["security"] = []
                if reason:
                    operation["description"] = f"{operation.get('description', '')}\n\n" + (
                        f"No bearer token: {reason}"
                    )
                continue
            operation["security"] = [{SCHEME: scopes}]
            operation.setdefault("responses", {}).update(
                {
                    "401": {"description": "no valid bearer token"},
                    "403": {"description": f"the token lacks the scope {' / '.join(scopes)}"},
                }
            )
