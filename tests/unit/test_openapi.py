"""Every service's OpenAPI document describes its errors as they are served."""

from __future__ import annotations

import importlib

import pytest

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
