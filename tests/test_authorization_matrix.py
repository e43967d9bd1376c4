"""Who may send which command to a deal: every role against every command, through the
typed facade and through a raw Temporal client sending contract JSON.

Allowed cells must take effect; refused cells must name the actor and the rule, change
nothing (no accepted update in the workflow history) and land in ``rejected_commands``.
Roles follow the default process (sales/processes/new-business.yaml).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from sales.messages import Actor
from sales.process import default_process
from starter import processes
from starter.client import CommandRejected, workflow_id
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app

ROLES = ("owner", "other_rep", "manager", "other_manager", "team_member", "admin", "automation", "unknown")
CHANNELS = ("facade", "raw")


@dataclass(frozen=True)
class Command:
    name: str
    allowed: frozenset[str]
    rule: str  # the permission rule a refusal names
    setup: str = "plain"  # which deal the command needs: see prepare_deal


COMMANDS = (
    Command("change_stage", frozenset({"owner", "manager", "admin", "automation"}), "move_roles"),
    Command("update_fields", frozenset({"owner", "manager", "admin", "automation"}), "field_permissions"),
    Command("reopen", frozenset({"manager", "admin"}), "reopen_roles", "closed"),
    Command("reassign", frozenset({"manager", "admin"}), "reassign_roles"),
    Command("add_team_member", frozenset({"owner", "manager", "admin"}), "team_roles"),
    Command("remove_team_member", frozenset({"owner", "manager", "admin"}), "team_roles"),
    Command("acknowledge_escalation", frozenset({"manager", "admin"}), "escalation_roles", "escalated"),
    Command("snooze_escalation", frozenset({"manager", "admin"}), "escalation_roles", "escalated"),
    Command("pause_clock", frozenset({"owner", "manager", "admin"}), "clock_roles"),
    Command("resume_clock", frozenset({"owner", "manager", "admin"}), "clock_roles", "paused"),
    Command("migrate_process", frozenset({"admin"}), "admin_only", "migratable"),
    # Activities are facts reported by people and backend services alike; never refused.
    Command("record_activity", frozenset(ROLES), "", "plain"),
)
CELLS = len(ROLES) * len(COMMANDS) * len(CHANNELS)  # 8 x 12 x 2 = 192


@dataclass
class Matrix:
    app: App

    def process_name(self, channel: str) -> str:
        """A copy of the default process per channel, whose v2 is published mid-test."""
        return f"authz-{channel}-{self.app.team.tag}"

    def actor(self, role: str) -> Actor:
        team = self.app.team
        return {
            "owner": team.actor("rep"),
            "other_rep": team.actor("rep2"),
            "manager": team.actor("mgr"),
            "other_manager": team.actor("othermgr"),
            "team_member": team.actor("se"),
            "admin": team.actor("ops"),
            "automation": Actor(id="automation", role="automation"),
            # Not in the org chart, and claiming a role it cannot hold on this deal.
            "unknown": Actor(id=f"stranger-{team.tag}", role="manager"),
        }[role]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def matrix(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[Matrix]:
    async with running_app(temporal_env.client, db_pool) as app:
        matrix = Matrix(app)
        for channel in CHANNELS:
            await publish_copy(matrix, channel, "first version")
        yield matrix


async def publish_copy(m: Matrix, channel: str, description: str) -> int:
    base = default_process().model_dump(mode="json")
    copy = {**base, "name": m.process_name(channel), "description": description}
    return (await processes.publish(m.app.pool, default_process().model_validate(copy))).version


async def prepare_deal(m: Matrix, setup: str, channel: str) -> str:
    """A deal of the owner's, with the SE on its team, in the state the command needs."""
    app, owner = m.app, m.actor("owner")
    extra: dict[str, Any] = {}
    if setup == "escalated":  # 20 days in a 14-day stage: levels 1 and 2 have fired, 3 is pending
        extra["stage_entered_at"] = datetime.now(UTC) - timedelta(days=20)
    if setup == "migratable":
        extra["process_name"] = m.process_name(channel)
    opp = app.opp_id()
    await app.client.create(
        actor=owner,
        name="Matrix deal",
        account="Acme",
        owner_id=owner.id,
        opportunity_id=opp,
        amount="40000",
        **extra,
    )
    await app.client.add_team_member(opp, actor=owner, user_id=app.team.id("se"), team_role="sales_engineer")
    if setup == "closed":
        await app.client.change_stage(opp, actor=owner, stage="Closed Lost", fields={"loss_reason": "Timing"})
    if setup == "paused":
        await app.client.pause_clock(opp, actor=owner, reason="customer on holiday")
    if setup == "escalated":
        await assert_eq_eventually(2, lambda: level_of(app, opp))
    if setup == "migratable":
        assert (await app.client.state(opp))["process"] == {"name": m.process_name(channel), "version": 1}
    return opp


async def level_of(app: App, opp: str) -> int:
    return (await app.client.state(opp))["escalation_level"]


def facade_arguments(m: Matrix, command: str, channel: str) -> dict[str, Any]:
    team = m.app.team
    arguments: dict[str, dict[str, Any]] = {
        "change_stage": {"stage": "Qualification"},
        "update_fields": {"fields": {"pain_points": "quotes take a week"}},
        "reopen": {"stage": "Qualification", "reason": "budget is back"},
        "reassign": {"owner_id": team.id("rep2"), "reason": "territory change"},
        "add_team_member": {"user_id": team.id("legal"), "team_role": "legal"},
        "remove_team_member": {"user_id": team.id("se")},
        "acknowledge_escalation": {"note": "calling the customer today"},
        "snooze_escalation": {"until": datetime.now(UTC) + timedelta(days=2)},
        "pause_clock": {"reason": "waiting on the customer's security review"},
        "resume_clock": {},
        "migrate_process": {"name": m.process_name(channel), "version": 2, "reason": "new process version"},
        "record_activity": {"kind": "call", "subject": "check-in call", "outcome": "completed"},
    }
    return arguments[command]


async def raw_payload(m: Matrix, command: str) -> dict[str, Any]:
    """The same command as plain contract JSON, as any Temporal client would send it."""
    arguments = facade_arguments(m, command, "raw")
    if command == "snooze_escalation":
        return {"until": arguments["until"].isoformat()}
    if command == "migrate_process":
        process = await processes.get_version(m.app.pool, m.process_name("raw"), 2)
        assert process is not None
        return {"process": process.model_dump(mode="json"), "reason": arguments["reason"]}
    return arguments


def applied(m: Matrix, command: str, channel: str, state: dict[str, Any], request_id: str) -> bool:
    """Whether the deal shows the command's effect."""
    team, clock = m.app.team, state["clock"]
    return {
        "change_stage": lambda: state["stage"] == "Qualification",
        "update_fields": lambda: state["fields"].get("pain_points") == "quotes take a week",
        "reopen": lambda: state["stage"] == "Qualification" and not state["is_closed"],
        "reassign": lambda: state["owner_id"] == team.id("rep2"),
        "add_team_member": lambda: any(t["user_id"] == team.id("legal") for t in state["team"]),
        "remove_team_member": lambda: not any(t["user_id"] == team.id("se") for t in state["team"]),
        "acknowledge_escalation": lambda: clock["acknowledged_by"] is not None,
        "snooze_escalation": lambda: clock["snoozed_until"] is not None,
        "pause_clock": lambda: clock["paused_since"] is not None,
        "resume_clock": lambda: clock["paused_since"] is None,
        "migrate_process": lambda: state["process"] == {"name": m.process_name(channel), "version": 2},
        "record_activity": lambda: any(a["request_id"] == request_id for a in state["recent_activities"]),
    }[command]()


@dataclass
class Answer:
    ok: bool
    rule: str = ""
    message: str = ""


async def send(m: Matrix, channel: str, command: str, opp: str, actor: Actor, request_id: str) -> Answer:
    app = m.app
    if channel == "facade":
        call: Callable[..., Awaitable[Any]] = getattr(app.client, command)
        try:
            await call(opp, actor=actor, request_id=request_id, **facade_arguments(m, command, channel))
        except CommandRejected as refused:
            return Answer(False, refused.rule, refused.message)
        return Answer(True)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    payload = {"request_id": request_id, "actor": actor.model_dump(), **await raw_payload(m, command)}
    if command == "record_activity":
        await handle.signal(command, payload)
        return Answer(True)
    try:
        result = await handle.execute_update(command, payload)
    except WorkflowUpdateFailedError as failed:
        assert isinstance(failed.cause, ApplicationError), failed.cause
        return Answer(False, failed.cause.type or "", failed.cause.message)
    assert result["request_id"] == request_id and result["accepted"] is True
    return Answer(True)


async def accepted_updates(app: App, opp: str) -> int:
    history = await app.temporal.get_workflow_handle(workflow_id(opp)).fetch_history()
    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    return sum(1 for e in history.events if e.event_type == accepted)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
async def test_each_role_may_send_only_what_the_process_allows(
    matrix: Matrix, command: Command, channel: str
) -> None:
    app, tag = matrix.app, f"{command.name}-{channel}-{matrix.app.team.tag}"
    allowed = [r for r in ROLES if r in command.allowed]
    refused = [r for r in ROLES if r not in command.allowed]
    # One deal per allowed role (each one changes its deal), one shared by all refusals.
    deals = await asyncio.gather(
        *(prepare_deal(matrix, command.setup, channel) for _ in range(len(allowed) + bool(refused)))
    )
    if command.name == "migrate_process":  # published after the deals started on version 1
        assert await publish_copy(matrix, channel, "second version") == 2
    own_deal = dict(zip(allowed, deals, strict=False))
    refusal_deal = deals[-1]
    before = await accepted_updates(app, refusal_deal) if refused else 0

    answers = await asyncio.gather(
        *(send(matrix, channel, command.name, own_deal[r], matrix.actor(r), f"{tag}-{r}") for r in allowed),
        *(send(matrix, channel, command.name, refusal_deal, matrix.actor(r), f"{tag}-{r}") for r in refused),
    )
    by_role = dict(zip([*allowed, *refused], answers, strict=True))

    for role in allowed:
        assert by_role[role].ok, f"{role} should be allowed {command.name}: {by_role[role]}"

    async def shows_effect(role: str) -> bool:
        state = await app.client.state(own_deal[role])
        return applied(matrix, command.name, channel, state, f"{tag}-{role}")

    await asyncio.gather(*(assert_eq_eventually(True, partial(shows_effect, role)) for role in allowed))
    for role in refused:
        answer, actor = by_role[role], matrix.actor(role)
        assert not answer.ok, f"{role} should be refused {command.name}"
        assert answer.rule == command.rule, (role, answer)
        assert actor.id in answer.message and "may not" in answer.message, answer.message
        if command.rule == "field_permissions":
            assert "may not edit pain_points" in answer.message, answer.message
        else:
            assert "allowed for" in answer.message, answer.message
    if not refused:
        return
    assert await accepted_updates(app, refusal_deal) == before
    state = await app.client.state(refusal_deal)
    assert not applied(matrix, command.name, channel, state, ""), state

    async def audit() -> dict[str, tuple[str, str | None, str | None, str]]:
        rows = await app.pool.fetch(
            "SELECT request_id, command, actor_id, actor_role, rule, message, rejected_at "
            "FROM rejected_commands WHERE opportunity_id = $1",
            refusal_deal,
        )
        assert all(r["message"] and r["rejected_at"] for r in rows)
        return {r["request_id"]: (r["command"], r["actor_id"], r["actor_role"], r["rule"]) for r in rows}

    expected = {
        f"{tag}-{r}": (command.name, matrix.actor(r).id, matrix.actor(r).role, command.rule) for r in refused
    }
    await assert_eq_eventually(expected, audit)


async def test_field_and_stage_permissions_follow_the_team_roles_of_the_process(matrix: Matrix) -> None:
    """Cross-functional team members hold exactly the rights the process gives their team role."""
    app, team = matrix.app, matrix.app.team
    owner, se, legal = matrix.actor("owner"), matrix.actor("team_member"), team.actor("legal")
    opp = await prepare_deal(matrix, "plain", "facade")

    done = await app.client.update_fields(opp, actor=se, fields={"technical_fit": "SSO and SCIM confirmed"})
    assert done.message == "updated technical_fit"
    with pytest.raises(CommandRejected) as refused:
        await app.client.update_fields(opp, actor=matrix.actor("other_rep"), fields={"technical_fit": "no"})
    assert refused.value.rule == "field_permissions"
    assert refused.value.message.startswith(f"{team.id('rep2')} (role rep, not the owner")
    assert refused.value.message.endswith("may not edit technical_fit")

    await app.client.change_stage(
        opp,
        actor=matrix.actor("manager"),
        stage="Negotiation/Review",
        reason="late-stage deal imported",
        fields={"decision_maker": "CFO"},
    )
    with pytest.raises(CommandRejected) as not_on_team:
        await app.client.change_stage(opp, actor=legal, stage="Closed Won")
    assert not_on_team.value.rule == "move_roles"
    await app.client.add_team_member(opp, actor=owner, user_id=legal.id, team_role="legal")
    closed = await app.client.change_stage(opp, actor=legal, stage="Closed Won")
    assert closed.message == "moved from Negotiation/Review to Closed Won"
