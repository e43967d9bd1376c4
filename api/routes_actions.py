"""Escalation action links: ``GET /actions/{token}`` shows what the link will do (safe for
mail scanners that prefetch links), ``POST /actions/{token}`` does it, once, as the
recipient the link was sent to."""

import html
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.commands import Services, services, to_json
from api.errors import ApiError, Problem, api_error_for
from starter import action_links
from starter.action_links import ActionClaim, LinkError

router = APIRouter(tags=["action links"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "not a valid oppflow action link"},
    409: {"model": Problem, "description": "refused, e.g. the deal has left the stage it was sent for"},
    410: {"model": Problem, "description": "the link has expired or was already used"},
    503: {"model": Problem, "description": "Postgres or Temporal briefly unreachable; the link still works"},
}

MARK_USED = """
INSERT INTO action_link_uses (nonce, action, opportunity_id, stage_entry_seq, level, recipient_id, result)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (nonce) DO NOTHING
RETURNING nonce
"""


def _describe(claim: ActionClaim) -> str:
    if claim.action == "acknowledge":
        return f"Acknowledge the level {claim.level} escalation of opportunity {claim.opportunity_id}"
    if claim.action == "snooze":
        return f"Snooze the escalation of opportunity {claim.opportunity_id} for {claim.days} day(s)"
    return f"Open opportunity {claim.opportunity_id}"


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def _error(request: Request, error: ApiError) -> Response:
    if _wants_html(request):
        return _page("Action link", f"<p>{html.escape(error.problem.message)}</p>", error.status)
    return error.response()


def _claim(token: str, secret: str) -> ActionClaim:
    try:
        return action_links.verify(token, secret)
    except LinkError as exc:
        raise ApiError(401 if exc.rule == "link_invalid" else 410, exc.rule, exc.message) from None


async def _used(svc: Services, claim: ActionClaim) -> ApiError | None:
    used_at = await svc.pool.fetchval("SELECT used_at FROM action_link_uses WHERE nonce = $1", claim.nonce)
    if used_at is None:
        return None
    return ApiError(410, "link_used", f"this action link was already used at {used_at.isoformat()}")


@router.get("/actions/{token}", responses=RESPONSES, summary="What an action link will do (changes nothing)")
async def preview(request: Request, token: str) -> Response:
    svc = services(request)
    try:
        claim = _claim(token, svc.jwt_secret)
        if used := await _used(svc, claim):
            raise used
    except Exception as exc:
        if (error := api_error_for(exc)) is None:
            raise
        return _error(request, error)
    what = _describe(claim)
    if not _wants_html(request):
        return JSONResponse(
            to_json({"action": claim.action, "description": what, "expires_at": claim.expires_at})
        )
    form = (
        f"<p>As {html.escape(claim.recipient_id)}; the link works once, until "
        f"{html.escape(claim.expires_at.isoformat())}.</p>"
        f"<form method='post'><button type='submit'>{html.escape(what)}</button></form>"
    )
    return _page(what, form)


async def _perform(svc: Services, claim: ActionClaim, request_id: str) -> dict[str, Any]:
    client = svc.client
    state = await client.state(claim.opportunity_id)
    if claim.action == "open":
        return state
    if state["stage_entry_seq"] != claim.stage_entry_seq:
        raise ApiError(
            409,
            "link_outdated",
            f"opportunity {claim.opportunity_id} has left the stage this escalation was sent for "
            f"(now {state['stage']})",
        )
    actor = await client.actor(claim.recipient_id)
    if claim.action == "acknowledge":
        result = await client.acknowledge_escalation(
            claim.opportunity_id,
            actor=actor,
            note="acknowledged from the notification",
            request_id=request_id,
        )
    else:
        until = datetime.now(UTC) + timedelta(days=claim.days or 1)
        result = await client.snooze_escalation(
            claim.opportunity_id, actor=actor, until=until, request_id=request_id
        )
    return result.model_dump(mode="json")


@router.post("/actions/{token}", responses=RESPONSES, summary="Do what an action link says, once")
async def perform(request: Request, token: str) -> Response:
    svc = services(request)
    try:
        claim = _claim(token, svc.jwt_secret)
        if used := await _used(svc, claim):
            raise used
        # The nonce is the command's request id: a double click is applied once by the workflow.
        result = await _perform(svc, claim, f"link-{claim.nonce}")
        marked = await svc.pool.fetchval(
            MARK_USED,
            claim.nonce,
            claim.action,
            claim.opportunity_id,
            claim.stage_entry_seq,
            claim.level,
            claim.recipient_id,
            to_json({"message": result.get("message")} if claim.action != "open" else {}),
        )
        if marked is None:
            raise ApiError(410, "link_used", "this action link was already used")
    except Exception as exc:
        if (error := api_error_for(exc)) is None:
            raise
        return _error(request, error)
    if _wants_html(request):
        message = result.get("message") or f"{result.get('name')} — {result.get('stage')}"
        return _page(_describe(claim), f"<p>{html.escape(str(message))}</p>")
    return JSONResponse(to_json({"action": claim.action, "result": result}))
