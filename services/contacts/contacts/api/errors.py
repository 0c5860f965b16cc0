"""How contacts' domain errors read as problem details."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from contacts.domain.contact import DomainError
from contacts.handlers.records import NotFound, PreconditionFailed
from crm_shared.app.problems import Problem, problem_response
from crm_shared.store.eventstore import ConcurrencyError


def install(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, Problem(404, str(exc)))

    async def precondition(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PreconditionFailed)
        return problem_response(
            request,
            Problem(412, str(exc), headers={"ETag": f'"{exc.actual}"'}, current_version=exc.actual),
        )

    async def domain(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        problem = Problem(exc.status, exc.reason)
        if exc.field:
            problem.extensions["field"] = exc.field
        return problem_response(request, problem)

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(
            request,
            Problem(409, "the contact changed while this request was applied; read it and retry"),
        )

    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(PreconditionFailed, precondition)
    app.add_exception_handler(DomainError, domain)
    app.add_exception_handler(ConcurrencyError, conflict)
