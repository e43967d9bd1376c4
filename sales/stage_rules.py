"""Rules for moving a deal between stages and for the values of its fields.

Every check raises ``CommandRefused`` naming the rule; every ``apply_*`` mutates state
only after the checks passed. The workflow runs the checks in update validators (so a
refused command leaves no history) and again before applying.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sales import permissions
from sales.messages import Actor, ChangeStage, Reopen, UpdateFields
from sales.process import FieldSpec, SalesProcess, StageDefinition
from sales.refusals import CommandRefused
from sales.state import OpportunityState, StageClock

BUILTIN_FIELDS = ("amount", "close_date")


def current_values(state: OpportunityState) -> dict[str, Any]:
    return {**state.fields, "amount": state.amount, "close_date": state.close_date}


def merged_values(
    state: OpportunityState,
    fields: dict[str, Any],
    amount: Decimal | None = None,
    close_date: date | None = None,
) -> dict[str, Any]:
    values = {**current_values(state), **fields}
    if amount is not None:
        values["amount"] = amount
    if close_date is not None:
        values["close_date"] = close_date
    return values


def is_filled(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def missing_fields(required: list[str], values: dict[str, Any]) -> list[str]:
    return [name for name in required if not is_filled(values.get(name))]


def missing_handoffs(state: OpportunityState, required: list[str]) -> list[str]:
    done = {h.kind for h in state.handoffs if h.status == "completed"}
    return [kind for kind in required if kind not in done]


def check_field_values(process: SalesProcess, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name in BUILTIN_FIELDS:
            raise CommandRefused("field_type", f"set {name} with its own parameter, not inside fields")
        if value is None:
            continue
        _check_value(name, process.field_spec(name), value)


def _check_value(name: str, spec: FieldSpec, value: Any) -> None:
    def refuse(rule_text: str) -> CommandRefused:
        return CommandRefused("field_type", f"field {name} {rule_text} (got {value!r:.80})")

    if spec.type in ("number", "money"):
        if isinstance(value, bool):
            raise refuse(f"must be a {spec.type}")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise refuse(f"must be a {spec.type}") from None
        if not number.is_finite() or (spec.type == "money" and number < 0):
            raise refuse(f"must be a finite{' non-negative' if spec.type == 'money' else ''} number")
    elif spec.type == "date":
        try:
            date.fromisoformat(str(value))
        except ValueError:
            raise refuse("must be a date like 2026-12-31") from None
    elif spec.type == "bool":
        if not isinstance(value, bool):
            raise refuse("must be true or false")
    elif spec.type == "choice":
        if value not in spec.choices:
            raise refuse(f"must be one of {', '.join(spec.choices)}")
    elif isinstance(value, str) and len(value) > spec.max_length:
        raise refuse(f"must be at most {spec.max_length} characters")


def _target(process: SalesProcess, name: str) -> StageDefinition:
    if not process.has_stage(name):
        known = ", ".join(s.name for s in process.stages)
        raise CommandRefused("unknown_stage", f"stage {name!r} is not in process {process.name}: {known}")
    return process.stage(name)


def check_change_stage(state: OpportunityState, cmd: ChangeStage) -> None:
    process = state.process
    if state.is_closed:
        raise CommandRefused("closed_is_final", f"opportunity is {state.stage}; a manager can reopen it")
    target = _target(process, cmd.stage)
    if target.name == state.stage:
        raise CommandRefused("same_stage", f"opportunity is already in {state.stage}")
    current = process.stage(state.stage)
    held = permissions.require(
        state,
        cmd.actor,
        current.move_roles or process.rules.default_move_roles,
        f"move the deal out of {current.name}",
        "move_roles",
    )
    if cmd.fields or cmd.amount is not None or cmd.close_date is not None:
        check_field_values(process, cmd.fields)
        permissions.require_field_edit(state, cmd.actor, _edited_names(cmd))
    values = merged_values(state, cmd.fields, cmd.amount, cmd.close_date)
    overriding = permissions.may_override(state, held) and bool(cmd.reason)

    if not (target.closed and not target.won):  # closing lost is always possible
        _check_direction(state, target, values, held, overriding, cmd.reason)

    # Exit criteria guard moving forward (closing won included); moving back or losing the
    # deal never needs them.
    forward = target.won or (not target.closed and process.index(target.name) > process.index(current.name))
    missing = missing_fields(current.requires, values)
    if missing and forward:
        raise CommandRefused(
            "exit_criteria", f"cannot leave {current.name}: missing {', '.join(missing)}", missing
        )
    blocking = missing_handoffs(state, current.requires_handoffs)
    if blocking and forward:
        raise CommandRefused(
            "handoff_required",
            f"cannot leave {current.name}: hand-off not completed: {', '.join(blocking)}",
            blocking,
        )
    missing = missing_fields(target.requires_to_enter, values)
    if missing:
        raise CommandRefused(
            "entry_criteria", f"cannot enter {target.name}: missing {', '.join(missing)}", missing
        )


def _edited_names(cmd: ChangeStage | UpdateFields) -> list[str]:
    names = list(cmd.fields)
    names += [n for n in BUILTIN_FIELDS if getattr(cmd, n) is not None]
    if isinstance(cmd, UpdateFields) and cmd.name is not None:
        names.append("name")
    return names


def _check_direction(
    state: OpportunityState,
    target: StageDefinition,
    values: dict[str, Any],
    held: set[str],
    overriding: bool,
    reason: str | None,
) -> None:
    process = state.process
    here = process.index(state.stage)
    there = process.index(target.name) if not target.closed else len(process.open_stages)
    rules = process.rules
    if there < here:
        steps = here - there
        if rules.max_backward_steps is not None and steps > rules.max_backward_steps:
            if not overriding:
                raise CommandRefused(
                    "backward_limit",
                    f"moving back {steps} stages from {state.stage} to {target.name} exceeds "
                    f"the limit of {rules.max_backward_steps}; a "
                    f"{' or '.join(rules.override_roles)} may override with a reason",
                )
        return
    skipped = [s for s in process.open_stages[here + 1 : there] if s.skippable is not True]
    if not skipped or overriding or rules.skip == "always":
        return
    names = ", ".join(s.name for s in skipped)
    if rules.skip == "never":
        raise CommandRefused(
            "no_skipping",
            f"cannot skip {names}; a {' or '.join(rules.override_roles)} may override with a reason",
        )
    missing: list[str] = []
    for stage in skipped:
        missing += [m for m in missing_fields(stage.requires + stage.requires_to_enter, values)]
        missing += missing_handoffs(state, stage.requires_handoffs)
    missing = list(dict.fromkeys(missing))
    if missing:
        raise CommandRefused(
            "skip_requirements",
            f"cannot skip {names}: missing {', '.join(missing)}",
            missing,
        )


def check_update_fields(state: OpportunityState, cmd: UpdateFields) -> None:
    if not (cmd.fields or cmd.amount is not None or cmd.close_date is not None or cmd.name):
        raise CommandRefused("empty_update", "nothing to update: give fields, amount, close_date or name")
    if state.is_closed:
        permissions.require(state, cmd.actor, ["admin"], "edit a closed opportunity", "closed_is_final")
    check_field_values(state.process, cmd.fields)
    permissions.require_field_edit(state, cmd.actor, _edited_names(cmd))


def check_reopen(state: OpportunityState, cmd: Reopen) -> None:
    if not state.is_closed:
        raise CommandRefused("not_closed", f"opportunity is open in {state.stage}; nothing to reopen")
    permissions.require(state, cmd.actor, state.process.rules.reopen_roles, "reopen the deal", "reopen_roles")
    target = _target(state.process, cmd.stage)
    if target.closed:
        raise CommandRefused("reopen_to_open_stage", f"reopen into an open stage, not {target.name}")


def apply_fields(
    state: OpportunityState,
    fields: dict[str, Any],
    amount: Decimal | None,
    close_date: date | None,
    name: str | None = None,
) -> None:
    for key, value in fields.items():
        if value is None:
            state.fields.pop(key, None)
        else:
            state.fields[key] = value
    if amount is not None:
        state.amount = amount
    if close_date is not None:
        state.close_date = close_date
    if name is not None:
        state.name = name


def apply_stage(state: OpportunityState, stage_name: str, now: datetime) -> None:
    """Enter a stage: probability and forecast follow it, and a fresh clock starts."""
    stage = state.process.stage(stage_name)
    spent = max(0.0, (now - state.stage_entered_at).total_seconds())
    state.time_in_stage_seconds[state.stage] = state.time_in_stage_seconds.get(state.stage, 0.0) + spent
    state.stage = stage.name
    state.stage_entered_at = now
    state.stage_entry_seq += 1
    state.probability = stage.probability
    state.forecast_category = stage.forecast_category
    state.is_closed = stage.closed
    state.is_won = stage.won
    state.closed_at = now if stage.closed else None
    state.clock = StageClock()


def requirements_view(state: OpportunityState) -> dict[str, Any]:
    """Path-style guidance: what leaving this stage and entering the next ones needs."""
    process = state.process
    values = current_values(state)
    current = process.stage(state.stage)
    upcoming = []
    if not state.is_closed:
        here = process.index(state.stage)
        for stage in process.stages[here + 1 :]:
            upcoming.append(
                {
                    "stage": stage.name,
                    "requires_to_enter": stage.requires_to_enter,
                    "missing_to_enter": missing_fields(stage.requires_to_enter, values),
                    "requires_to_leave": stage.requires,
                }
            )
    return {
        "stage": current.name,
        "guidance": current.guidance,
        "key_fields": current.key_fields,
        "requires_to_leave": current.requires,
        "missing_to_leave": missing_fields(current.requires, values),
        "handoffs_to_leave": current.requires_handoffs,
        "missing_handoffs": missing_handoffs(state, current.requires_handoffs),
        "next_stages": upcoming,
    }


def actor_label(actor: Actor) -> str:
    return f"{actor.id} ({actor.role})"
