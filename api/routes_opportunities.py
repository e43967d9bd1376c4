"""Opportunities: create, read, list, and every command of the workflow."""

# No postponed annotations here: FastAPI reads the body types of generated routes at runtime.

import hashlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import schemas
from api.auth import Principal, current_principal
from api.commands import KEYED, run_command, services, to_json
from api.errors import ERROR_RESPONSES
from sales.messages import CommandResult
from starter import reports

router = APIRouter(tags=["opportunities"], responses=ERROR_RESPONSES)

Caller = Annotated[Principal, Depends(current_principal)]


def _opportunity_id_for(key: str | None) -> str:
    """A retried create with the same key must reach the same deal, even without an id."""
    if key is None:
        return uuid.uuid4().hex[:12]
    return hashlib.sha256(f"opportunity|{key}".encode()).hexdigest()[:12]


@router.post(
    "/opportunities",
    status_code=201,
    response_model=schemas.Created,
    summary="Create an opportunity (starts its workflow)",
    dependencies=KEYED,
)
async def create_opportunity(
    request: Request,
    caller: Caller,
    body: schemas.CreateBody,  # type: ignore[valid-type]
) -> JSONResponse:
    values: dict[str, Any] = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    client = services(request).client

    async def create(request_id: str) -> schemas.Created:
        key = request.headers.get("Idempotency-Key")
        created = await client.create(
            actor=caller.actor,
            **{
                **values,
                "owner_id": values.get("owner_id") or caller.user_id,
                "opportunity_id": values.get("opportunity_id") or _opportunity_id_for(key),
                "request_id": request_id,
            },
        )
        return schemas.Created(
            opportunity_id=created.opportunity_id,
            workflow_id=created.workflow_id,
            created=created.created,
            request_id=request_id,
        )

    return await run_command(request, caller, create, status_code=201)


@router.get("/opportunities", response_model=list[schemas.OpportunitySummary], summary="List (from Postgres)")
async def list_opportunities(
    request: Request,
    caller: Caller,
    stage: str | None = None,
    owner_id: str | None = None,
    escalated: Annotated[bool | None, Query(description="only deals with an escalation level fired")] = None,
    closed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    rows = await reports.list_opportunities(
        services(request).pool,
        stage=stage,
        owner_id=owner_id,
        escalated=escalated,
        closed=closed,
        limit=limit,
        offset=offset,
    )
    return JSONResponse(to_json(rows))


@router.get("/opportunities/{opportunity_id}", summary="Live state (query on the workflow)")
async def get_opportunity(request: Request, caller: Caller, opportunity_id: str) -> dict[str, Any]:
    return await services(request).client.state(opportunity_id)


@router.get(
    "/opportunities/{opportunity_id}/history",
    response_model=list[schemas.HistoryEntry],
    summary="Stage history (from Postgres)",
)
async def get_history(request: Request, caller: Caller, opportunity_id: str) -> JSONResponse:
    return JSONResponse(to_json(await services(request).client.history(opportunity_id)))


# (update name, body, method, path under /opportunities/{opportunity_id}, summary)
COMMANDS: list[tuple[str, Any, str, str, str]] = [
    ("change_stage", schemas.ChangeStageBody, "POST", "/stage", "Change stage (closing included)"),
    ("update_fields", schemas.UpdateFieldsBody, "PATCH", "", "Update fields, amount, close date or name"),
    ("reopen", schemas.ReopenBody, "POST", "/reopen", "Reopen a closed deal into an open stage"),
    ("reassign", schemas.ReassignBody, "POST", "/reassign", "Give the deal to a new owner"),
    ("add_team_member", schemas.AddTeamMemberBody, "POST", "/team", "Add a person to the deal team"),
    ("acknowledge_escalation", schemas.AcknowledgeBody, "POST", "/escalation/acknowledge", "Acknowledge"),
    ("snooze_escalation", schemas.SnoozeBody, "POST", "/escalation/snooze", "Push the next level to a date"),
    ("pause_clock", schemas.PauseClockBody, "POST", "/clock/pause", "Pause the stage clock"),
    ("resume_clock", schemas.ResumeClockBody, "POST", "/clock/resume", "Resume the stage clock"),
]


def _add_command(name: str, body_type: Any, method: str, path: str, summary: str) -> None:
    """Register ``method path``: sends the ``name`` update with the body's fields."""

    async def endpoint(
        request: Request,
        caller: Caller,
        opportunity_id: str,
        body: body_type,  # type: ignore[valid-type]
    ) -> JSONResponse:
        values = body.model_dump(exclude_unset=True)
        send = getattr(services(request).client, name)

        async def action(request_id: str) -> CommandResult:
            result: CommandResult = await send(
                opportunity_id, actor=caller.actor, request_id=request_id, **values
            )
            return result

        return await run_command(request, caller, action, opportunity_id=opportunity_id)

    endpoint.__name__ = name
    router.add_api_route(
        "/opportunities/{opportunity_id}" + path,
        endpoint,
        methods=[method],
        summary=summary,
        response_model=CommandResult,
        dependencies=KEYED,
    )


for _spec in COMMANDS:
    _add_command(*_spec)


@router.delete(
    "/opportunities/{opportunity_id}/team/{user_id}",
    summary="Remove a person from the deal team",
    response_model=CommandResult,
    dependencies=KEYED,
)
async def remove_team_member(
    request: Request, caller: Caller, opportunity_id: str, user_id: str
) -> JSONResponse:
    client = services(request).client

    async def action(request_id: str) -> CommandResult:
        return await client.remove_team_member(
            opportunity_id, actor=caller.actor, user_id=user_id, request_id=request_id
        )

    return await run_command(request, caller, action, opportunity_id=opportunity_id)


@router.post(
    "/opportunities/{opportunity_id}/process",
    summary="Admin: move the deal to another published process version",
    response_model=CommandResult,
    dependencies=KEYED,
)
async def migrate_process(
    request: Request, caller: Caller, opportunity_id: str, body: schemas.MigrateProcessBody
) -> JSONResponse:
    client = services(request).client

    async def action(request_id: str) -> CommandResult:
        name = body.process_name or (await client.state(opportunity_id))["process"]["name"]
        return await client.migrate_process(
            opportunity_id,
            actor=caller.actor,
            name=name,
            version=body.version,
            reason=body.reason,
            request_id=request_id,
        )

    return await run_command(request, caller, action, opportunity_id=opportunity_id)


@router.post(
    "/opportunities/{opportunity_id}/activities",
    status_code=202,
    response_model=schemas.ActivityAccepted,
    summary="Record an activity (signal record_activity)",
    dependencies=KEYED,
)
async def record_activity(
    request: Request,
    caller: Caller,
    opportunity_id: str,
    body: schemas.RecordActivityBody,  # type: ignore[valid-type]
) -> JSONResponse:
    values = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    client = services(request).client

    async def action(request_id: str) -> schemas.ActivityAccepted:
        sent = await client.record_activity(
            opportunity_id, actor=caller.actor, request_id=request_id, **values
        )
        return schemas.ActivityAccepted(request_id=sent, message=f"{values['kind']} recorded")

    return await run_command(request, caller, action, status_code=202, opportunity_id=opportunity_id)
