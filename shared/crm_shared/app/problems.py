"""RFC 9457 problem details: every error a client sees is `application/problem+json`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error to report to the client as problem details."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type
        self.headers = headers
        self.extensions = extensions


def utc_parameter(name: str, value: datetime | None) -> datetime | None:
    """A time given as a request parameter, in UTC; a 422 naming it when it has no offset.

    A valid RFC 3339 time can leave the years 1-9999 once in UTC (0001-01-01T00:00:00+01:00
    is in year 0), which Python cannot represent: it becomes the first or last instant
    Python can. No stored time lies beyond those, so every comparison answers the same."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise Problem(422, f"{name}: give a time zone offset (RFC 3339)", field=name)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extensions,
    }
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem_response(request, Problem(exc.status_code, detail, headers=headers))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [_field_error(e) for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return problem_response(
            request, Problem(422, detail, title="Invalid request", errors=errors)
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem_response(request, Problem(500, "internal error; it has been logged"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)


def allowed_methods(request: Request) -> list[str]:
    """The methods of the path a 405 answers (Starlette's names those of one route only).
    A literal path wins over a template that also matches it: `/v1/models/refit` is the
    refit, not a model named "refit"."""
    matching = [
        route
        for route in iter_route_contexts(request.app.routes)
        if route.methods and route.matches(request.scope)[0] is not Match.NONE
    ]
    fewest = min((len(route.param_convertors) for route in matching), default=0)
    methods = {
        method
        for route in matching
        if len(route.param_convertors) == fewest
        for method in route.methods or ()
    }
    return sorted(methods)


def _field_error(error: Any) -> dict[str, str]:
    location = [str(part) for part in error.get("loc", ())]
    if location and location[0] in {"body", "query", "path", "header"}:
        where, rest = location[0], location[1:]
        field = f"{where}.{'.'.join(rest)}" if rest else where
    else:
        field = ".".join(location)
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return {"field": field, "message": message}
