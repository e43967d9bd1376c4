"""Activities from backend services and the admin automations they trigger, end to end:
the ``record_activity`` signal from Python and from the ``temporal`` CLI, the timeline in
Postgres, and the default process's rules (discovery meeting, quote sent, contract signed)
obeying the same stage rules as people, without loops."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from sales.messages import Actor
from sales.process import parse_process_yaml
from starter import processes
from starter.client import workflow_id
from starter.temporal_server import temporal_binary
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app

SERVICE = Actor(id="crm-sync", role="automation")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


async def new_deal(app: App, stage: str | None = None, **extra: Any) -> str:
    opp = app.opp_id()
    await app.client.create(
        actor=app.team.actor("rep"),
        name="Globex expansion",
        account="Globex",
        owner_id=app.team.id("rep"),
        opportunity_id=opp,
        amount="75000",
        stage=stage,
        **extra,
    )
    return opp


async def stage_of(app: App, opp: str) -> str:
    return (await app.client.state(opp))["stage"]


async def activity_count(app: App, opp: str) -> int:
    return (await app.client.state(opp))["activity_count"]


async def events(app: App, opp: str, kind: str) -> list[dict[str, Any]]:
    rows = await app.pool.fetch(
        "SELECT actor_id, detail FROM opportunity_events WHERE opportunity_id = $1 AND kind = $2 ORDER BY id",
        opp,
        kind,
    )
    return [{"actor_id": r["actor_id"], **r["detail"]} for r in rows]


async def moves(app: App, opp: str) -> list[tuple[str | None, str, str]]:
    rows = await app.pool.fetch(
        "SELECT from_stage, to_stage, actor_id FROM stage_history "
        "WHERE opportunity_id = $1 ORDER BY changed_at, id",
        opp,
    )
    return [(r["from_stage"], r["to_stage"], r["actor_id"]) for r in rows]


def temporal_cli(env: WorkflowEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    address = env.client.service_client.config.target_host
    return subprocess.run(
        [temporal_binary(), *args, "--address", address, "--namespace", "default", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- the activity timeline --------------------------------------------------------------------------


async def test_an_activity_from_python_lands_once_in_the_timeline(app: App) -> None:
    opp = await new_deal(app)
    held = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    for _ in range(2):  # a retrying sender: the same request id twice
        await app.client.record_activity(
            opp,
            actor=SERVICE,
            request_id=f"{opp}-call-1",
            kind="call",
            subject="pricing call",
            outcome="completed",
            occurred_at=held,
            data={"duration_minutes": 25},
        )
    await app.client.record_activity(opp, actor=app.team.actor("rep"), kind="note", subject="sent deck")

    await assert_eq_eventually(2, lambda: activity_count(app, opp))
    state = await app.client.state(opp)
    assert [(a["kind"], a["subject"], a["actor_id"]) for a in state["recent_activities"]] == [
        ("call", "pricing call", "crm-sync"),
        ("note", "sent deck", app.team.id("rep")),
    ]
    assert datetime.fromisoformat(state["last_activity_at"]) > held  # the note happened just now

    async def timeline() -> list[tuple[str, str, str | None, dict[str, Any]]]:
        rows = await app.pool.fetch(
            "SELECT kind, actor_id, outcome, data FROM activities "
            "WHERE opportunity_id = $1 ORDER BY occurred_at",
            opp,
        )
        return [(r["kind"], r["actor_id"], r["outcome"], r["data"]) for r in rows]

    await assert_eq_eventually(
        [("call", "crm-sync", "completed", {"duration_minutes": 25}), ("note", app.team.id("rep"), None, {})],
        timeline,
    )
    held_at = await app.pool.fetchval(
        "SELECT occurred_at FROM activities WHERE request_id = $1", f"{opp}-call-1"
    )
    assert held_at == held
    assert (
        await app.pool.fetchval("SELECT last_activity_at FROM opportunities WHERE id = $1", opp) is not None
    )


async def test_an_activity_from_the_temporal_cli_lands_once_in_the_timeline(
    app: App, temporal_env: WorkflowEnvironment
) -> None:
    opp = await new_deal(app)
    signal = {
        "request_id": f"{opp}-email",
        "actor": {"id": "mail-bridge", "role": "automation"},
        "kind": "email",
        "subject": "Re: security questionnaire",
        "occurred_at": "2026-03-03T09:00:00Z",
        "data": {"direction": "inbound"},
    }
    for _ in range(2):
        sent = await asyncio.to_thread(
            temporal_cli,
            temporal_env,
            "workflow",
            "signal",
            "--workflow-id",
            workflow_id(opp),
            "--name",
            "record_activity",
            "--input",
            json.dumps(signal),
        )
        assert sent.returncode == 0, sent.stderr

    await assert_eq_eventually(
        [("email", "mail-bridge", {"direction": "inbound"})], lambda: timeline_of(app, opp)
    )
    state = await app.client.state(opp)
    assert state["activity_count"] == 1
    assert state["last_activity_at"] == "2026-03-03T09:00:00Z"


async def timeline_of(app: App, opp: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = await app.pool.fetch("SELECT kind, actor_id, data FROM activities WHERE opportunity_id = $1", opp)
    return [(r["kind"], r["actor_id"], r["data"]) for r in rows]


async def test_a_malformed_activity_is_refused_visibly(app: App) -> None:
    opp = await new_deal(app)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    await handle.signal(
        "record_activity",
        {
            "request_id": "bad-1",
            "actor": {"id": "crm-sync", "role": "automation"},
            "subject": "no kind given",
        },
    )

    async def refusals() -> list[tuple[str, str, str]]:
        state = await app.client.state(opp)
        return [(r["actor_id"], r["command"], r["rule"]) for r in state["refusals"]]

    await assert_eq_eventually([("crm-sync", "record_activity", "malformed")], refusals)
    refusal = (await app.client.state(opp))["refusals"][0]
    assert "kind: Field required" in refusal["message"]
    await assert_eq_eventually(1, lambda: len_of(events(app, opp, "signal_refused")))
    assert await app.pool.fetchval("SELECT count(*) FROM activities WHERE opportunity_id = $1", opp) == 0


async def len_of(rows: Any) -> int:
    return len(await rows)


# -- the default process's automations --------------------------------------------------------------


async def test_a_completed_discovery_meeting_qualifies_the_lead(app: App) -> None:
    opp = await new_deal(app)
    for kind, outcome, data in [
        ("meeting", "completed", {"type": "demo"}),
        ("meeting", "no_show", {"type": "discovery"}),
        ("call", "completed", {"type": "discovery"}),
    ]:
        await app.client.record_activity(opp, actor=SERVICE, kind=kind, outcome=outcome, data=data)
    await assert_eq_eventually(3, lambda: activity_count(app, opp))
    assert await stage_of(app, opp) == "Prospecting"

    await app.client.record_activity(
        opp,
        actor=SERVICE,
        request_id=f"{opp}-disco",
        kind="meeting",
        subject="Discovery with Globex IT",
        outcome="completed",
        data={"type": "discovery"},
    )

    await assert_eq_eventually("Qualification", lambda: stage_of(app, opp))
    await assert_eq_eventually(
        [(None, "Prospecting", app.team.id("rep")), ("Prospecting", "Qualification", "automation")],
        lambda: moves(app, opp),
    )
    reason = await app.pool.fetchval(
        "SELECT reason FROM stage_history WHERE opportunity_id = $1 AND to_stage = 'Qualification'", opp
    )
    assert reason == "automation: discovery meeting qualifies the lead"


async def test_a_quote_sent_is_refused_until_technical_validation_is_done(app: App) -> None:
    team = app.team
    rep, se = team.actor("rep"), team.actor("se")
    opp = await new_deal(app, stage="Id. Decision Makers", fields={"decision_maker": "CFO Dana"})
    await app.client.add_team_member(opp, actor=rep, user_id=se.id, team_role="sales_engineer")

    await app.client.record_activity(
        opp, actor=SERVICE, request_id=f"{opp}-quote-1", kind="quote_sent", subject="Quote Q-1001"
    )

    async def refusals() -> list[tuple[str, str, str, list[str]]]:
        state = await app.client.state(opp)
        return [(r["actor_id"], r["command"], r["rule"], r["missing"]) for r in state["refusals"]]

    await assert_eq_eventually(
        [
            (
                "automation",
                "automation 'quote sent moves to Proposal' on quote_sent",
                "skip_requirements",
                ["technical_validation"],
            )
        ],
        refusals,
    )
    assert await stage_of(app, opp) == "Id. Decision Makers"
    await assert_eq_eventually(1, lambda: len_of(events(app, opp, "automation_refused")))
    [refused] = await events(app, opp, "automation_refused")
    assert refused == {
        "actor_id": "automation",
        "rule": "quote sent moves to Proposal",
        "refusal_rule": "skip_requirements",
        "message": "cannot skip Perception Analysis: missing technical_validation",
        "missing": ["technical_validation"],
        "activity": "quote_sent",
    }

    # The way the process wants it: through Perception Analysis, where the SE validates.
    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")
    handoff = app.temporal.get_workflow_handle(f"handoff-{opp}-technical_validation-2")
    await assert_eq_eventually(se.id, lambda: assignee(handoff))
    await handoff.execute_update(
        "complete_handoff",
        {"request_id": f"{opp}-tv", "actor": se.model_dump(), "note": "SSO and data residency confirmed"},
    )
    await assert_eq_eventually([], lambda: missing_handoffs(app, opp))
    await app.client.record_activity(
        opp, actor=SERVICE, request_id=f"{opp}-quote-2", kind="quote_sent", subject="Quote Q-1002"
    )
    await assert_eq_eventually("Proposal/Price Quote", lambda: stage_of(app, opp))


async def assignee(handoff: WorkflowHandle[Any, Any]) -> str | None:
    try:
        return (await handoff.query("get_handoff"))["assignee_id"]
    except RPCError:  # the opportunity starts its hand-off right after the stage change
        return None


async def missing_handoffs(app: App, opp: str) -> list[str]:
    return (await app.client.state(opp))["requirements"]["missing_handoffs"]


async def test_a_signed_contract_closes_the_deal_won_when_the_rules_allow(app: App) -> None:
    early = await new_deal(app, stage="Qualification", fields={"budget": 75000, "timeline": "Q2"})
    late = await new_deal(app, stage="Negotiation/Review", fields={"decision_maker": "CFO Dana"})
    for opp in (early, late):
        await app.client.record_activity(
            opp, actor=SERVICE, kind="contract_signed", subject="DocuSign envelope"
        )

    await assert_eq_eventually(("Closed Won", True), lambda: won(app, late))
    await assert_eq_eventually(
        [("Negotiation/Review", "Closed Won", "automation")], lambda: later_moves(app, late)
    )

    async def early_refusals() -> list[tuple[str, list[str]]]:
        return [(r["rule"], r["missing"]) for r in (await app.client.state(early))["refusals"]]

    await assert_eq_eventually(
        [("skip_requirements", ["decision_maker", "technical_validation"])], early_refusals
    )
    assert await won(app, early) == ("Qualification", False)


async def won(app: App, opp: str) -> tuple[str, bool]:
    state = await app.client.state(opp)
    return state["stage"], state["is_won"]


async def later_moves(app: App, opp: str) -> list[tuple[str | None, str, str]]:
    return (await moves(app, opp))[1:]


async def test_an_activity_from_someone_outside_the_deal_triggers_no_automation(app: App) -> None:
    opp = await new_deal(app, stage="Negotiation/Review", fields={"decision_maker": "CFO Dana"})
    other_rep = app.team.actor("rep2")
    await app.client.record_activity(opp, actor=other_rep, kind="contract_signed", subject="signed, trust me")

    await assert_eq_eventually(1, lambda: activity_count(app, opp))
    await asyncio.sleep(0.5)
    state = await app.client.state(opp)
    assert (state["stage"], state["is_closed"]) == ("Negotiation/Review", False)
    assert any(other_rep.id in r["message"] for r in state["refusals"]), state["refusals"]


# -- chains of automations --------------------------------------------------------------------------

CHAIN = """\
name: {name}
rules:
  max_automation_chain: {limit}
stages:
  - {{name: Lead, probability: 10, forecast_category: Pipeline}}
  - {{name: Engaged, probability: 20, forecast_category: Pipeline}}
  - {{name: Scoped, probability: 40, forecast_category: Pipeline}}
  - {{name: Proposed, probability: 60, forecast_category: Pipeline}}
  - {{name: Committed, probability: 80, forecast_category: Commit}}
  - {{name: Signed, probability: 90, forecast_category: Commit}}
  - {{name: Won, probability: 100, forecast_category: Closed, closed: true, won: true}}
  - {{name: Lost, probability: 0, forecast_category: Omitted, closed: true}}
automations:
{rules}
"""


def rule(name: str, to_stage: str, advance_to: str) -> str:
    return (
        f"  - name: {name}\n"
        f"    when: {{kind: stage_changed, where: {{data.to_stage: {to_stage}}}}}\n"
        f"    then: {{advance_to: {advance_to}}}"
    )


async def publish_chain(app: App, name: str, limit: int, rules: list[str]) -> str:
    kickoff = (
        "  - {name: kickoff engages the lead, when: {kind: kickoff, stage: Lead}, "
        "then: {advance_to: Engaged}}"
    )
    text = CHAIN.format(name=f"{name}-{app.team.tag}", limit=limit, rules="\n".join([kickoff, *rules]))
    process = parse_process_yaml(text, f"{name}.yaml")
    await processes.publish(app.pool, process)
    return process.name


async def test_automation_chains_stop_at_the_limit_and_a_rule_never_retriggers_itself(app: App) -> None:
    chain = await publish_chain(
        app,
        "chain",
        3,
        [
            rule("engaged leads to scoped", "Engaged", "Scoped"),
            rule("scoped leads to proposed", "Scoped", "Proposed"),
            rule("proposed leads to committed", "Proposed", "Committed"),
            rule("committed leads to signed", "Committed", "Signed"),
        ],
    )
    opp = await new_deal(app, process_name=chain)
    await app.client.record_activity(opp, actor=SERVICE, request_id=f"{opp}-kickoff", kind="kickoff")

    async def chain_refusals() -> list[tuple[str, str]]:
        return [(r["rule"], r["message"]) for r in (await app.client.state(opp))["refusals"]]

    await assert_eq_eventually(
        [
            (
                "automation_chain_limit",
                "automation chain stopped after 3 steps at rule 'proposed leads to committed'",
            )
        ],
        chain_refusals,
    )
    assert await stage_of(app, opp) == "Proposed"
    await assert_eq_eventually(["Engaged", "Scoped", "Proposed"], lambda: automated_stages(app, opp))
    await assert_eq_eventually(["automation_chain_limit"], lambda: refusal_rules(app, opp))

    # Two rules that would bounce a deal between two stages forever run once each.
    loop = await publish_chain(
        app,
        "loop",
        10,
        [
            rule("engaged leads to scoped", "Engaged", "Scoped"),
            rule("scoped goes back to engaged", "Scoped", "Engaged"),
        ],
    )
    bounced = await new_deal(app, process_name=loop)
    await app.client.record_activity(bounced, actor=SERVICE, kind="kickoff")
    await assert_eq_eventually(["Engaged", "Scoped", "Engaged"], lambda: automated_stages(app, bounced))
    await asyncio.sleep(1)
    assert await automated_stages(app, bounced) == ["Engaged", "Scoped", "Engaged"]
    assert (await app.client.state(bounced))["refusals"] == []


async def automated_stages(app: App, opp: str) -> list[str]:
    return [to for _, to, actor in await moves(app, opp) if actor == "automation"]


async def refusal_rules(app: App, opp: str) -> list[str]:
    return [e["refusal_rule"] for e in await events(app, opp, "automation_refused")]
