"""The contract's custom search attributes, typed, and how a deal fills them."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from sales.messages import CreateOpportunity
from sales.state import OpportunityState

STAGE = SearchAttributeKey.for_keyword("OpportunityStage")
OWNER = SearchAttributeKey.for_keyword("OpportunityOwner")
AMOUNT = SearchAttributeKey.for_float("OpportunityAmount")
CLOSE_DATE = SearchAttributeKey.for_datetime("OpportunityCloseDate")
STAGE_ENTERED_AT = SearchAttributeKey.for_datetime("StageEnteredAt")
ESCALATION_LEVEL = SearchAttributeKey.for_int("EscalationLevel")
FORECAST_CATEGORY = SearchAttributeKey.for_keyword("ForecastCategory")

ALL_KEYS: list[SearchAttributeKey[Any]] = [
    STAGE,
    OWNER,
    AMOUNT,
    CLOSE_DATE,
    STAGE_ENTERED_AT,
    ESCALATION_LEVEL,
    FORECAST_CATEGORY,
]


def pairs_for(state: OpportunityState) -> list[SearchAttributePair]:
    pairs: list[SearchAttributePair] = [
        SearchAttributePair(STAGE, state.stage),
        SearchAttributePair(OWNER, state.owner_id),
        SearchAttributePair(STAGE_ENTERED_AT, state.stage_entered_at),
        SearchAttributePair(ESCALATION_LEVEL, state.clock.level),
        SearchAttributePair(FORECAST_CATEGORY, state.forecast_category),
    ]
    if state.amount is not None:
        pairs.append(SearchAttributePair(AMOUNT, float(state.amount)))
    if state.close_date is not None:
        pairs.append(SearchAttributePair(CLOSE_DATE, datetime.combine(state.close_date, time(), tzinfo=UTC)))
    return pairs


def initial(cmd: CreateOpportunity, stage: str, forecast_category: str) -> TypedSearchAttributes:
    """Search attributes set when the workflow starts, before its first task runs."""
    pairs: list[SearchAttributePair] = [
        SearchAttributePair(STAGE, stage),
        SearchAttributePair(OWNER, cmd.owner_id),
        SearchAttributePair(STAGE_ENTERED_AT, cmd.stage_entered_at or datetime.now(UTC)),
        SearchAttributePair(ESCALATION_LEVEL, 0),
        SearchAttributePair(FORECAST_CATEGORY, forecast_category),
    ]
    if cmd.amount is not None:
        pairs.append(SearchAttributePair(AMOUNT, float(cmd.amount)))
    if cmd.close_date is not None:
        pairs.append(SearchAttributePair(CLOSE_DATE, datetime.combine(cmd.close_date, time(), tzinfo=UTC)))
    return TypedSearchAttributes(pairs)


def updates_for(state: OpportunityState) -> list[SearchAttributeUpdate[Any]]:
    """Search attribute updates for an upsert; unset keys whose value is gone."""
    present = {pair.key.name: pair for pair in pairs_for(state)}
    updates: list[SearchAttributeUpdate[Any]] = []
    for key in ALL_KEYS:
        pair = present.get(key.name)
        updates.append(key.value_set(pair.value) if pair else key.value_unset())
    return updates


def changed(
    updates: list[SearchAttributeUpdate[Any]], current: TypedSearchAttributes
) -> list[SearchAttributeUpdate[Any]]:
    """Only the updates that change what the workflow's search attributes already hold."""
    return [u for u in updates if current.get(u.key) != u.value]
