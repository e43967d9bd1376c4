"""Hand-offs to cross-functional people, end to end: the technical validation a sales
engineer owes before any quote, its own overdue ladder, and the customer success kickoff
that keeps a won deal's workflow open until it is done."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from sales.messages import Actor
from sales.process import default_process
from starter import processes
from starter.client import CommandRejected, workflow_id
from starter.org_chart import Person, import_people
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


async def deal_before_validation(app: App, team_se: str | None = "se", **extra: Any) -> str:
    """A deal in Id. Decision Makers with its decision maker named, the SE on the team."""
    rep = app.team.actor("rep")
    opp = app.opp_id()
    await app.client.create(
        actor=rep,
        name="Initech platform",
        account="Initech",
        owner_id=rep.id,
        opportunity_id=opp,
        amount="120000",
        stage="Id. Decision Makers",
        fields={"decision_maker": "VP Engineering"},
        **extra,
    )
    if team_se:
        await app.client.add_team_member(
            opp, actor=rep, user_id=app.team.id(team_se), team_role="sales_engineer"
        )
    return opp


def handle(app: App, workflow: str) -> WorkflowHandle[Any, Any]:
    return app.temporal.get_workflow_handle(workflow)


async def handoff_view(app: App, workflow: str) -> dict[str, Any] | None:
    try:
        return await handle(app, workflow).query("get_handoff")
    except RPCError:  # the opportunity starts its hand-off right after the stage change
        return None


async def handoff_status(app: App, workflow: str) -> tuple[str | None, str] | None:
    view = await handoff_view(app, workflow)
    return (view["assignee_id"], view["status"]) if view else None


async def handoff_in_state(app: App, opp: str, kind: str) -> tuple[str | None, str]:
    [handoff] = [h for h in (await app.client.state(opp))["handoffs"] if h["kind"] == kind]
    return handoff["assignee_id"], handoff["status"]


async def handoff_row(app: App, handoff_id: str) -> tuple[str | None, str] | None:
    row = await app.pool.fetchrow("SELECT assignee_id, status FROM handoffs WHERE id = $1", handoff_id)
    return (row["assignee_id"], row["status"]) if row else None


async def decide(app: App, workflow: str, actor: Actor, note: str, update: str = "complete_handoff") -> Any:
    return await handle(app, workflow).execute_update(
        update, {"request_id": uuid.uuid4().hex, "actor": actor.model_dump(), "note": note}
    )


async def status_of(app: App, workflow: str) -> WorkflowExecutionStatus | None:
    return (await handle(app, workflow).describe()).status


async def test_technical_validation_blocks_the_way_to_a_quote_until_the_se_completes_it(app: App) -> None:
    team = app.team
    rep, se = team.actor("rep"), team.actor("se")
    opp = await deal_before_validation(app)
    handoff_id = f"{opp}-technical_validation-2"
    workflow = f"handoff-{handoff_id}"

    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")

    await assert_eq_eventually((se.id, "open"), lambda: handoff_status(app, workflow))
    assert await handoff_in_state(app, opp, "technical_validation") == (se.id, "open")
    await assert_eq_eventually((se.id, "open"), lambda: handoff_row(app, handoff_id))
    with pytest.raises(CommandRejected) as blocked:
        await app.client.change_stage(opp, actor=rep, stage="Proposal/Price Quote")
    assert (blocked.value.rule, blocked.value.missing) == ("handoff_required", ["technical_validation"])
    assert (
        blocked.value.message
        == "cannot leave Perception Analysis: hand-off not completed: technical_validation"
    )
    requirements = (await app.client.state(opp))["requirements"]
    assert requirements["missing_handoffs"] == ["technical_validation"]

    for outsider in (team.actor("rep2"), rep):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await decide(app, workflow, outsider, "looks fine to me")
        assert isinstance(refused.value.cause, ApplicationError)
        assert refused.value.cause.type == "handoff_assignee"
        assert refused.value.cause.message.startswith(
            f"{outsider.id} may not decide hand-off Technical validation"
        )
    done = await decide(app, workflow, se, "SSO, SCIM and EU hosting confirmed")
    assert (done["status"], done["note"]) == ("completed", "SSO, SCIM and EU hosting confirmed")

    await assert_eq_eventually(
        (se.id, "completed"), lambda: handoff_in_state(app, opp, "technical_validation")
    )
    await assert_eq_eventually(WorkflowExecutionStatus.COMPLETED, lambda: status_of(app, workflow))
    await assert_eq_eventually((se.id, "completed"), lambda: handoff_row(app, handoff_id))
    moved = await app.client.change_stage(opp, actor=rep, stage="Proposal/Price Quote")
    assert moved.message == "moved from Perception Analysis to Proposal/Price Quote"
    completed_by = await app.pool.fetchval(
        "SELECT actor_id FROM opportunity_events WHERE opportunity_id = $1 AND kind = 'handoff_completed'",
        opp,
    )
    assert completed_by == se.id


async def test_an_unassigned_handoff_goes_to_the_se_who_joins_the_team(app: App) -> None:
    rep, se = app.team.actor("rep"), app.team.actor("se")
    opp = await deal_before_validation(app, team_se=None)
    workflow = f"handoff-{opp}-technical_validation-2"
    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")
    await assert_eq_eventually((None, "unassigned"), lambda: handoff_status(app, workflow))
    assert await handoff_in_state(app, opp, "technical_validation") == (None, "unassigned")

    await app.client.add_team_member(opp, actor=rep, user_id=se.id, team_role="sales_engineer")

    await assert_eq_eventually((se.id, "open"), lambda: handoff_status(app, workflow))
    assert await handoff_in_state(app, opp, "technical_validation") == (se.id, "open")
    await assert_eq_eventually((se.id, "open"), lambda: handoff_row(app, workflow.removeprefix("handoff-")))
    # The owner's manager may complete it for the assignee.
    done = await decide(app, workflow, app.team.actor("mgr"), "validated in the joint call")
    assert done["status"] == "completed"
    await assert_eq_eventually(
        (se.id, "completed"), lambda: handoff_in_state(app, opp, "technical_validation")
    )


async def test_an_overdue_handoff_escalates_to_the_assignees_manager(app: App) -> None:
    team = app.team
    # An SE from another manager's team, so the assignee's manager differs from the owner's.
    se = Person(
        id=team.id("se-west"),
        name="Wes West",
        email=f"wes-{team.tag}@example.com",
        manager_id=team.id("othermgr"),
        roles=["sales_engineer"],
    )
    await import_people(app.pool, [se])
    spec = default_process().model_dump(mode="json")
    spec["name"] = f"fast-handoff-{team.tag}"
    spec["handoffs"]["technical_validation"]["due_in"] = "2s"
    spec["handoffs"]["technical_validation"]["escalation"] = [{"after": "0s", "notify": "assignee_manager"}]
    await processes.publish(app.pool, default_process().model_validate(spec))
    opp = await deal_before_validation(app, team_se="se-west", process_name=spec["name"])
    handoff_id = f"{opp}-technical_validation-2"

    await app.client.change_stage(opp, actor=team.actor("rep"), stage="Perception Analysis")

    async def escalations() -> list[tuple[int, str, str | None, str]]:
        rows = await app.pool.fetch(
            "SELECT level, notify, recipient_id, status FROM escalations "
            "WHERE opportunity_id = $1 AND subject = $2",
            opp,
            handoff_id,
        )
        return [(r["level"], r["notify"], r["recipient_id"], r["status"]) for r in rows]

    await assert_eq_eventually(
        [(1, "assignee_manager", team.id("othermgr"), "open")], escalations, timeout=30
    )
    view = await handoff_view(app, f"handoff-{handoff_id}")
    assert view is not None and view["status"] == "open"
    # The deal's own ladder is untouched: Perception Analysis is 10 business days away from stuck.
    assert (await app.client.state(opp))["escalation_level"] == 0


async def test_a_won_deal_stays_open_until_customer_success_has_kicked_off(app: App) -> None:
    team = app.team
    rep, csm = team.actor("rep"), team.actor("csm")
    opp = app.opp_id()
    await app.client.create(
        actor=rep,
        name="Initech renewal",
        account="Initech",
        owner_id=rep.id,
        opportunity_id=opp,
        amount="90000",
        stage="Negotiation/Review",
        fields={"decision_maker": "CFO"},
    )
    await app.client.add_team_member(opp, actor=rep, user_id=csm.id, team_role="customer_success")
    kickoff = f"handoff-{opp}-customer_success_kickoff-2"

    await app.client.change_stage(opp, actor=rep, stage="Closed Won")

    await assert_eq_eventually((csm.id, "open"), lambda: handoff_status(app, kickoff))
    assert await status_of(app, workflow_id(opp)) == WorkflowExecutionStatus.RUNNING
    state = await app.client.state(opp)
    assert (state["is_won"], state["finished"]) == (True, False)

    await decide(app, kickoff, csm, "kickoff held, success plan shared")

    await assert_eq_eventually(WorkflowExecutionStatus.COMPLETED, lambda: status_of(app, workflow_id(opp)))
    result = await handle(app, workflow_id(opp)).result()
    assert result == {"opportunity_id": opp, "stage": "Closed Won"}
    assert await handoff_row(app, kickoff.removeprefix("handoff-")) == (csm.id, "completed")


async def test_a_deal_cannot_be_closed_won_before_technical_validation(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await deal_before_validation(app)
    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")
    with pytest.raises(CommandRejected) as blocked:
        await app.client.change_stage(opp, actor=rep, stage="Closed Won")
    assert (blocked.value.rule, blocked.value.missing) == ("handoff_required", ["technical_validation"])


async def test_a_manager_outside_the_deal_cannot_decide_its_handoff(app: App) -> None:
    opp = await deal_before_validation(app)
    workflow = f"handoff-{opp}-technical_validation-2"
    await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Perception Analysis")
    await assert_eq_eventually((app.team.id("se"), "open"), lambda: handoff_status(app, workflow))
    stranger = Actor(id=f"stranger-{app.team.tag}", role="manager")
    for outsider in (app.team.actor("othermgr"), stranger):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await decide(app, workflow, outsider, "approved", update="decline_handoff")
        assert isinstance(refused.value.cause, ApplicationError)
        assert refused.value.cause.type == "handoff_assignee"


async def test_closing_a_deal_lost_cancels_its_open_technical_validation(app: App) -> None:
    opp = await deal_before_validation(app)
    workflow = f"handoff-{opp}-technical_validation-2"
    rep = app.team.actor("rep")
    await app.client.change_stage(opp, actor=rep, stage="Perception Analysis")
    await assert_eq_eventually((app.team.id("se"), "open"), lambda: handoff_status(app, workflow))

    await app.client.change_stage(opp, actor=rep, stage="Closed Lost", fields={"loss_reason": "No budget"})

    await assert_eq_eventually(
        (app.team.id("se"), "cancelled"), lambda: handoff_in_state(app, opp, "technical_validation")
    )
    await assert_eq_eventually(WorkflowExecutionStatus.COMPLETED, lambda: status_of(app, workflow))
