"""Calls to a service's HTTP API with the operator's token; refusals become messages that
say what went wrong and, for 401/403, which scope the command needs."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import httpx

from crm_shared.ops.command import OpsError
from crm_shared.ops.config import OpsConfig

CONNECT_TIMEOUT_S = 5.0


class Api:
    """An authenticated client of one service for a command needing `scope`."""

    def __init__(
        self, config: OpsConfig, service: str, *, scope: str, read_timeout: float | None = 30.0
    ) -> None:
        self.service = service
        self.scope = scope
        self.url = config.url(service)
        self._token_source = config.token_source
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {config.require_token()}"},
            timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=read_timeout),
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, **options: Any) -> Any:
        """The JSON answer of a successful request; OpsError otherwise."""
        try:
            response = await self._client.request(method, path, **options)
        except httpx.HTTPError as error:
            raise unreachable(self.service, self.url, error) from error
        if response.status_code >= 400:
            raise self.refusal(response)
        return response.json()

    def refusal(self, response: httpx.Response) -> OpsError:
        problem = _problem(response)
        detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
        status = response.status_code
        if status == 401:
            return OpsError(
                f"{self.service} refused the token from {self._token_source} (401): {detail}; "
                f"this command needs a valid token granting the scope {self.scope!r} (or 'admin')"
            )
        if status == 403:
            needed = problem.get("required_scope") or self.scope
            return OpsError(
                f"{self.service} refused the request (403): {detail}; "
                f"this command needs a token granting the scope {needed!r} (or 'admin')"
            )
        extras = {k: v for k, v in problem.items() if k not in _PROBLEM_FIELDS}
        more = "".join(f"; {key}: {value}" for key, value in extras.items())
        return OpsError(f"{self.service} answered {status}: {detail}{more}")


_PROBLEM_FIELDS = frozenset({"type", "title", "status", "detail", "instance"})


def unreachable(service: str, url: str, error: BaseException) -> OpsError:
    reason = str(error) or type(error).__name__
    return OpsError(f"{service} does not answer at {url}: {reason}")


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:300]} if response.text else {}
    return body if isinstance(body, dict) else {"detail": str(body)[:300]}
