"""Every route of every service needs a bearer token with the right scope; bad tokens
of every kind are refused. Routes are enumerated from each service's OpenAPI document,
so a route added later is checked without touching this file."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from crm_shared.app.auth import SCOPES, AuthNotConfigured, issue_token
from lifecycle.settings import LifecycleSettings
from tests.support.apps import SERVICES, service_app
from tests.support.auth import token
from tests.support.http_server import Reply, ScriptedHttpServer

# The only operations without a bearer token, each with its reason.
PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/unsubscribe"),  # the signed link in the message is the credential
}


def build(service: str, tmp_path: Path, **settings: Any) -> FastAPI:
    return service_app(service, f"sqlite+aiosqlite:///{tmp_path / service}.db", **settings)


def client(app: FastAPI, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.mark.parametrize("service", list(SERVICES))
async def test_every_route_refuses_a_missing_token_and_a_token_without_its_scope(
    service: str, tmp_path: Path
) -> None:
    app = build(service, tmp_path)
    await app.state.runtime.migrate()
    async with client(app) as anonymous:
        schema = (await anonymous.get("/openapi.json")).json()
        scheme = schema["components"]["securitySchemes"]["bearerAuth"]
        assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == (
            "http",
            "bearer",
            "JWT",
        )
        checked = 0
        for method, path, operation in operations(schema):
            security = operation.get("security")
            if security == []:
                assert (method, path) in PUBLIC, f"{method} {path} is public"
                continue
            assert security is not None, f"{method} {path} documents no security"
            (requirement,) = security
            (scopes,) = requirement.values()
            assert scopes, f"{method} {path} names no scope"
            url = concrete(path)

            missing = await anonymous.request(method, url)
            assert missing.status_code == 401, (method, path, missing.text)
            assert missing.headers["content-type"] == "application/problem+json"
            assert missing.headers["www-authenticate"].startswith("Bearer")

            others = [scope for scope in SCOPES if scope not in scopes and scope != "admin"]
            lacking = await anonymous.request(method, url, headers=bearer(token(others)))
            assert lacking.status_code == 403, (method, path, lacking.text)
            assert lacking.json()["required_scope"] in scopes
            assert "insufficient_scope" in lacking.headers["www-authenticate"]

            granted = await anonymous.request(method, url, headers=bearer(token(scopes)))
            assert granted.status_code not in (401, 403), (method, path, granted.text)
            checked += 1
        assert checked >= 4
    await app.state.runtime.db.dispose()


def test_an_app_with_a_route_that_declares_no_access_rule_is_refused(tmp_path: Path) -> None:
    from fastapi import APIRouter

    from crm_shared.app.factory import create_service_app
    from lifecycle.bootstrap import build as build_lifecycle

    router = APIRouter()

    @router.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    settings = LifecycleSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db")
    with pytest.raises(RuntimeError, match="GET /v1/forgotten"):
        runtime, _ = build_lifecycle(settings)
        create_service_app(runtime, title="t", description="d", routers=[router])


def test_a_service_without_a_way_to_check_tokens_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(AuthNotConfigured, match="CRM_AUTH_JWT_SECRET"):
        build("lifecycle", tmp_path, auth_jwt_secret="")


async def test_authentication_can_be_switched_off_explicitly(tmp_path: Path) -> None:
    app = build("lifecycle", tmp_path, auth_disabled=True)
    await app.state.runtime.migrate()
    async with client(app) as anonymous:
        assert (await anonymous.get("/v1/stages/summary")).status_code == 200
    await app.state.runtime.db.dispose()


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "t", "iss": "crm", "aud": "crm-api", "exp": now + 600, "scope": "admin"}
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def _hs(claims: dict[str, Any], secret: str | None = None) -> str:
    import os

    return jwt.encode(claims, secret or os.environ["CRM_AUTH_JWT_SECRET"], algorithm="HS256")


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "not a JWT": lambda: "not-a-token",
    "bad signature": lambda: _hs(_claims(), secret="another-secret-of-sufficient-length"),
    "wrong audience": lambda: _hs(_claims(aud="someone-else")),
    "wrong issuer": lambda: _hs(_claims(iss="https://evil.example")),
    "expired": lambda: _hs(_claims(exp=int(time.time()) - 3600)),
    "no expiry": lambda: _hs(_claims(exp=None)),
    "alg none": lambda: _unsigned(_claims()),
    "alg none, no dot": lambda: _unsigned(_claims()).rstrip("."),
}


@pytest_asyncio.fixture
async def lifecycle(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build("lifecycle", tmp_path)
    await app.state.runtime.migrate()
    async with client(app) as anonymous:
        yield anonymous
    await app.state.runtime.db.dispose()


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_a_bad_token_is_refused_with_401(lifecycle: httpx.AsyncClient, kind: str) -> None:
    response = await lifecycle.get("/v1/stages/summary", headers=bearer(BAD_TOKENS[kind]()))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_good_token_passes_and_scopes_can_come_as_a_list(
    lifecycle: httpx.AsyncClient,
) -> None:
    ok = await lifecycle.get("/v1/stages/summary", headers=bearer(token(["lifecycle:read"])))
    assert ok.status_code == 200
    listed = _hs(_claims(scope=None, scp=["lifecycle:read"]))
    assert (await lifecycle.get("/v1/stages/summary", headers=bearer(listed))).status_code == 200
    lower = {"Authorization": f"bearer {token(['lifecycle:read'])}"}
    assert (await lifecycle.get("/v1/stages/summary", headers=lower)).status_code == 200
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", token(["lifecycle:read"])):
        refused = await lifecycle.get("/v1/stages/summary", headers={"Authorization": header})
        assert refused.status_code == 401, header
        assert refused.json()["detail"].startswith("a bearer token is required"), header


class RsaKeys:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


async def _rs256_checks(app: FastAPI, keys: RsaKeys) -> None:
    await app.state.runtime.migrate()
    try:
        async with client(app) as anonymous:

            async def status(value: str) -> int:
                return (
                    await anonymous.get("/v1/stages/summary", headers=bearer(value))
                ).status_code

            assert await status(keys.sign(_claims())) == 200
            assert await status(RsaKeys().sign(_claims())) == 401  # another key, same kid
            assert await status(keys.sign(_claims(), kid="unknown")) == 401
            assert await status(keys.sign(_claims(aud="other"))) == 401
            # The public key used as an HMAC secret (algorithm confusion) is refused.
            confused = jwt.encode(_claims(), "x" * 64, algorithm="HS256")
            assert await status(confused) == 401
    finally:
        await app.state.runtime.db.dispose()


async def test_rs256_tokens_are_checked_against_a_jwks_file(tmp_path: Path) -> None:
    keys = RsaKeys()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    app = build("lifecycle", tmp_path, auth_jwt_secret="", auth_jwks_file=str(jwks))
    await _rs256_checks(app, keys)


async def test_rs256_tokens_are_checked_against_a_jwks_url(tmp_path: Path) -> None:
    keys = RsaKeys()
    document = json.dumps(keys.jwks()).encode()
    reply = Reply(200, document, {"content-type": "application/json"})
    async with ScriptedHttpServer([reply]) as server:
        app = build("lifecycle", tmp_path, auth_jwt_secret="", auth_jwks_url=server.url)
        await _rs256_checks(app, keys)
        assert len(server.requests) >= 1


def test_issued_tokens_carry_the_claims_services_require() -> None:
    claims = jwt.decode(
        issue_token("s" * 32, scopes=["scores:read"]),
        "s" * 32,
        algorithms=["HS256"],
        audience="crm-api",
    )
    assert claims["scope"] == "scores:read"
    assert claims["iss"] == "crm"
    assert claims["exp"] > time.time()


async def test_a_body_over_the_cap_is_refused_with_413_before_it_is_read(tmp_path: Path) -> None:
    app = build("notifications", tmp_path, max_body_bytes=2048)
    await app.state.runtime.migrate()
    try:
        async with client(app, headers=bearer(token())) as admin:
            big = b'{"x": "' + b"y" * 4096 + b'"}'
            response = await admin.put(
                "/v1/templates/t", content=big, headers={"content-type": "application/json"}
            )
            assert response.status_code == 413
            assert response.headers["content-type"] == "application/problem+json"
            assert "2048" in response.json()["detail"]

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"y" * 1024

            streamed = await admin.put("/v1/templates/t", content=chunks())
            assert streamed.status_code == 413
    finally:
        await app.state.runtime.db.dispose()


async def test_browsers_from_configured_origins_may_call(tmp_path: Path) -> None:
    origin = "https://app.example.com"
    app = build("scoring", tmp_path, cors_origins=[origin])
    async with client(app) as browser:
        preflight = await browser.options(
            "/v1/customers",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        other = await browser.options(
            "/v1/customers",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in other.headers
