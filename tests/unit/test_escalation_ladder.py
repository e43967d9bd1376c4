"""The stuck clock of a stage: when each level of the ladder is due."""

from datetime import UTC, datetime, timedelta

import pytest

from sales import escalation_ladder as ladder
from sales.messages import AcknowledgeEscalation, PauseClock, SnoozeEscalation
from sales.refusals import CommandRefused
from tests.unit.factories import MANAGER, MONDAY, OTHER_REP, OWNER, deal


def test_prospecting_ladder_is_owner_then_manager_then_above() -> None:
    state = deal("Prospecting")
    due = [ladder.level_due_at(state, level) for level in (1, 2, 3)]
    assert due == [MONDAY + timedelta(days=14), MONDAY + timedelta(days=17), MONDAY + timedelta(days=21)]
    first = ladder.next_level(state)
    assert first is not None and (first.level, first.step.notify.value) == (1, "owner")


def test_business_day_ladder_skips_weekends() -> None:
    # Needs Analysis: 10bd, then +3bd, +5bd. From Monday 2 Nov: 16 Nov, 19 Nov, 23 Nov.
    state = deal("Needs Analysis")
    assert [ladder.level_due_at(state, n) for n in (1, 2, 3)] == [
        datetime(2026, 11, 16, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 19, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
    ]


def test_fired_levels_move_the_ladder_up_once() -> None:
    state = deal("Prospecting")
    ladder.mark_fired(state, 1)
    nxt = ladder.next_level(state)
    assert nxt is not None and nxt.level == 2
    ladder.mark_fired(state, 3)
    assert ladder.next_level(state) is None


def test_paused_time_does_not_count() -> None:
    state = deal("Prospecting")
    ladder.apply_pause(state, "waiting on legal", None, MONDAY + timedelta(days=5))
    assert ladder.next_level(state) is None
    ladder.apply_resume(state, MONDAY + timedelta(days=8))
    assert ladder.level_due_at(state, 1) == MONDAY + timedelta(days=17)
    assert state.clock.next_level_due_at == MONDAY + timedelta(days=17)


def test_snooze_pushes_the_rest_of_the_ladder_keeping_its_spacing() -> None:
    state = deal("Prospecting")
    ladder.mark_fired(state, 1)
    until = MONDAY + timedelta(days=25)
    ladder.apply_snooze(state, until)
    second = ladder.next_level(state)
    assert second is not None and (second.level, second.due_at) == (2, until)
    assert ladder.level_due_at(state, 3) == until + timedelta(days=4)
    assert state.clock.next_level_due_at == until


def test_a_snooze_earlier_than_the_next_level_changes_nothing() -> None:
    state = deal("Prospecting")
    ladder.apply_snooze(state, MONDAY + timedelta(days=2))
    assert ladder.level_due_at(state, 1) == MONDAY + timedelta(days=14)


def test_acknowledged_ladder_stops_until_next_stage() -> None:
    state = deal("Prospecting")
    state.clock.level = 1
    state.clock.acknowledged_by = "mgr-1"
    assert ladder.next_level(state) is None


def test_an_old_deal_notifies_only_its_highest_due_level() -> None:
    state = deal("Prospecting", stage_entered_at=MONDAY - timedelta(days=40))
    chosen, superseded = ladder.levels_to_fire(state, MONDAY)
    assert chosen is not None and chosen.level == 3
    assert superseded == [1, 2]


def test_nothing_fires_before_the_deadline() -> None:
    chosen, superseded = ladder.levels_to_fire(deal("Prospecting"), MONDAY + timedelta(days=13))
    assert chosen is None and superseded == []


def test_closed_stages_have_no_clock() -> None:
    assert ladder.next_level(deal("Closed Won")) is None


def test_only_managers_acknowledge_and_only_after_a_level_fired() -> None:
    state = deal("Prospecting")
    with pytest.raises(CommandRefused, match="no escalation has fired"):
        ladder.check_acknowledge(state, AcknowledgeEscalation(request_id="r", actor=MANAGER))
    state.clock.level = 1
    with pytest.raises(CommandRefused) as caught:
        ladder.check_acknowledge(state, AcknowledgeEscalation(request_id="r", actor=OWNER))
    assert caught.value.rule == "escalation_roles"
    ladder.check_acknowledge(state, AcknowledgeEscalation(request_id="r", actor=MANAGER))


def test_snooze_must_be_in_the_future() -> None:
    state = deal("Prospecting")
    cmd = SnoozeEscalation(request_id="r", actor=MANAGER, until=MONDAY - timedelta(hours=1))
    with pytest.raises(CommandRefused, match="must be in the future"):
        ladder.check_snooze(state, cmd, MONDAY)


def test_owner_may_pause_but_not_another_rep() -> None:
    state = deal("Prospecting")
    ladder.check_pause(state, PauseClock(request_id="r", actor=OWNER, reason="customer on holiday"), MONDAY)
    with pytest.raises(CommandRefused) as caught:
        ladder.check_pause(state, PauseClock(request_id="r", actor=OTHER_REP, reason="x"), MONDAY)
    assert caught.value.rule == "clock_roles"
