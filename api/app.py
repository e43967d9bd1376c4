"""The oppflow HTTP API: every command of the opportunity workflow, the lists and reports
read from Postgres, and escalation action links. OpenAPI at ``/openapi.json``, docs at
``/docs``."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from api import errors, routes_actions, routes_opportunities, routes_reports
from api.commands import Services, services
from api.idempotency import IdempotencyStore
from api.schemas import Health
from starter import metrics, observability
from starter.client import OpportunityClient

DESCRIPTION = """
Sales opportunities as durable Temporal workflows.

* **Auth**: `Authorization: Bearer <JWT>` (HS256, claims `sub` = user id, `roles`, `exp`);
  mint one for local use with `oppflow token --user ID`. The actor of every command is the
  token's user, never a body field.
* **Idempotency**: send `Idempotency-Key` (it becomes the command's `request_id`). The same
  key with the same body answers the same (header `Idempotent-Replayed: true`); the same
  key with another body is refused with 409 `idempotency_key_reused`.
* **Errors**: one body shape, `{status, rule, message, field, missing}`. 401 token, 403
  permission rule, 404 unknown opportunity, 409 business rule (with `missing` fields),
  422 malformed payload (with `field`), 503 + `Retry-After` while Postgres or Temporal
  is unreachable.
"""


def create_app(client: OpportunityClient, *, jwt_secret: str, public_url: str) -> FastAPI:
    app = FastAPI(title="oppflow", version="1", description=DESCRIPTION)
    app.state.services = Services(
        client=client,
        idempotency=IdempotencyStore(client.pool),
        jwt_secret=jwt_secret,
        public_url=public_url.rstrip("/"),
    )
    errors.install(app)
    app.include_router(routes_opportunities.router)
    app.include_router(routes_reports.router)
    app.include_router(routes_actions.router)
    app.add_api_route("/health", health, methods=["GET"], response_model=Health, tags=["operations"])
    app.mount("/metrics", metrics.metrics_app())
    app.add_middleware(observability.RequestContext)
    return app


async def health(request: Request) -> JSONResponse:
    """Postgres and Temporal reachable: 200; otherwise 503 naming which is down."""
    svc = services(request)
    status = {"postgres": "ok", "temporal": "ok"}
    try:
        await svc.pool.fetchval("SELECT 1", timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        status["postgres"] = f"unavailable: {type(exc).__name__}"
    try:
        await svc.client.temporal.service_client.check_health(timeout=timedelta(seconds=2))
    except (RPCError, RuntimeError) as exc:
        status["temporal"] = f"unavailable: {type(exc).__name__}"
    healthy = all(v == "ok" for v in status.values())
    headers = {} if healthy else {"Retry-After": str(errors.RETRY_AFTER_SECONDS)}
    return JSONResponse(status, status_code=200 if healthy else 503, headers=headers)
