"""Admin automations: "when an activity of kind K arrives while the deal is in stage S,
then advance / close / set fields / notify".

Rules are evaluated in the order the process file lists them, against one activity at a
time in arrival order. An automation acts as the ``automation`` actor and obeys the same
stage rules as a person. A change made by a rule never re-triggers that rule, and a
chain of rule-made changes stops at ``rules.max_automation_chain``.
"""

from __future__ import annotations

from typing import Any

from sales.messages import RecordActivity
from sales.process import AutomationRule
from sales.state import OpportunityState


def _lookup(path: str, activity: RecordActivity, state: OpportunityState) -> Any:
    head, _, rest = path.partition(".")
    if head == "data" and rest:
        return activity.data.get(rest)
    if head == "fields" and rest:
        return state.fields.get(rest)
    if head in ("subject", "outcome", "kind"):
        return getattr(activity, head)
    if head == "amount":
        return state.amount
    return None


def matches(rule: AutomationRule, activity: RecordActivity, state: OpportunityState) -> bool:
    when = rule.when
    if when.kind != activity.kind:
        return False
    if when.stage is not None and when.stage != state.stage:
        return False
    return all(_lookup(path, activity, state) == expected for path, expected in when.where.items())


def matching_rules(activity: RecordActivity, state: OpportunityState) -> list[AutomationRule]:
    if state.is_closed:
        return []
    return [rule for rule in state.process.automations if matches(rule, activity, state)]
