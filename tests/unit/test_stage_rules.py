"""Stage rules of the default process, as a rep and a manager meet them."""

from datetime import date
from decimal import Decimal

import pytest

from sales import stage_rules
from sales.messages import Actor, ChangeStage, Reopen, UpdateFields
from sales.refusals import CommandRefused
from tests.unit.factories import ADMIN, AUTOMATION, MANAGER, OTHER_MANAGER, OTHER_REP, OWNER, deal


def move(stage: str, actor: Actor = OWNER, **extra: object) -> ChangeStage:
    return ChangeStage(request_id="r-1", actor=actor, stage=stage, **extra)


def refusal(state, cmd) -> CommandRefused:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandRefused) as caught:
        stage_rules.check_change_stage(state, cmd)
    return caught.value


def test_owner_moves_to_the_next_stage() -> None:
    stage_rules.check_change_stage(deal("Prospecting"), move("Qualification"))


def test_leaving_qualification_needs_budget_and_timeline() -> None:
    refused = refusal(deal("Qualification"), move("Needs Analysis"))
    assert refused.rule == "exit_criteria"
    assert refused.message == "cannot leave Qualification: missing budget, timeline"
    assert refused.missing == ["budget", "timeline"]


def test_fields_set_in_the_same_step_satisfy_exit_criteria() -> None:
    cmd = move("Needs Analysis", fields={"budget": 50000, "timeline": "Q1"})
    stage_rules.check_change_stage(deal("Qualification"), cmd)


def test_blank_text_does_not_count_as_filled() -> None:
    refused = refusal(deal("Qualification", fields={"budget": 1, "timeline": "  "}), move("Needs Analysis"))
    assert refused.missing == ["timeline"]


def test_proposal_needs_amount_and_decision_maker_to_enter() -> None:
    refused = refusal(deal("Negotiation/Review"), move("Proposal/Price Quote"))
    assert refused.rule == "entry_criteria"
    assert refused.missing == ["amount", "decision_maker"]


def test_closed_lost_needs_a_loss_reason_from_any_stage() -> None:
    refused = refusal(deal("Qualification"), move("Closed Lost"))
    assert (refused.rule, refused.missing) == ("entry_criteria", ["loss_reason"])
    stage_rules.check_change_stage(
        deal("Qualification"), move("Closed Lost", fields={"loss_reason": "Price"})
    )


def test_loss_reason_must_be_one_of_the_choices() -> None:
    refused = refusal(deal("Qualification"), move("Closed Lost", fields={"loss_reason": "Aliens"}))
    assert refused.rule == "field_type"
    assert "must be one of Price" in refused.message


def test_skipping_needs_the_skipped_stages_requirements() -> None:
    refused = refusal(deal("Prospecting"), move("Needs Analysis"))
    assert refused.rule == "skip_requirements"
    assert refused.message == "cannot skip Qualification: missing budget, timeline"
    skip_ok = move("Needs Analysis", fields={"budget": 1, "timeline": "Q2"})
    stage_rules.check_change_stage(deal("Prospecting"), skip_ok)


def test_no_skipping_rule_can_be_overridden_by_a_manager_with_a_reason() -> None:
    process = deal().process.model_copy(
        update={"rules": deal().process.rules.model_copy(update={"skip": "never"})}
    )
    state = deal("Prospecting", process=process, fields={"budget": 1, "timeline": "Q2"})
    assert refusal(state, move("Needs Analysis")).rule == "no_skipping"
    assert refusal(state, move("Needs Analysis", actor=MANAGER)).rule == "no_skipping"
    stage_rules.check_change_stage(state, move("Needs Analysis", actor=MANAGER, reason="fast track"))


def test_moving_back_more_than_one_stage_needs_an_override() -> None:
    state = deal("Value Proposition")
    stage_rules.check_change_stage(state, move("Needs Analysis"))
    refused = refusal(state, move("Qualification"))
    assert refused.rule == "backward_limit"
    assert "a manager or admin may override with a reason" in refused.message
    assert refusal(state, move("Qualification", actor=MANAGER)).rule == "backward_limit"
    stage_rules.check_change_stage(state, move("Qualification", actor=MANAGER, reason="requalify"))


def test_closed_deals_refuse_stage_changes() -> None:
    refused = refusal(deal("Closed Won"), move("Qualification", actor=ADMIN, reason="x"))
    assert refused.rule == "closed_is_final"


def test_unknown_and_same_stage_are_refused_with_names() -> None:
    refused = refusal(deal("Prospecting"), move("Negotiation"))
    assert refused.rule == "unknown_stage"
    assert "Negotiation/Review" in refused.message
    assert refusal(deal("Prospecting"), move("Prospecting")).rule == "same_stage"


@pytest.mark.parametrize(
    ("actor", "allowed"),
    [
        (OWNER, True),
        (OTHER_REP, False),
        (MANAGER, True),
        (OTHER_MANAGER, False),
        (ADMIN, True),
        (AUTOMATION, True),
        (Actor(id="se-1", role="sales_engineer"), False),
    ],
)
def test_who_may_move_the_deal(actor: Actor, allowed: bool) -> None:
    state = deal("Prospecting")
    if allowed:
        stage_rules.check_change_stage(state, move("Qualification", actor=actor))
    else:
        refused = refusal(state, move("Qualification", actor=actor))
        assert refused.rule == "move_roles"
        assert actor.id in refused.message


def test_legal_team_member_may_move_out_of_negotiation_only() -> None:
    from sales.state import TeamMember
    from tests.unit.factories import MONDAY

    legal = Actor(id="legal-1", role="legal")
    team = [TeamMember(user_id="legal-1", team_role="legal", added_at=MONDAY)]
    stage_rules.check_change_stage(deal("Negotiation/Review", team=team), move("Closed Won", actor=legal))
    assert refusal(deal("Prospecting", team=team), move("Qualification", actor=legal)).rule == "move_roles"


def test_field_permissions_follow_the_process() -> None:
    from sales.state import TeamMember
    from tests.unit.factories import MONDAY

    engineer = Actor(id="se-1", role="sales_engineer")
    state = deal(
        "Perception Analysis", team=[TeamMember(user_id="se-1", team_role="sales_engineer", added_at=MONDAY)]
    )
    stage_rules.check_update_fields(
        state, UpdateFields(request_id="r", actor=engineer, fields={"technical_fit": "good"})
    )
    with pytest.raises(CommandRefused, match="may not edit budget") as caught:
        stage_rules.check_update_fields(
            state, UpdateFields(request_id="r", actor=engineer, fields={"budget": 5})
        )
    assert caught.value.rule == "field_permissions"


def test_money_fields_must_be_numbers() -> None:
    with pytest.raises(CommandRefused, match="field budget must be a money"):
        stage_rules.check_update_fields(
            deal(), UpdateFields(request_id="r", actor=OWNER, fields={"budget": "lots"})
        )


def test_reopen_is_for_managers_into_an_open_stage() -> None:
    lost = deal("Closed Lost")
    stage_rules.check_reopen(
        lost, Reopen(request_id="r", actor=MANAGER, stage="Qualification", reason="back")
    )
    with pytest.raises(CommandRefused) as caught:
        stage_rules.check_reopen(lost, Reopen(request_id="r", actor=OWNER, stage="Qualification", reason="x"))
    assert caught.value.rule == "reopen_roles"
    with pytest.raises(CommandRefused) as caught:
        stage_rules.check_reopen(
            deal(), Reopen(request_id="r", actor=MANAGER, stage="Qualification", reason="x")
        )
    assert caught.value.rule == "not_closed"


def test_entering_a_stage_sets_probability_forecast_and_a_fresh_clock() -> None:
    from datetime import UTC, datetime

    state = deal("Negotiation/Review", amount=Decimal(100), close_date=date(2026, 12, 1))
    state.clock.level = 2
    later = datetime(2026, 11, 12, 9, 0, tzinfo=UTC)
    stage_rules.apply_stage(state, "Closed Won", later)
    assert (state.probability, state.forecast_category, state.is_closed, state.is_won) == (
        100,
        "Closed",
        True,
        True,
    )
    assert state.stage_entry_seq == 2
    assert state.clock.level == 0
    assert state.time_in_stage_seconds["Negotiation/Review"] == 10 * 86400


def test_requirements_view_shows_what_is_missing_next() -> None:
    view = stage_rules.requirements_view(deal("Qualification", fields={"budget": 10}))
    assert view["missing_to_leave"] == ["timeline"]
    proposal = next(s for s in view["next_stages"] if s["stage"] == "Proposal/Price Quote")
    assert proposal["missing_to_enter"] == ["amount", "decision_maker"]
