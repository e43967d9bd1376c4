"""The deal card shown on the workflow's page in the Temporal Web UI (current details)."""

from __future__ import annotations

from datetime import datetime

from sales import stage_rules
from sales.state import OpportunityState


def _ago(now: datetime, then: datetime) -> str:
    days = (now - then).total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{(now - then).total_seconds() / 3600:.1f} hours"


def render(state: OpportunityState, now: datetime) -> str:
    stage = state.process.stage(state.stage)
    amount = f"{state.amount:,.2f}" if state.amount is not None else "not set"
    guide = stage_rules.requirements_view(state)
    lines = [
        f"## {state.name} — {state.account}",
        f"**Stage:** {state.stage} ({state.probability}%, {state.forecast_category})"
        + (" — closed " + ("won" if state.is_won else "lost") if state.is_closed else ""),
        f"**Owner:** {state.owner_id}  **Amount:** {amount}  **Close date:** {state.close_date or 'not set'}",
        f"**In stage since:** {state.stage_entered_at:%Y-%m-%d %H:%M} UTC "
        f"({_ago(now, state.stage_entered_at)} as of {now:%Y-%m-%d %H:%M} UTC)",
    ]
    if stage.guidance:
        lines.append(f"**Guidance:** {stage.guidance}")
    clock = state.clock
    if clock.paused_since:
        until = f" until {clock.pause_until:%Y-%m-%d %H:%M}" if clock.pause_until else ""
        lines.append(f"**Stage clock:** paused{until} — {clock.pause_reason}")
    elif clock.acknowledged_by:
        lines.append(f"**Escalation:** level {clock.level}, acknowledged by {clock.acknowledged_by}")
    else:
        due = f"{clock.next_level_due_at:%Y-%m-%d %H:%M} UTC" if clock.next_level_due_at else "none"
        lines.append(f"**Escalation level:** {clock.level}  **Next escalation due:** {due}")
    if guide["missing_to_leave"]:
        lines.append(f"**Missing to leave {state.stage}:** {', '.join(guide['missing_to_leave'])}")
    upcoming = next((s for s in guide["next_stages"] if s["missing_to_enter"]), None)
    if upcoming and not state.is_closed:
        lines.append(f"**Missing to enter {upcoming['stage']}:** {', '.join(upcoming['missing_to_enter'])}")
    open_handoffs = state.open_handoffs()
    if open_handoffs:
        items = ", ".join(f"{h.title} ({h.assignee_id or 'unassigned'})" for h in open_handoffs)
        lines.append(f"**Open hand-offs:** {items}")
    if state.team:
        lines.append("**Team:** " + ", ".join(f"{m.user_id} ({m.team_role})" for m in state.team))
    if state.last_activity_at:
        last = state.recent_activities[-1] if state.recent_activities else None
        what = f" — {last.kind}" + (f": {last.subject}" if last and last.subject else "") if last else ""
        lines.append(f"**Last activity:** {state.last_activity_at:%Y-%m-%d %H:%M} UTC{what}")
    if state.refusals:
        last_refusal = state.refusals[-1]
        lines.append(
            f"**Last refused:** {last_refusal.command} by {last_refusal.actor_id}: {last_refusal.message}"
        )
    lines.append(f"_Process {state.process.name} v{state.process.version}_")
    return "\n\n".join(lines)
