"""Every service's OpenAPI document describes its errors as they are served."""

from __future__ import annotations

import importlib

import httpx
import pytest

from tests.support.auth import auth_headers

SERVICES = ["contacts", "lifecycle", "scoring", "notifications"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_response_is_documented_as_problem_json(service: str) -> None:
    app = importlib.import_module(f"{service}.bootstrap").create_app()
    document = app.openapi()
    assert "Problem" in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if (path, status) == ("/readyz", "503"):  # which dependency is down
                    assert list(response["content"]) == ["application/json"]
                elif status[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        status,
                    )


def test_operations_taking_input_document_invalid_input() -> None:
    app = importlib.import_module("contacts.bootstrap").create_app()
    create = app.openapi()["paths"]["/v1/contacts"]["post"]
    assert {"400", "409", "422"} <= set(create["responses"])
    assert create["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("service", "method", "path", "allow"),
    [
        ("contacts", "DELETE", "/v1/contacts", "GET, POST"),
        ("contacts", "PUT", "/v1/contacts/c-1", "GET, PATCH"),
        # The literal path, not the model-version template that also matches it.
        ("scoring", "DELETE", "/v1/models/refit", "POST"),
    ],
)
async def test_a_405_names_every_method_of_the_path_in_allow(
    service: str, method: str, path: str, allow: str
) -> None:
    app = importlib.import_module(f"{service}.bootstrap").create_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method, path, headers=auth_headers())
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("setting", "looked_up"), [(None, False), ("true", True)])
async def test_fastapi_opentelemetry_is_off_unless_asked_for(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, looked_up: bool
) -> None:
    # Off, a request does not look for a tracer provider at all (that lookup read
    # os.environ on every request); on, FastAPI's own instrumentation looks for one.
    from opentelemetry import trace

    calls: list[object] = []
    real = trace.get_tracer_provider

    def counted() -> trace.TracerProvider:
        calls.append(1)
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    if setting is not None:
        monkeypatch.setenv("CRM_OPENTELEMETRY", setting)
    app = importlib.import_module("lifecycle.bootstrap").create_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert bool(calls) is looked_up
