"""The HTTP API in front of a real worker, dev server and Postgres: tokens of every kind of
caller, every command, the error matrix and Idempotency-Key replays."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from sales.process import default_process
from starter import processes
from starter.action_links import links_for
from starter.client import workflow_id
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app

SECRET = "api-test-secret-that-is-long-enough-for-hs256"
BASE = "http://api.test"


@asynccontextmanager
async def http_api(app: App) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app.client, jwt_secret=SECRET, public_url=BASE)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with http_api(app) as client:
        yield client


def auth(app: App, name: str, roles: list[str] | None = None, /, **headers: str) -> dict[str, str]:
    role = {p.id: p.roles for p in app.team.people}.get(app.team.id(name), ["rep"])
    token = mint_token(SECRET, app.team.id(name), roles or role)
    return {"Authorization": f"Bearer {token}", **headers}


async def new_deal(http: httpx.AsyncClient, app: App, **body: Any) -> str:
    response = await http.post(
        "/opportunities",
        json={"name": "Acme rollout", "account": "Acme", "amount": "50000", **body},
        headers=auth(app, "rep"),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["opportunity_id"])


async def stage_rows(app: App, opp: str) -> list[tuple[str | None, str, str]]:
    rows = await app.pool.fetch(
        "SELECT from_stage, to_stage, actor_id FROM stage_history WHERE opportunity_id = $1 "
        "ORDER BY changed_at, id",
        opp,
    )
    return [(r["from_stage"], r["to_stage"], r["actor_id"]) for r in rows]


# -- the documented surface -------------------------------------------------------------------------


async def test_openapi_documents_every_contract_path_and_the_bearer_scheme(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    expected = {
        ("post", "/opportunities"),
        ("get", "/opportunities"),
        ("get", "/opportunities/{opportunity_id}"),
        ("patch", "/opportunities/{opportunity_id}"),
        ("post", "/opportunities/{opportunity_id}/stage"),
        ("post", "/opportunities/{opportunity_id}/activities"),
        ("get", "/opportunities/{opportunity_id}/history"),
        ("get", "/escalations"),
    }
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= documented
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    stage_change = spec["paths"]["/opportunities/{opportunity_id}/stage"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in stage_change["parameters"] if p["in"] == "header"]
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- 401 ---------------------------------------------------------------------------------------------


async def test_no_token_a_forged_one_or_an_expired_one_is_refused_with_401(
    http: httpx.AsyncClient, app: App
) -> None:
    rep = app.team.id("rep")
    cases = {
        "missing_token": {},
        "invalid_token": {"Authorization": "Bearer not-a-jwt"},
    }
    forged = mint_token("some-other-secret-also-long-enough-for-hs256", rep, ["admin"])
    expired = mint_token(SECRET, rep, ["rep"], now=datetime.now(UTC) - timedelta(hours=9))
    link = links_for(BASE, SECRET, "x", 1, 1, rep, datetime.now(UTC))["acknowledge"].rsplit("/", 1)[1]
    for rule, headers in [
        *cases.items(),
        ("invalid_token", {"Authorization": f"Bearer {forged}"}),
        ("token_expired", {"Authorization": f"Bearer {expired}"}),
        ("invalid_token", {"Authorization": f"Bearer {link}"}),
    ]:
        response = await http.get("/opportunities", headers=headers)
        assert response.status_code == 401, (rule, response.text)
        assert response.json()["rule"] == rule
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- a deal's life over HTTP ----------------------------------------------------------------------------


async def test_a_rep_creates_moves_updates_and_reads_a_deal(http: httpx.AsyncClient, app: App) -> None:
    rep = auth(app, "rep")
    opp = await new_deal(http, app, close_date="2030-03-31")

    moved = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=rep)
    assert moved.status_code == 200, moved.text
    assert moved.json()["message"] == "moved from Prospecting to Qualification"
    assert moved.json()["stage_entry_seq"] == 2

    patched = await http.patch(f"/opportunities/{opp}", json={"fields": {"budget": 80000}}, headers=rep)
    assert patched.status_code == 200 and patched.json()["message"] == "updated budget"

    recorded = await http.post(
        f"/opportunities/{opp}/activities", json={"kind": "call", "subject": "intro"}, headers=rep
    )
    assert recorded.status_code == 202 and recorded.json()["accepted"] is True

    state = (await http.get(f"/opportunities/{opp}", headers=rep)).json()
    assert (state["stage"], state["owner_id"], state["fields"]) == (
        "Qualification",
        app.team.id("rep"),
        {"budget": 80000},
    )
    assert Decimal(state["amount"]) == Decimal(50000)

    await assert_eq_eventually(
        [(None, "Prospecting", app.team.id("rep")), ("Prospecting", "Qualification", app.team.id("rep"))],
        lambda: stage_rows(app, opp),
    )
    history = (await http.get(f"/opportunities/{opp}/history", headers=rep)).json()
    assert [(h["from_stage"], h["to_stage"]) for h in history] == [
        (None, "Prospecting"),
        ("Prospecting", "Qualification"),
    ]

    async def listed(query: str) -> list[str]:
        response = await http.get(f"/opportunities?{query}", headers=rep)
        return [row["id"] for row in response.json()]

    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM activities WHERE opportunity_id = $1", opp)
    )
    assert opp in await listed(f"owner_id={app.team.id('rep')}&stage=Qualification")
    assert opp not in await listed(f"owner_id={app.team.id('rep')}&stage=Prospecting")
    assert opp not in await listed(f"owner_id={app.team.id('rep')}&escalated=true")
    assert opp in await listed(f"owner_id={app.team.id('rep')}&escalated=false")


async def test_the_actor_is_the_token_user_never_a_body_field(http: httpx.AsyncClient, app: App) -> None:
    opp = await new_deal(http, app)
    impersonating = await http.post(
        f"/opportunities/{opp}/stage",
        json={"stage": "Qualification", "actor": {"id": app.team.id("mgr"), "role": "manager"}},
        headers=auth(app, "rep2"),
    )
    assert impersonating.status_code == 422
    assert impersonating.json()["field"] == "actor"

    await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=auth(app, "mgr"))
    await assert_eq_eventually(
        app.team.id("mgr"),
        lambda: app.pool.fetchval(
            "SELECT actor_id FROM stage_history WHERE opportunity_id = $1 AND to_stage = 'Qualification'", opp
        ),
    )


async def test_a_service_account_records_events_and_moves_deals(http: httpx.AsyncClient, app: App) -> None:
    opp = await new_deal(http, app)
    service = {"Authorization": f"Bearer {mint_token(SECRET, 'billing-sync', ['automation'])}"}
    signed = await http.post(
        f"/opportunities/{opp}/activities", json={"kind": "email", "subject": "quote viewed"}, headers=service
    )
    assert signed.status_code == 202
    moved = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=service)
    assert moved.status_code == 200, moved.text
    await assert_eq_eventually(
        "billing-sync",
        lambda: app.pool.fetchval("SELECT actor_id FROM activities WHERE opportunity_id = $1", opp),
    )


# -- the error matrix ----------------------------------------------------------------------------------


async def test_error_matrix_names_the_rule_the_field_and_what_is_missing(
    http: httpx.AsyncClient, app: App
) -> None:
    opp = await new_deal(http, app)
    rep = auth(app, "rep")
    await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=rep)

    other_rep = await http.post(
        f"/opportunities/{opp}/stage", json={"stage": "Needs Analysis"}, headers=auth(app, "rep2")
    )
    assert other_rep.status_code == 403
    assert other_rep.json()["rule"] == "move_roles" and app.team.id("rep2") in other_rep.json()["message"]

    rep_reassigns = await http.post(
        f"/opportunities/{opp}/reassign", json={"owner_id": app.team.id("rep2")}, headers=rep
    )
    assert (rep_reassigns.status_code, rep_reassigns.json()["rule"]) == (403, "reassign_roles")

    unknown = await http.post(
        "/opportunities/no-such-deal/stage", json={"stage": "Qualification"}, headers=rep
    )
    assert (unknown.status_code, unknown.json()["rule"]) == (404, "unknown_opportunity")
    assert (await http.get("/opportunities/no-such-deal", headers=rep)).status_code == 404
    assert (await http.get("/opportunities/no-such-deal/history", headers=rep)).status_code == 404

    missing = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Needs Analysis"}, headers=rep)
    assert missing.status_code == 409
    assert missing.json()["rule"] == "exit_criteria"
    assert sorted(missing.json()["missing"]) == ["budget", "timeline"]

    for body, field in [
        ({}, "stage"),
        ({"stage": "Needs Analysis", "amount": -5}, "amount"),
        ({"stage": "Needs Analysis", "fields": {"bad key": 1}}, "fields"),
        ({"stage": "Needs Analysis", "close_date": "soon"}, "close_date"),
    ]:
        malformed = await http.post(f"/opportunities/{opp}/stage", json=body, headers=rep)
        assert malformed.status_code == 422, malformed.text
        assert (malformed.json()["rule"], malformed.json()["field"]) == ("malformed", field)

    naive = await http.post(
        f"/opportunities/{opp}/escalation/snooze",
        json={"until": "2030-01-01T09:00:00"},
        headers=auth(app, "mgr"),
    )
    assert (naive.status_code, naive.json()["field"]) == (422, "until")
    not_json = await http.post(
        f"/opportunities/{opp}/stage", content=b"{nope", headers={**rep, "content-type": "application/json"}
    )
    assert not_json.status_code == 422

    state = (await http.get(f"/opportunities/{opp}", headers=rep)).json()
    assert (state["stage"], state["owner_id"], state["fields"]) == ("Qualification", app.team.id("rep"), {})


async def test_a_deal_whose_workflow_has_ended_answers_409_not_404(http: httpx.AsyncClient, app: App) -> None:
    opp = await new_deal(http, app)
    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp)
    )
    await app.temporal.get_workflow_handle(workflow_id(opp)).terminate(reason="test: workflow gone")

    response = await http.post(
        f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=auth(app, "rep")
    )
    assert (response.status_code, response.json()["rule"]) == (409, "finished")


# -- idempotency ------------------------------------------------------------------------------------------


async def test_same_key_same_body_answers_the_same_and_applies_once(
    http: httpx.AsyncClient, app: App
) -> None:
    opp = await new_deal(http, app)
    key = f"move-{uuid.uuid4().hex}"
    headers = auth(app, "rep", **{"Idempotency-Key": key})

    first = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=headers)
    again = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["request_id"] == key
    assert again.headers["Idempotent-Replayed"] == "true"

    other_body = await http.post(
        f"/opportunities/{opp}/stage", json={"stage": "Closed Lost"}, headers=headers
    )
    assert other_body.status_code == 409
    assert (other_body.json()["rule"], other_body.json()["field"]) == (
        "idempotency_key_reused",
        "Idempotency-Key",
    )
    other_path = await http.patch(f"/opportunities/{opp}", json={"fields": {"budget": 1}}, headers=headers)
    assert (other_path.status_code, other_path.json()["rule"]) == (409, "idempotency_key_reused")

    await assert_eq_eventually(
        2, lambda: app.pool.fetchval("SELECT count(*) FROM stage_history WHERE opportunity_id = $1", opp)
    )
    state = (await http.get(f"/opportunities/{opp}", headers=headers)).json()
    assert state["stage"] == "Qualification" and state["stage_entry_seq"] == 2


async def test_a_retried_create_with_the_same_key_reaches_the_same_deal(
    http: httpx.AsyncClient, app: App
) -> None:
    headers = auth(app, "rep", **{"Idempotency-Key": f"create-{uuid.uuid4().hex}"})
    body = {"name": "Globex", "account": "Globex", "amount": "1200"}
    first = await http.post("/opportunities", json=body, headers=headers)
    again = await http.post("/opportunities", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["opportunity_id"] == again.json()["opportunity_id"]
    assert first.json()["created"] is True

    refused_key = await http.post(
        "/opportunities", json=body, headers=auth(app, "rep", **{"Idempotency-Key": "bad key!"})
    )
    assert (refused_key.status_code, refused_key.json()["field"]) == (422, "Idempotency-Key")


async def test_a_refusal_is_kept_for_the_key_too(http: httpx.AsyncClient, app: App) -> None:
    opp = await new_deal(http, app)
    headers = auth(app, "rep2", **{"Idempotency-Key": f"k-{uuid.uuid4().hex}"})
    first = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=headers)
    again = await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=headers)
    assert first.status_code == again.status_code == 403
    assert first.json() == again.json()


# -- every other command ------------------------------------------------------------------------------------


async def test_managers_and_owners_reach_every_command(http: httpx.AsyncClient, app: App) -> None:
    opp = await new_deal(http, app)
    rep, mgr = auth(app, "rep"), auth(app, "mgr")

    async def ok(method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> str:
        response = await http.request(method, f"/opportunities/{opp}{path}", json=body, headers=headers)
        assert response.status_code == 200, (path, response.text)
        return str(response.json()["message"])

    assert "joined" in await ok(
        "POST", "/team", rep, {"user_id": app.team.id("se"), "team_role": "sales_engineer"}
    )
    assert "left" in await ok("DELETE", f"/team/{app.team.id('se')}", rep)
    assert "paused" in await ok("POST", "/clock/pause", rep, {"reason": "customer on holiday"})
    assert "running" in await ok("POST", "/clock/resume", rep, {})
    assert "reassigned" in await ok(
        "POST", "/reassign", mgr, {"owner_id": app.team.id("rep2"), "reason": "territory"}
    )
    await ok("POST", "/stage", mgr, {"stage": "Closed Lost", "fields": {"loss_reason": "Timing"}})
    assert "moved" in await ok("POST", "/reopen", mgr, {"stage": "Prospecting", "reason": "budget came back"})

    state = (await http.get(f"/opportunities/{opp}", headers=rep)).json()
    assert (state["stage"], state["owner_id"], state["team"]) == ("Prospecting", app.team.id("rep2"), [])


async def test_an_admin_moves_a_deal_to_another_process_version(http: httpx.AsyncClient, app: App) -> None:
    process = default_process().model_copy(update={"name": f"api-{app.team.tag}"})
    await processes.publish(app.pool, process)
    opp = await new_deal(http, app, process_name=process.name)
    second = await processes.publish(app.pool, process.model_copy(update={"description": "second"}))

    body = {"version": second.version, "reason": "new rules"}
    refused = await http.post(f"/opportunities/{opp}/process", json=body, headers=auth(app, "mgr"))
    assert (refused.status_code, refused.json()["rule"]) == (403, "admin_only")
    migrated = await http.post(f"/opportunities/{opp}/process", json=body, headers=auth(app, "ops"))
    assert migrated.status_code == 200, migrated.text
    assert migrated.json()["message"] == f"migrated from {process.name} v1 to {process.name} v2"
    unknown = await http.post(
        f"/opportunities/{opp}/process", json={**body, "version": 9}, headers=auth(app, "ops")
    )
    assert (unknown.status_code, unknown.json()["rule"]) == (409, "unknown_process")


# -- escalations: inbox, commands and action links --------------------------------------------------


async def escalated_deal(http: httpx.AsyncClient, app: App) -> str:
    """A deal imported 18 days into Prospecting (14d + 3d): level 2 goes to the owner's manager."""
    entered = (datetime.now(UTC) - timedelta(days=18)).isoformat()
    opp = await new_deal(http, app, stage_entered_at=entered)
    await assert_eq_eventually(
        [(2, app.team.id("mgr"), "open")],
        lambda: fetch_escalations(app, opp),
        timeout=20,
    )
    return opp


async def fetch_escalations(app: App, opp: str) -> list[tuple[int, str, str]]:
    rows = await app.pool.fetch(
        "SELECT level, recipient_id, status FROM escalations "
        "WHERE opportunity_id = $1 AND status <> 'superseded'",
        opp,
    )
    return [(r["level"], r["recipient_id"], r["status"]) for r in rows]


async def test_the_manager_inbox_lists_escalations_and_acts_on_them(
    http: httpx.AsyncClient, app: App
) -> None:
    opp = await escalated_deal(http, app)
    mgr = auth(app, "mgr")
    inbox = (
        await http.get(f"/escalations?recipient_id={app.team.id('mgr')}&status=open", headers=mgr)
    ).json()
    assert [(e["opportunity_id"], e["level"], e["stage"]) for e in inbox] == [(opp, 2, "Prospecting")]
    assert inbox[0]["opportunity_name"] == "Acme rollout"

    listed = (
        await http.get(f"/opportunities?owner_id={app.team.id('rep')}&escalated=true", headers=mgr)
    ).json()
    assert opp in [row["id"] for row in listed]

    refused = await http.post(
        f"/opportunities/{opp}/escalation/acknowledge", json={}, headers=auth(app, "rep")
    )
    assert (refused.status_code, refused.json()["rule"]) == (403, "escalation_roles")
    until = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    snoozed = await http.post(f"/opportunities/{opp}/escalation/snooze", json={"until": until}, headers=mgr)
    assert snoozed.status_code == 200, snoozed.text
    await assert_eq_eventually([(2, app.team.id("mgr"), "snoozed")], lambda: fetch_escalations(app, opp))

    async def inbox_of(status: str) -> list[str]:
        query = f"recipient_id=me&status={status}"
        return [e["opportunity_id"] for e in (await http.get(f"/escalations?{query}", headers=mgr)).json()]

    assert (await inbox_of("snoozed"), await inbox_of("open")) == ([opp], [])
    acked = await http.post(
        f"/opportunities/{opp}/escalation/acknowledge", json={"note": "on it"}, headers=mgr
    )
    assert acked.status_code == 200, acked.text
    await assert_eq_eventually([opp], lambda: inbox_of("acknowledged"))


async def test_an_action_link_works_once_as_its_recipient(http: httpx.AsyncClient, app: App) -> None:
    opp = await escalated_deal(http, app)
    links = links_for(BASE, SECRET, opp, 1, 2, app.team.id("mgr"), datetime.now(UTC))
    assert set(links) == {"acknowledge", "snooze_1d", "snooze_3d", "snooze_7d", "open"}
    path = links["acknowledge"].removeprefix(BASE)

    preview = await http.get(path, headers={"accept": "text/html"})
    assert preview.status_code == 200 and "<form method='post'>" in preview.text
    assert (await http.get(f"/opportunities/{opp}", headers=auth(app, "mgr"))).json()["clock"][
        "acknowledged_by"
    ] is None

    used = await http.post(path)
    assert used.status_code == 200, used.text
    assert used.json()["result"]["message"] == "escalation level 2 acknowledged"
    state = (await http.get(f"/opportunities/{opp}", headers=auth(app, "mgr"))).json()
    assert state["clock"]["acknowledged_by"] == app.team.id("mgr")

    twice = await http.post(path)
    assert (twice.status_code, twice.json()["rule"]) == (410, "link_used")
    assert (await http.get(path)).json()["rule"] == "link_used"

    opened = await http.post(links["open"].removeprefix(BASE))
    assert opened.status_code == 200 and opened.json()["result"]["opportunity_id"] == opp


async def test_an_expired_or_altered_action_link_does_nothing(http: httpx.AsyncClient, app: App) -> None:
    opp = await escalated_deal(http, app)
    old = links_for(BASE, SECRET, opp, 1, 2, app.team.id("mgr"), datetime.now(UTC) - timedelta(days=8))
    expired = await http.post(old["acknowledge"].removeprefix(BASE))
    assert (expired.status_code, expired.json()["rule"]) == (410, "link_expired")

    fresh = links_for(BASE, SECRET, opp, 1, 2, app.team.id("mgr"), datetime.now(UTC))[
        "snooze_3d"
    ].removeprefix(BASE)
    header, claims, signature = fresh.removeprefix("/actions/").split(".")
    altered = await http.post(f"/actions/{header}.{claims}.{signature[::-1]}")
    assert (altered.status_code, altered.json()["rule"]) == (401, "link_invalid")
    bearer = mint_token(SECRET, app.team.id("mgr"), ["manager"])
    assert (await http.post(f"/actions/{bearer}")).json()["rule"] == "link_invalid"

    state = (await http.get(f"/opportunities/{opp}", headers=auth(app, "mgr"))).json()
    assert (state["clock"]["acknowledged_by"], state["clock"]["snoozed_until"]) == (None, None)

    snoozed = await http.post(fresh, headers={"accept": "text/html"})
    assert snoozed.status_code == 200 and "snoozed until" in snoozed.text
    assert (await http.post(fresh)).status_code == 410


async def test_a_link_for_a_stage_the_deal_has_left_is_refused(http: httpx.AsyncClient, app: App) -> None:
    opp = await escalated_deal(http, app)
    link = links_for(BASE, SECRET, opp, 1, 2, app.team.id("mgr"), datetime.now(UTC))["acknowledge"]
    await http.post(f"/opportunities/{opp}/stage", json={"stage": "Qualification"}, headers=auth(app, "rep"))
    outdated = await http.post(link.removeprefix(BASE))
    assert (outdated.status_code, outdated.json()["rule"]) == (409, "link_outdated")
