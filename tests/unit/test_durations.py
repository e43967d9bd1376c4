from datetime import UTC, date, datetime

import pytest

from sales.durations import add_business_days, add_duration, parse_duration

FRIDAY_3PM = datetime(2026, 11, 6, 15, 0, tzinfo=UTC)


def test_parses_each_unit() -> None:
    assert [str(parse_duration(t)) for t in ("90s", "36h", "14d", "10bd", "2w")] == [
        "90s",
        "36h",
        "14d",
        "10bd",
        "2w",
    ]


@pytest.mark.parametrize("text", ["", "14", "d14", "1.5d", "-3d", "3 days"])
def test_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="use a whole number"):
        parse_duration(text)


def test_one_business_day_after_friday_is_monday_same_time() -> None:
    assert add_business_days(FRIDAY_3PM, 1) == datetime(2026, 11, 9, 15, 0, tzinfo=UTC)


def test_business_days_skip_listed_holidays() -> None:
    christmas_week_thursday = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)
    # Friday 25th is a holiday, then the weekend: the next business day is Monday 28th.
    assert add_business_days(christmas_week_thursday, 1, [date(2026, 12, 25)]) == datetime(
        2026, 12, 28, 10, 0, tzinfo=UTC
    )


def test_ten_business_days_are_two_calendar_weeks() -> None:
    monday = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert add_duration(monday, parse_duration("10bd")) == datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


def test_a_weekend_start_counts_from_monday() -> None:
    saturday = datetime(2026, 11, 7, 12, 0, tzinfo=UTC)
    assert add_business_days(saturday, 1) == datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def test_calendar_durations_ignore_weekends() -> None:
    assert add_duration(FRIDAY_3PM, parse_duration("36h")) == datetime(2026, 11, 8, 3, 0, tzinfo=UTC)
