"""Bearer tokens for tests, signed with the secret the services under test check."""

from __future__ import annotations

import os
from collections.abc import Iterable

from crm_shared.app.auth import issue_token


def token(scopes: Iterable[str] | None = None, **claims: object) -> str:
    """A token with every scope, or only `scopes`."""
    secret = os.environ["CRM_AUTH_JWT_SECRET"]
    if scopes is None:
        return issue_token(secret, **claims)  # type: ignore[arg-type]
    return issue_token(secret, scopes=scopes, **claims)  # type: ignore[arg-type]


def auth_headers(scopes: Iterable[str] | None = None) -> dict[str, str]:
    """`Authorization: Bearer ...` with every scope, or only `scopes`."""
    return {"Authorization": f"Bearer {token(scopes)}"}
