"""Running one command for a caller: request id from ``Idempotency-Key``, actor from the
token, the answer (or the refusal) as JSON, kept for replays of the same key."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api.auth import Principal
from api.errors import ApiError, api_error_for
from api.idempotency import IdempotencyStore, fingerprint
from starter.client import OpportunityClient, new_request_id

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,119}$")


@dataclass
class Services:
    """What the routes use; one per app, on ``app.state.services``."""

    client: OpportunityClient
    idempotency: IdempotencyStore
    jwt_secret: str
    public_url: str

    @property
    def pool(self) -> asyncpg.Pool:
        return self.client.pool


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def to_json(value: Any) -> Any:
    return jsonable_encoder(value, custom_encoder={Decimal: str})


def documented_key(
    key: Annotated[
        str | None,
        Header(
            alias=KEY_HEADER,
            description="becomes the command's request_id: a retry with the same key and body answers "
            "the same; the same key with another body is refused (409)",
        ),
    ] = None,
) -> None:
    """Declares the header in OpenAPI; ``run_command`` reads and checks it."""


KEYED = [Depends(documented_key)]


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(KEY_HEADER)
    if key is None:
        return None
    if not _KEY_PATTERN.match(key):
        raise ApiError(
            422,
            "malformed",
            f"{KEY_HEADER}: 1-120 letters, digits or _.:@- starting with a letter or digit",
            field=KEY_HEADER,
        )
    return key


async def _finished(svc: Services, opportunity_id: str) -> ApiError | None:
    """A deal whose workflow has finished (closed) still has its row: say so, not 404."""
    try:
        row = await svc.pool.fetchrow("SELECT stage FROM opportunities WHERE id = $1", opportunity_id)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    if row is None:
        return None
    return ApiError(
        409,
        "finished",
        f"opportunity {opportunity_id} is {row['stage']} and its workflow has finished; it takes no "
        "more commands",
    )


async def run_command(
    request: Request,
    principal: Principal,
    action: Callable[[str], Awaitable[Any]],
    *,
    status_code: int = 200,
    opportunity_id: str | None = None,
) -> JSONResponse:
    """Run ``action(request_id)``; answer its result, or the refusal, as JSON."""
    svc = services(request)
    key = idempotency_key(request)
    print_ = ""
    if key is not None:
        path = request.url.path
        print_ = fingerprint(request.method, path, principal.user_id, await request.body())
        kept = await svc.idempotency.claim(key, print_, principal.user_id, request.method, path)
        if kept is not None:
            return JSONResponse(kept.body, status_code=kept.status_code, headers={REPLAYED_HEADER: "true"})
    try:
        response = JSONResponse(to_json(await action(key or new_request_id())), status_code=status_code)
    except Exception as exc:
        error = api_error_for(exc)
        if error is None:
            raise
        if error.status == 404 and opportunity_id is not None:
            error = await _finished(svc, opportunity_id) or error
        response = error.response()
    if key is not None and response.status_code < 500:
        await svc.idempotency.keep(key, print_, response.status_code, json.loads(bytes(response.body)))
    return response
