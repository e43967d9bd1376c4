"""The stuck-deal clock and its escalation ladder.

Level N of a stage is due at ``stage entry + paused time + snoozed time + stuck_after +
step N's after`` (business days skip weekends and the process's holidays). Snoozing pushes
the next level to a date and the rest of the ladder with it, keeping its spacing;
acknowledging stops the ladder until the next stage change; a paused clock has no due
level. Deadlines are computed from state, so waking up for an unrelated
message never restarts the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sales import permissions
from sales.durations import add_duration
from sales.messages import AcknowledgeEscalation, PauseClock, ResumeClock, SnoozeEscalation
from sales.process import EscalationStep, Recipient
from sales.refusals import CommandRefused
from sales.state import OpportunityState


@dataclass(frozen=True)
class DueLevel:
    level: int  # 1-based
    step: EscalationStep
    due_at: datetime


def level_due_at(state: OpportunityState, level: int) -> datetime | None:
    stage = state.process.stage(state.stage)
    clock = stage.stuck_clock
    if clock is None or not 1 <= level <= len(stage.escalation):
        return None
    holidays = state.process.holidays
    shift = state.clock.paused_seconds + state.clock.snoozed_seconds
    start = state.stage_entered_at + timedelta(seconds=shift)
    stuck_at = add_duration(start, clock, holidays)
    return add_duration(stuck_at, stage.escalation[level - 1].offset, holidays)


def next_level(state: OpportunityState) -> DueLevel | None:
    """The next level to fire in this stage entry, or None when the ladder is idle."""
    if state.is_closed or state.clock.acknowledged_by or state.clock.paused_since:
        return None
    stage = state.process.stage(state.stage)
    level = state.clock.level + 1
    due_at = level_due_at(state, level)
    if due_at is None:
        return None
    return DueLevel(level, stage.escalation[level - 1], due_at)


def levels_to_fire(state: OpportunityState, now: datetime) -> tuple[DueLevel | None, list[int]]:
    """The level to notify now, and lower levels that are due as well but superseded.

    A deal imported 40 days into a 14-day stage is due at every level at once: only the
    highest due level notifies; the others are recorded as superseded, not sent.
    """
    first = next_level(state)
    if first is None or first.due_at > now:
        return None, []
    chosen = first
    superseded: list[int] = []
    stage = state.process.stage(state.stage)
    for level in range(first.level + 1, len(stage.escalation) + 1):
        due_at = level_due_at(state, level)
        if due_at is None or due_at > now:
            break
        superseded.append(chosen.level)
        chosen = DueLevel(level, stage.escalation[level - 1], due_at)
    return chosen, superseded


def mark_fired(state: OpportunityState, level: int) -> None:
    state.clock.level = max(state.clock.level, level)
    state.clock.snoozed_until = None
    upcoming = next_level(state)
    state.clock.next_level_due_at = upcoming.due_at if upcoming else None


def refresh_next_due(state: OpportunityState) -> None:
    upcoming = next_level(state)
    state.clock.next_level_due_at = upcoming.due_at if upcoming else None


def apply_snooze(state: OpportunityState, until: datetime) -> None:
    state.clock.acknowledged_by = None
    upcoming = next_level(state)
    if upcoming is not None and until > upcoming.due_at:
        state.clock.snoozed_seconds += (until - upcoming.due_at).total_seconds()
    state.clock.snoozed_until = until
    refresh_next_due(state)


def _require_open_clock(state: OpportunityState) -> None:
    if state.is_closed:
        raise CommandRefused("closed_is_final", f"opportunity is {state.stage}; it has no stage clock")
    if state.process.stage(state.stage).stuck_clock is None:
        raise CommandRefused("no_stage_clock", f"stage {state.stage} has no stuck clock")


def check_acknowledge(state: OpportunityState, cmd: AcknowledgeEscalation) -> None:
    permissions.require(
        state, cmd.actor, state.process.rules.escalation_roles, "acknowledge escalations", "escalation_roles"
    )
    _require_open_clock(state)
    if state.clock.level == 0:
        raise CommandRefused("nothing_escalated", f"no escalation has fired in {state.stage} yet")
    if state.clock.acknowledged_by:
        raise CommandRefused("already_acknowledged", f"already acknowledged by {state.clock.acknowledged_by}")


def check_snooze(state: OpportunityState, cmd: SnoozeEscalation, now: datetime) -> None:
    permissions.require(
        state, cmd.actor, state.process.rules.escalation_roles, "snooze escalations", "escalation_roles"
    )
    _require_open_clock(state)
    if cmd.until <= now:
        raise CommandRefused("snooze_in_future", f"until must be in the future (now {now.isoformat()})")
    if next_level(state) is None and not state.clock.acknowledged_by:
        raise CommandRefused("nothing_to_snooze", f"no escalation level is pending in {state.stage}")


def check_pause(state: OpportunityState, cmd: PauseClock, now: datetime) -> None:
    permissions.require(
        state, cmd.actor, state.process.rules.clock_roles, "pause the stage clock", "clock_roles"
    )
    _require_open_clock(state)
    if state.clock.paused_since:
        raise CommandRefused("already_paused", f"clock already paused: {state.clock.pause_reason}")
    if cmd.until is not None and cmd.until <= now:
        raise CommandRefused("resume_in_future", "until must be in the future")


def check_resume(state: OpportunityState, cmd: ResumeClock) -> None:
    permissions.require(
        state, cmd.actor, state.process.rules.clock_roles, "resume the stage clock", "clock_roles"
    )
    if not state.clock.paused_since:
        raise CommandRefused("not_paused", "the stage clock is running")


def apply_pause(state: OpportunityState, reason: str, until: datetime | None, now: datetime) -> None:
    state.clock.paused_since = now
    state.clock.pause_reason = reason
    state.clock.pause_until = until
    state.clock.next_level_due_at = None


def apply_resume(state: OpportunityState, now: datetime) -> None:
    if state.clock.paused_since:
        state.clock.paused_seconds += max(0.0, (now - state.clock.paused_since).total_seconds())
    state.clock.paused_since = None
    state.clock.pause_reason = None
    state.clock.pause_until = None
    refresh_next_due(state)


def recipient_label(step: EscalationStep) -> str:
    return {
        Recipient.owner: "remind the owner",
        Recipient.manager: "escalate to manager",
        Recipient.manager_of_manager: "escalate to manager's manager",
        Recipient.sales_ops: "escalate to sales ops",
        Recipient.assignee: "remind the assignee",
        Recipient.assignee_manager: "escalate to the assignee's manager",
    }[step.notify]
