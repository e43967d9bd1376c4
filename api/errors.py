"""Every failure as one JSON body that names the rule, and the field or missing fields.

401 no or bad token; 403 a permission rule said no; 404 unknown opportunity; 409 a
business rule said no; 422 malformed payload; 503 (with ``Retry-After``) while Postgres
or Temporal is unreachable. A request Temporal refuses never ends as a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from db.pool import PoolExhaustedError
from starter.client import CommandRejected, OpportunityNotFound

log = logging.getLogger("oppflow.api")

RETRY_AFTER_SECONDS = 5

# Rules of sales/permissions: a refusal by one of them is a 403, any other rule a 409.
PERMISSION_RULES = frozenset(
    {
        "move_roles",
        "field_permissions",
        "reopen_roles",
        "reassign_roles",
        "team_roles",
        "clock_roles",
        "escalation_roles",
        "admin_only",
    }
)

# SQLSTATE classes that mean "try again shortly": connection, resources, operator, rollback.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "40")

_TEMPORAL_BUSY = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNIMPLEMENTED,
    RPCStatusCode.DATA_LOSS,
}


class Problem(BaseModel):
    """The body of every error answer."""

    status: int
    rule: str = Field(description="the rule that refused, e.g. required_fields, move_roles, malformed")
    message: str
    field: str | None = Field(default=None, description="the offending field, for malformed payloads")
    missing: list[str] = Field(default_factory=list, description="required fields that are not set")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        rule: str,
        message: str,
        *,
        field: str | None = None,
        missing: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = Problem(status=status, rule=rule, message=message, field=field, missing=missing or [])
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.problem.status

    def response(self) -> JSONResponse:
        return JSONResponse(self.problem.model_dump(), status_code=self.status, headers=self.headers)


def unavailable(what: str, exc: BaseException) -> ApiError:
    log.warning("%s unavailable: %s: %s", what, type(exc).__name__, exc)
    return ApiError(
        503,
        f"{what.lower()}_unavailable",
        f"{what} is unreachable right now; retry shortly with the same Idempotency-Key",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _field_of(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def from_rejection(exc: CommandRejected) -> ApiError:
    if exc.rule == "malformed":
        return ApiError(422, "malformed", exc.message, field=exc.field_name)
    status = 403 if exc.rule in PERMISSION_RULES else 409
    return ApiError(status, exc.rule, exc.message, field=exc.field_name, missing=exc.missing)


def from_rpc(exc: RPCError) -> ApiError:
    if exc.status == RPCStatusCode.NOT_FOUND:
        return ApiError(404, "unknown_opportunity", exc.message)
    if exc.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.OUT_OF_RANGE):
        return ApiError(422, "malformed", f"Temporal refused the request: {exc.message}")
    if exc.status in (RPCStatusCode.ALREADY_EXISTS, RPCStatusCode.FAILED_PRECONDITION):
        return ApiError(409, "conflict", f"Temporal refused the request: {exc.message}")
    return unavailable("Temporal", exc)


def api_error_for(exc: BaseException) -> ApiError | None:
    """The answer for a known failure, or None for a bug (which stays a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CommandRejected):
        return from_rejection(exc)
    if isinstance(exc, OpportunityNotFound):
        return ApiError(404, "unknown_opportunity", str(exc))
    if isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError):
        return unavailable("Temporal", exc)
    if isinstance(exc, RPCError):
        return from_rpc(exc)
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return unavailable("Temporal", exc)
    if isinstance(exc, asyncpg.PostgresError):
        if (exc.sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return unavailable("Postgres", exc)
        return None
    if isinstance(exc, (asyncpg.InterfaceError, PoolExhaustedError, OSError, TimeoutError)):
        return unavailable("Postgres", exc)
    return None


def install(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        error = api_error_for(exc)
        if error is None:
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            return ApiError(500, "internal_error", "internal error; see the API log").response()
        return error.response()

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        errors: list[dict[str, Any]] = list(exc.errors()) if isinstance(exc, RequestValidationError) else []
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        field = _field_of(first.get("loc", ()))
        return ApiError(422, "malformed", f"{field}: {first.get('msg')}", field=field).response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        rule = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = Problem(status=exc.status_code, rule=rule, message=str(exc.detail)).model_dump()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for exc_type in (
        ApiError,
        CommandRejected,
        OpportunityNotFound,
        WorkflowUpdateRPCTimeoutOrCancelledError,
        RPCError,
        RuntimeError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        PoolExhaustedError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(exc_type, on_api_error)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or a bad or expired one"},
    403: {"model": Problem, "description": "a permission rule refused (the rule is named)"},
    404: {"model": Problem, "description": "unknown opportunity"},
    409: {"model": Problem, "description": "a business rule refused (rule named; missing fields listed)"},
    422: {"model": Problem, "description": "malformed payload (the field is named)"},
    503: {"model": Problem, "description": "Postgres or Temporal briefly unreachable; see Retry-After"},
}
