"""What a deal remembers of its requests, and how its state travels across continue-as-new."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sales.messages import CommandResult
from sales.process import shared
from sales.state import REMEMBERED_REQUESTS, OpportunityInput, OpportunityState, pack_state
from tests.unit.factories import deal


def answer(n: int) -> CommandResult:
    return CommandResult(
        request_id=f"req-{n}", message=f"updated take {n}", stage="Qualification", stage_entry_seq=2
    )


def test_a_repeated_request_gets_the_answer_it_got_the_first_time() -> None:
    state = deal()
    state.remember(answer(1))

    assert state.answer_to("req-1") == answer(1)
    assert state.answer_to("req-2") is None


def test_only_the_latest_requests_are_remembered() -> None:
    state = deal()
    for n in range(REMEMBERED_REQUESTS + 5):
        state.remember(answer(n))

    assert len(state.processed) == REMEMBERED_REQUESTS
    assert state.answer_to("req-4") is None
    assert state.answer_to("req-5") == answer(5)
    assert state.answer_to(f"req-{REMEMBERED_REQUESTS + 4}") == answer(REMEMBERED_REQUESTS + 4)


def test_state_carried_before_answers_were_compacted_still_answers_repeats() -> None:
    carried = deal().model_dump(mode="json")
    carried["processed"] = {"req-7": answer(7).model_dump(mode="json")}

    state = OpportunityState.model_validate(carried)

    assert state.answer_to("req-7") == answer(7)


def test_a_packed_state_unpacks_to_the_same_state_with_the_shared_process() -> None:
    state = deal(fields={"budget": 125000, "pain_points": "manual quotes"})
    for n in range(300):
        state.remember(answer(n))
    plain = OpportunityInput(state=state, revision=1).model_dump_json()

    packed = pack_state(state)
    carried = OpportunityInput.model_validate_json(json.dumps({"state": packed, "revision": 1}))

    assert carried.state == state
    assert carried.state is not None and carried.state.process is shared(state.process)
    assert len(packed) < len(plain) / 2


def test_a_state_packed_in_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown format"):
        OpportunityInput.model_validate({"state": "s9:AAAA", "revision": 1})
