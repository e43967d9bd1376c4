"""A plain-Python model of the default process (``new-business``) as a sales rep meets it,
written from the process file and the docs, not from ``sales/`` — so it can disagree.

Covers the first five open stages and Closed Lost (no hand-offs), the owner rep, another
rep and their manager; stage moves, field edits, reassignment, the stage clock pause and
the escalation ladder as time passes (the process counted in calendar days: the test
publishes it with its business days read as days).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

OPEN = [
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
]
TARGETS = [*OPEN[:5], "Closed Lost", "Negotiation"]  # "Negotiation" is not a stage
EXIT_REQUIRES = {"Qualification": ["budget", "timeline"], "Id. Decision Makers": ["decision_maker"]}
ENTRY_REQUIRES = {"Proposal/Price Quote": ["amount", "decision_maker"], "Closed Lost": ["loss_reason"]}
LOSS_REASONS = ["Price", "Competitor", "No budget", "No decision", "Timing", "Product fit", "Other"]
FIELD_VALUES: dict[str, list[Any]] = {
    "budget": [80000, "120000.50", -5, "lots"],
    "timeline": ["Q3", "next year", ""],
    "decision_maker": ["CFO Dana", "   "],
    "loss_reason": ["Price", "Because"],
    "pain_points": ["slow reports", "d'Artagnan; DROP TABLE users"],
}


# Days in a stage before each ladder level fires: stuck_after, then each rung's "after".
LADDER_DAYS = {
    "Prospecting": [14, 17, 21],
    "Qualification": [14, 17, 21],
    "Needs Analysis": [10, 13, 15],
    "Value Proposition": [10, 13, 15],
    "Id. Decision Makers": [10, 13, 15],
}


class Refused(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def filled(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def check_value(name: str, value: Any) -> None:
    if value is None:
        return
    if name == "budget":
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise Refused("field_type") from None
        if isinstance(value, bool) or not number.is_finite() or number < 0:
            raise Refused("field_type")
    if name == "loss_reason" and value not in LOSS_REASONS:
        raise Refused("field_type")


@dataclass
class Deal:
    owner: str  # "rep" or "rep2"
    stage: str = "Prospecting"
    seq: int = 1
    fields: dict[str, Any] = field(default_factory=dict)
    amount: Decimal | None = Decimal(5000)
    paused: bool = False
    days_in_stage: float = 0.0  # clock time: paused time does not count
    escalation_level: int = 0

    @property
    def closed(self) -> bool:
        return self.stage.startswith("Closed")

    def standing(self, who: str) -> set[str]:
        """Both reps report to the manager; the manager holds 'manager' on every deal."""
        if who == "mgr":
            return {"manager"}
        return {"owner"} if who == self.owner else set()

    def values(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {**self.fields, "amount": self.amount, **fields}

    def move(self, who: str, target: str, fields: dict[str, Any], reason: str | None) -> None:
        if self.closed:
            raise Refused("closed_is_final")
        if target not in [*OPEN, "Closed Won", "Closed Lost"]:
            raise Refused("unknown_stage")
        if target == self.stage:
            raise Refused("same_stage")
        held = self.standing(who)
        if not held & {"owner", "manager"}:
            raise Refused("move_roles")
        for name, value in fields.items():
            check_value(name, value)
        values = self.values(fields)
        overriding = "manager" in held and bool(reason)
        here = OPEN.index(self.stage)
        if target != "Closed Lost":
            there = OPEN.index(target)
            if here - there > 1 and not overriding:
                raise Refused("backward_limit")
            skipped = OPEN[here + 1 : there]
            needed = [n for s in skipped for n in EXIT_REQUIRES.get(s, []) + ENTRY_REQUIRES.get(s, [])]
            if skipped and not overriding and any(not filled(values.get(n)) for n in needed):
                raise Refused("skip_requirements")
            forward = there > here  # exit criteria guard forward moves only
            if forward and any(not filled(values.get(n)) for n in EXIT_REQUIRES.get(self.stage, [])):
                raise Refused("exit_criteria")
        if any(not filled(values.get(n)) for n in ENTRY_REQUIRES.get(target, [])):
            raise Refused("entry_criteria")
        self._set(fields)
        self.stage, self.seq, self.paused = target, self.seq + 1, False
        self.days_in_stage, self.escalation_level = 0.0, 0

    def time_passes(self, days: float) -> None:
        """The ladder climbs to the highest level due; lower ones passed over do not count."""
        if self.closed or self.paused:
            return
        self.days_in_stage += days
        due = [level for level, at in enumerate(LADDER_DAYS[self.stage], 1) if self.days_in_stage >= at]
        self.escalation_level = max([self.escalation_level, *due])

    def update(self, who: str, fields: dict[str, Any]) -> None:
        if self.closed:
            raise Refused("closed_is_final")
        for name, value in fields.items():
            check_value(name, value)
        if not self.standing(who) & {"owner", "manager"}:
            raise Refused("field_permissions")
        self._set(fields)

    def reassign(self, who: str, new_owner: str) -> None:
        if "manager" not in self.standing(who):
            raise Refused("reassign_roles")
        if new_owner == self.owner:
            raise Refused("same_owner")
        self.owner = new_owner

    def pause(self, who: str) -> None:
        if not self.standing(who) & {"owner", "manager"}:
            raise Refused("clock_roles")
        if self.closed:
            raise Refused("closed_is_final")
        if self.paused:
            raise Refused("already_paused")
        self.paused = True

    def resume(self, who: str) -> None:
        if not self.standing(who) & {"owner", "manager"}:
            raise Refused("clock_roles")
        if not self.paused:
            raise Refused("not_paused")
        self.paused = False

    def _set(self, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if value is None:
                self.fields.pop(name, None)
            else:
                self.fields[name] = value
