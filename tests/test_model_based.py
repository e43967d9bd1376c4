"""Stateful property test: random sales commands and time jumps against the real app and
a plain-Python model of the default process (``tests/sales_model.py``); after every step
the model, the workflow state and the Postgres rows agree, refusals and escalation levels
included.

Time jumps use the dev server's per-workflow time skipping, on the default process
published with its business days read as calendar days (weekend arithmetic is covered by
``tests/unit/test_durations.py``; the model stays simple enough to be obviously right).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from temporalio.testing import WorkflowEnvironment

import sales
from sales.process import parse_process_yaml
from starter import processes
from starter.client import CommandRejected, workflow_id
from tests.helpers import start_time_skipping_server
from tests.portal_app import PortalApp, portal_app
from tests.sales_model import FIELD_VALUES, TARGETS, Deal, Refused

PEOPLE = ["rep", "rep", "mgr", "rep2"]  # mostly the owner, as in real life
QUALIFIED = {"budget": 80000, "timeline": "Q3", "decision_maker": "CFO Dana", "loss_reason": "Timing"}


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as running:
        yield running


CALENDAR_PROCESS = "new-business-calendar"
LEVELS_REACHED: set[int] = set()  # escalation levels the runs saw, so the ladder was exercised


@pytest.fixture(scope="module")
def skipping_env(portal: BlockingPortal) -> Iterator[WorkflowEnvironment]:
    env = portal.call(start_time_skipping_server)
    try:
        yield env
    finally:
        portal.call(env.shutdown)


@pytest.fixture(scope="module")
def app(portal: BlockingPortal, skipping_env: WorkflowEnvironment, postgres_url: str) -> Iterator[PortalApp]:
    address = skipping_env.client.service_client.config.target_host
    with portal.wrap_async_context_manager(portal_app(address, postgres_url)) as running:
        portal.call(publish_calendar_process, running)
        yield running


async def publish_calendar_process(app: PortalApp) -> None:
    text = (Path(sales.__file__).parent / "processes" / "new-business.yaml").read_text()
    text = re.sub(r"\b(\d+)bd\b", r"\1d", text).replace("name: new-business", f"name: {CALENDAR_PROCESS}", 1)
    await processes.publish(app.pool, parse_process_yaml(text))


def field_edits(min_size: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """One to two of the process's fields, each with a value of its own kind (some invalid)."""
    pair = st.sampled_from(sorted(FIELD_VALUES)).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from(FIELD_VALUES[name]))
    )
    return st.lists(pair, min_size=min_size, max_size=2).map(dict)


def deal_machine(
    portal: BlockingPortal, app: PortalApp, env: WorkflowEnvironment
) -> type[RuleBasedStateMachine]:
    team = app.team

    class SalesDesk(RuleBasedStateMachine):
        deals = Bundle("deals")

        def __init__(self) -> None:
            super().__init__()
            self.model: dict[str, Deal] = {}

        def send(self, opp: str, call: Any, apply: Any) -> None:
            """Run the command on the app and on the model; both refuse alike or both accept."""
            try:
                apply()
                expected = None
            except Refused as refusal:
                expected = refusal.rule
            try:
                portal.call(call)
                got = None
            except CommandRejected as rejected:
                got = rejected.rule
            assert got == expected, (
                f"{opp}: app {'refused ' + got if got else 'accepted'}, model "
                f"{'refused ' + expected if expected else 'accepted'}"
            )
            portal.call(agree, app, opp, self.model[opp])

        @initialize(target=deals)
        def create(self) -> str:
            opp = f"model-{uuid.uuid4().hex[:10]}"
            portal.call(
                lambda: app.client.create(
                    actor=team.actor("rep"),
                    name="Model deal",
                    account="Model Inc",
                    owner_id=team.id("rep"),
                    opportunity_id=opp,
                    amount="5000",
                    process_name=CALENDAR_PROCESS,
                )
            )
            self.model[opp] = Deal(owner="rep")
            return opp

        @rule(target=deals)
        def another_deal(self) -> str:
            return cast(str, self.create())

        @rule(
            opp=deals,
            who=st.sampled_from(PEOPLE),
            stage=st.sampled_from(TARGETS),
            fields=st.one_of(st.just({}), field_edits()),
            reason=st.sampled_from([None, "customer asked"]),
        )
        def move(self, opp: str, who: str, stage: str, fields: dict[str, Any], reason: str | None) -> None:
            deal = self.model[opp]
            self.send(
                opp,
                lambda: app.client.change_stage(
                    opp, actor=team.actor(who), stage=stage, fields=fields, reason=reason
                ),
                lambda: deal.move(who, stage, fields, reason),
            )

        @rule(opp=deals, who=st.sampled_from(PEOPLE), fields=field_edits(min_size=1))
        def update_fields(self, opp: str, who: str, fields: dict[str, Any]) -> None:
            deal = self.model[opp]
            self.send(
                opp,
                lambda: app.client.update_fields(opp, actor=team.actor(who), fields=fields),
                lambda: deal.update(who, fields),
            )

        @rule(opp=deals)
        def qualify(self, opp: str) -> None:
            """The owner fills in every field a stage asks for, so deals get far down the path."""
            deal = self.model[opp]
            who = deal.owner
            self.send(
                opp,
                lambda: app.client.update_fields(opp, actor=team.actor(who), fields=QUALIFIED),
                lambda: deal.update(who, QUALIFIED),
            )

        @rule(opp=deals, who=st.sampled_from(PEOPLE), new_owner=st.sampled_from(["rep", "rep2"]))
        def reassign(self, opp: str, who: str, new_owner: str) -> None:
            deal = self.model[opp]
            self.send(
                opp,
                lambda: app.client.reassign(opp, actor=team.actor(who), owner_id=team.id(new_owner)),
                lambda: deal.reassign(who, new_owner),
            )

        @rule(opp=deals, who=st.sampled_from(PEOPLE))
        def pause_clock(self, opp: str, who: str) -> None:
            deal = self.model[opp]
            self.send(
                opp,
                lambda: app.client.pause_clock(opp, actor=team.actor(who), reason="legal review"),
                lambda: deal.pause(who),
            )

        @rule(opp=deals, who=st.sampled_from(PEOPLE))
        def resume_clock(self, opp: str, who: str) -> None:
            deal = self.model[opp]
            self.send(
                opp, lambda: app.client.resume_clock(opp, actor=team.actor(who)), lambda: deal.resume(who)
            )

        @rule(opp=deals, days=st.sampled_from([0.5, 2, 3.5, 7, 14]))
        def time_passes(self, opp: str, days: float) -> None:
            handle = app.temporal.get_workflow_handle(workflow_id(opp))
            portal.call(env.fast_forward, handle, timedelta(days=days))  # type: ignore[attr-defined]
            self.model[opp].time_passes(days)
            portal.call(agree, app, opp, self.model[opp])
            LEVELS_REACHED.add(self.model[opp].escalation_level)

        def teardown(self) -> None:
            """Commands touch one deal each (checked after each step); at the end, all of them."""
            for opp, deal in self.model.items():
                portal.call(agree, app, opp, deal)

    return SalesDesk


async def agree(app: PortalApp, opp: str, deal: Deal) -> None:
    state = await app.client.state(opp)
    for _ in range(100):  # a level due after a time jump fires on the deal's own timer
        if state["escalation_level"] >= deal.escalation_level:
            break
        await asyncio.sleep(0.1)
        state = await app.client.state(opp)
    expected = {
        "stage": deal.stage,
        "stage_entry_seq": deal.seq,
        "owner_id": app.team.id(deal.owner),
        "fields": deal.fields,
        "is_closed": deal.closed,
        "paused": deal.paused,
        "escalation_level": deal.escalation_level,
    }
    live = {k: state[k] for k in expected if k != "paused"} | {
        "paused": state["clock"]["paused_since"] is not None
    }
    assert live == expected, f"{opp}: state {live} != model {expected}"
    for _ in range(100):
        row = await app.pool.fetchrow(
            "SELECT stage, stage_entry_seq, owner_id, fields, is_closed, clock_paused AS paused, "
            "escalation_level, updated_at, "
            "(SELECT count(*) FROM stage_history WHERE opportunity_id = $1) AS moves "
            "FROM opportunities WHERE id = $1",
            opp,
        )
        if row is not None and row["updated_at"] >= datetime.fromisoformat(state["updated_at"]):
            break
        await asyncio.sleep(0.05)
    stored = {k: row[k] for k in expected}
    assert stored == expected, f"{opp}: database {stored} != model {expected}"
    assert row["moves"] == deal.seq, f"{opp}: {row['moves']} stage_history rows for {deal.seq} stage entries"


def test_random_sales_commands_keep_model_state_and_database_in_step(
    portal: BlockingPortal, app: PortalApp, skipping_env: WorkflowEnvironment
) -> None:
    run_state_machine_as_test(
        deal_machine(portal, app, skipping_env),
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # Random runs may never leave a deal alone long enough; this walk always climbs the ladder.
    desk: Any = deal_machine(portal, app, skipping_env)()
    opp = desk.create()
    desk.time_passes(opp, 14)  # level 1
    desk.pause_clock(opp, "rep")
    desk.time_passes(opp, 7)  # paused: no climb
    desk.resume_clock(opp, "rep")
    desk.time_passes(opp, 3.5)  # 17.5 days of clock: level 2
    desk.teardown()
    assert desk.model[opp].escalation_level == 2
    assert max(LEVELS_REACHED, default=0) >= 2, f"time jumps reached levels {sorted(LEVELS_REACHED)} only"
