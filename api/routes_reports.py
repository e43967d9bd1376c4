"""The manager's escalation inbox and the pipeline reports (JSON, or CSV with ?format=csv)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from api import schemas
from api.auth import Principal, current_principal
from api.commands import services, to_json
from api.errors import ERROR_RESPONSES
from starter import reports

router = APIRouter(responses=ERROR_RESPONSES, dependencies=[Depends(current_principal)])

Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]
Owner = Annotated[str | None, Query(description="only this owner's deals")]
Team = Annotated[str | None, Query(description="a manager id: deals of everyone in their reporting chain")]


@router.get(
    "/escalations",
    tags=["escalations"],
    response_model=list[schemas.Escalation],
    summary="Escalation inbox (newest first)",
)
async def escalations(
    request: Request,
    caller: Annotated[Principal, Depends(current_principal)],
    recipient_id: Annotated[str | None, Query(description="whose inbox; `me` for the caller")] = None,
    status: Annotated[str | None, Query(description="open, acknowledged, snoozed or resolved")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONResponse:
    if recipient_id == "me":
        recipient_id = caller.user_id
    rows = await reports.escalation_inbox(
        services(request).pool, recipient_id=recipient_id, status=status, limit=limit
    )
    return JSONResponse(to_json(rows))


def _answer(report: reports.Report, format: str) -> Response:
    if format == "csv":
        return Response(
            report.as_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{report.name}.csv"'},
        )
    return JSONResponse(to_json(report.as_json()))


@router.get("/reports/pipeline", tags=["reports"], summary="Open pipeline by stage and forecast category")
async def pipeline(
    request: Request,
    owner_id: Owner = None,
    team: Team = None,
    by_owner: Annotated[bool, Query(description="one row per owner, stage and category")] = False,
    format: Format = "json",
) -> Response:
    report = await reports.pipeline(services(request).pool, owner_id=owner_id, team=team, by_owner=by_owner)
    return _answer(report, format)


@router.get("/reports/time-in-stage", tags=["reports"], summary="Median and p90 days spent per stage")
async def time_in_stage(
    request: Request, owner_id: Owner = None, team: Team = None, format: Format = "json"
) -> Response:
    return _answer(await reports.time_in_stage(services(request).pool, owner_id=owner_id, team=team), format)


@router.get("/reports/stuck", tags=["reports"], summary="Open deals past their stage's stuck_after")
async def stuck(
    request: Request, owner_id: Owner = None, team: Team = None, format: Format = "json"
) -> Response:
    return _answer(await reports.stuck(services(request).pool, owner_id=owner_id, team=team), format)


@router.get("/reports/overdue", tags=["reports"], summary="Open deals whose close date has passed")
async def overdue(
    request: Request, owner_id: Owner = None, team: Team = None, format: Format = "json"
) -> Response:
    return _answer(await reports.overdue(services(request).pool, owner_id=owner_id, team=team), format)
