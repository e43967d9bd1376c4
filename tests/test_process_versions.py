"""Sales processes as sales ops run them: publishing versions (facade and CLI), deals
pinned to the version they started on until an admin migrates them, the default
process's rules for required fields, skips and backward moves, and the requirements a
deal shows for its next stages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

from sales import process
from sales.process import PROCESS_FOLDER, SalesProcess, default_process
from sales.state import OpportunityInput
from starter import processes
from starter.client import CommandRejected, workflow_id
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app

OPPFLOW = Path(sys.executable).parent / "oppflow"  # installed next to the interpreter running the tests


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


def variant(name: str, **stage_changes: dict[str, Any]) -> tuple[SalesProcess, dict[str, Any]]:
    """The default process under another name, with some stages changed."""
    spec = default_process().model_dump(mode="json")
    spec["name"] = name
    spec["stages"] = [{**s, **stage_changes.get(s["name"], {})} for s in spec["stages"]]
    return SalesProcess.model_validate(spec), spec


async def qualified_deal(app: App, process_name: str) -> str:
    opp = app.opp_id()
    rep = app.team.actor("rep")
    await app.client.create(
        actor=rep,
        name="Umbrella pilot",
        account="Umbrella",
        owner_id=rep.id,
        opportunity_id=opp,
        amount="30000",
        stage="Qualification",
        fields={"budget": 30000, "timeline": "this quarter"},
        process_name=process_name,
    )
    return opp


async def test_a_new_version_binds_new_deals_and_in_flight_deals_only_once_migrated(app: App) -> None:
    team = app.team
    rep, admin = team.actor("rep"), team.actor("ops")
    name = f"nb-{team.tag}"
    first, _ = variant(name)
    assert (await processes.publish(app.pool, first)).version == 1
    untouched, migrated = await asyncio.gather(qualified_deal(app, name), qualified_deal(app, name))

    # Sales ops now wants a named champion before a deal leaves Qualification.
    _, spec = variant(name, Qualification={"requires": ["budget", "timeline", "champion"]})
    spec["fields"]["champion"] = {"type": "text", "label": "Champion"}
    published = await processes.publish(app.pool, SalesProcess.model_validate(spec))
    assert (published.version, published.created) == (2, True)
    fresh = await qualified_deal(app, name)

    assert (await app.client.state(fresh))["process"] == {"name": name, "version": 2}
    with pytest.raises(CommandRejected) as refused:
        await app.client.change_stage(fresh, actor=rep, stage="Needs Analysis")
    assert (refused.value.rule, refused.value.missing) == ("exit_criteria", ["champion"])
    assert (await app.client.state(untouched))["process"] == {"name": name, "version": 1}
    moved = await app.client.change_stage(untouched, actor=rep, stage="Needs Analysis")
    assert moved.message == "moved from Qualification to Needs Analysis"

    before = datetime.now(UTC)
    result = await app.client.migrate_process(
        migrated, actor=admin, name=name, version=2, reason="champion now required"
    )
    assert result.message == f"migrated from {name} v1 to {name} v2"
    state = await app.client.state(migrated)
    assert state["process"] == {"name": name, "version": 2}
    assert state["requirements"]["missing_to_leave"] == ["champion"]
    with pytest.raises(CommandRejected) as now_refused:
        await app.client.change_stage(
            migrated, actor=rep, stage="Needs Analysis", request_id=f"{migrated}-try"
        )
    assert (now_refused.value.rule, now_refused.value.missing) == ("exit_criteria", ["champion"])

    async def migration_events() -> list[tuple[str, dict[str, Any]]]:
        rows = await app.pool.fetch(
            "SELECT actor_id, detail FROM opportunity_events WHERE opportunity_id = $1 "
            "AND kind = 'migrate_process'",
            migrated,
        )
        return [(r["actor_id"], r["detail"]) for r in rows]

    await assert_eq_eventually(
        [(admin.id, {"from": f"{name} v1", "to": f"{name} v2", "reason": "champion now required"})],
        migration_events,
    )
    await assert_eq_eventually(
        2, lambda: app.pool.fetchval("SELECT process_version FROM opportunities WHERE id = $1", migrated)
    )

    async def audit() -> list[tuple[str, str, str | None, str, list[str], bool]]:
        rows = await app.pool.fetch(
            "SELECT command, actor_id, actor_role, rule, missing, rejected_at "
            "FROM rejected_commands WHERE request_id = $1",
            f"{migrated}-try",
        )
        return [
            (
                r["command"],
                r["actor_id"],
                r["actor_role"],
                r["rule"],
                list(r["missing"]),
                before <= r["rejected_at"] <= datetime.now(UTC),
            )
            for r in rows
        ]

    await assert_eq_eventually([("change_stage", rep.id, "rep", "exit_criteria", ["champion"], True)], audit)


async def test_a_deal_starts_with_its_pinned_version_packed_small(app: App) -> None:
    name = f"nb-packed-{app.team.tag}"
    _, spec = variant(name, Qualification={"requires": ["budget", "timeline", "champion"]})
    spec["fields"]["champion"] = {"type": "text", "label": "Champion"}
    pinned = await processes.publish(app.pool, SalesProcess.model_validate(spec))
    opp = await qualified_deal(app, name)

    history = await app.temporal.get_workflow_handle(workflow_id(opp)).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (payload,) = started.input.payloads
    start_input = OpportunityInput.model_validate_json(payload.data)
    assert start_input.process is None
    carried = process.unpack(start_input.packed_process or "")
    assert (carried.name, carried.version, carried.stage("Qualification").requires) == (
        name,
        pinned.version,
        ["budget", "timeline", "champion"],
    )
    full = len(carried.model_dump_json())
    assert len(payload.data) < full / 2, (len(payload.data), full)
    # The deal follows the packed definition: the new exit criterion is enforced.
    with pytest.raises(CommandRejected) as refused:
        await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Needs Analysis")
    assert refused.value.missing == ["champion"]


async def test_a_migration_into_a_version_without_the_deals_stage_is_refused(app: App) -> None:
    name = f"renamed-{app.team.tag}"
    await processes.publish(app.pool, variant(name)[0])
    opp = await qualified_deal(app, name)
    _, spec = variant(name)
    spec["stages"][1]["name"] = "Discovery"
    spec["automations"][0]["then"]["advance_to"] = "Discovery"
    assert (await processes.publish(app.pool, SalesProcess.model_validate(spec))).version == 2

    with pytest.raises(CommandRejected) as refused:
        await app.client.migrate_process(
            opp, actor=app.team.actor("ops"), name=name, version=2, reason="rename Qualification"
        )
    assert refused.value.rule == "stage_not_in_process"
    assert refused.value.message == f"stage Qualification does not exist in {name} v2"
    assert (await app.client.state(opp))["process"] == {"name": name, "version": 1}


async def test_the_default_process_rules_for_required_fields_skips_and_moving_back(app: App) -> None:
    team = app.team
    rep, mgr = team.actor("rep"), team.actor("mgr")
    opp = app.opp_id()
    await app.client.create(
        actor=rep, name="Stark upgrade", account="Stark", owner_id=rep.id, opportunity_id=opp
    )

    with pytest.raises(CommandRejected) as skip:
        await app.client.change_stage(opp, actor=rep, stage="Needs Analysis")
    assert (skip.value.rule, skip.value.missing) == ("skip_requirements", ["budget", "timeline"])
    assert skip.value.message == "cannot skip Qualification: missing budget, timeline"
    # Skipping is fine once the skipped stage's requirements are met, in the same step.
    await app.client.change_stage(
        opp, actor=rep, stage="Value Proposition", fields={"budget": 20000, "timeline": "Q3"}
    )

    with pytest.raises(CommandRejected) as back:
        await app.client.change_stage(opp, actor=rep, stage="Qualification", reason="budget in doubt")
    assert back.value.rule == "backward_limit"
    assert "a manager or admin may override with a reason" in back.value.message
    with pytest.raises(CommandRejected) as no_reason:
        await app.client.change_stage(opp, actor=mgr, stage="Qualification")
    assert no_reason.value.rule == "backward_limit"
    one_back = await app.client.change_stage(opp, actor=rep, stage="Needs Analysis")
    assert one_back.message == "moved from Value Proposition to Needs Analysis"
    await app.client.change_stage(opp, actor=rep, stage="Value Proposition")
    overridden = await app.client.change_stage(
        opp, actor=mgr, stage="Prospecting", reason="re-qualify: new CFO"
    )
    assert overridden.message == "moved from Value Proposition to Prospecting"

    with pytest.raises(CommandRejected) as lost:
        await app.client.change_stage(opp, actor=rep, stage="Closed Lost")
    assert (lost.value.rule, lost.value.missing) == ("entry_criteria", ["loss_reason"])
    await app.client.change_stage(opp, actor=rep, stage="Closed Lost", fields={"loss_reason": "No decision"})
    history = await app.client.history(opp)
    assert [(h["to_stage"], h["actor_id"], h["reason"]) for h in history][-2:] == [
        ("Prospecting", mgr.id, "re-qualify: new CFO"),
        ("Closed Lost", rep.id, None),
    ]


async def test_moving_back_does_not_need_the_fields_required_to_move_forward(app: App) -> None:
    rep = app.team.actor("rep")
    opp = app.opp_id()
    await app.client.create(
        actor=rep,
        name="Hooli trial",
        account="Hooli",
        owner_id=rep.id,
        opportunity_id=opp,
        stage="Qualification",
    )
    moved = await app.client.change_stage(opp, actor=rep, stage="Prospecting", reason="no budget owner yet")
    assert moved.message == "moved from Qualification to Prospecting"


async def test_a_deal_shows_what_its_next_stages_require_and_what_is_missing(app: App) -> None:
    rep = app.team.actor("rep")
    opp = app.opp_id()
    await app.client.create(
        actor=rep,
        name="Wayne security",
        account="Wayne",
        owner_id=rep.id,
        opportunity_id=opp,
        stage="Id. Decision Makers",
    )

    requirements = (await app.client.state(opp))["requirements"]
    assert requirements["stage"] == "Id. Decision Makers"
    assert requirements["guidance"] == "Name who signs and who influences."
    assert (requirements["requires_to_leave"], requirements["missing_to_leave"]) == (
        ["decision_maker"],
        ["decision_maker"],
    )
    upcoming = {s["stage"]: s for s in requirements["next_stages"]}
    assert list(upcoming) == [
        "Perception Analysis",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    ]
    assert upcoming["Proposal/Price Quote"]["missing_to_enter"] == ["amount", "decision_maker"]
    assert upcoming["Closed Lost"]["missing_to_enter"] == ["loss_reason"]

    await app.client.update_fields(opp, actor=rep, fields={"decision_maker": "CISO Bruce"}, amount="64000")

    requirements = (await app.client.state(opp))["requirements"]
    assert requirements["missing_to_leave"] == []
    upcoming = {s["stage"]: s for s in requirements["next_stages"]}
    assert upcoming["Proposal/Price Quote"]["missing_to_enter"] == []
    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")
    requirements = (await app.client.state(opp))["requirements"]
    assert (requirements["handoffs_to_leave"], requirements["missing_handoffs"]) == (
        ["technical_validation"],
        ["technical_validation"],
    )


# -- the command line --------------------------------------------------------------------------------


def oppflow(
    postgres_url: str, temporal_env: WorkflowEnvironment, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": "default",
    }
    return subprocess.run([str(OPPFLOW), *args], capture_output=True, text=True, timeout=60, env=env)


async def test_publishing_from_the_command_line(
    app: App, postgres_url: str, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    renewal = str(PROCESS_FOLDER / "renewal.yaml")
    first = await asyncio.to_thread(oppflow, postgres_url, temporal_env, "process", "publish", renewal)
    assert first.returncode == 0, first.stderr
    version = await app.pool.fetchval("SELECT max(version) FROM sales_processes WHERE name = 'renewal'")
    assert first.stdout.strip() in (
        f"published renewal v{version} (6 stages)",
        f"unchanged, already published as renewal v{version} (6 stages)",
    )
    again = await asyncio.to_thread(oppflow, postgres_url, temporal_env, "process", "publish", renewal)
    assert again.stdout.strip() == f"unchanged, already published as renewal v{version} (6 stages)"

    broken = tmp_path / "renewal-draft.yaml"
    text = (PROCESS_FOLDER / "renewal.yaml").read_text().replace("stuck_after: 5bd", "stuck_after: 5 days", 1)
    text = text.replace("probability: 85", "probability: 185")
    broken.write_text(text)
    refused = await asyncio.to_thread(oppflow, postgres_url, temporal_env, "process", "publish", str(broken))
    assert refused.returncode == 1
    line_of = {f: n for n, t in enumerate(text.splitlines(), 1) for f in ("5 days", "185") if f in t}
    assert (
        f"renewal-draft.yaml: line {line_of['185']}: stages.2.probability: "
        "Input should be less than or equal to 100"
    ) in refused.stderr
    assert (
        f"renewal-draft.yaml: line {line_of['5 days']}: stages.2.stuck_after: "
        "Value error, invalid duration '5 days'"
    ) in refused.stderr
    assert (
        await app.pool.fetchval("SELECT max(version) FROM sales_processes WHERE name = 'renewal'") == version
    )

    # The published renewal process runs deals, automations included.
    rep = app.team.actor("rep")
    opp = app.opp_id()
    await app.client.create(
        actor=rep,
        name="Acme renewal 2027",
        account="Acme",
        owner_id=rep.id,
        opportunity_id=opp,
        process_name="renewal",
        fields={"renewal_date": "2027-03-31", "current_arr": 48000},
    )
    # Only people on the deal (and automation accounts) trigger its automations.
    await app.client.add_team_member(opp, actor=rep, user_id=app.team.id("csm"), team_role="customer_success")
    await app.client.record_activity(
        opp, actor=app.team.actor("csm"), kind="health_alert", data={"health": "Red", "source": "usage drop"}
    )

    async def health() -> str | None:
        return (await app.client.state(opp))["fields"].get("health")

    await assert_eq_eventually("Red", health)
    state = await app.client.state(opp)
    assert (state["process"], state["stage"], state["forecast_category"]) == (
        {"name": "renewal", "version": version},
        "Renewal Due",
        "Best Case",
    )


def test_the_process_format_guide_explains_every_key() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "process-format.md").read_text(encoding="utf-8")
    models: list[type[BaseModel]] = [
        process.SalesProcess,
        process.StageRules,
        process.FieldSpec,
        process.StageDefinition,
        process.EscalationStep,
        process.HandoffDefinition,
        process.AutomationRule,
        process.ActivityCondition,
        process.AutomationAction,
    ]
    prefixes = {process.ActivityCondition: "when.", process.AutomationAction: "then."}
    undocumented = [
        f"{model.__name__}.{key}"
        for model in models
        for key in model.model_fields
        if f"`{prefixes.get(model, '')}{key}`" not in guide
    ]
    assert undocumented == []
