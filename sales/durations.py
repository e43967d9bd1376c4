"""Stage clocks: durations such as ``90s``, ``36h``, ``14d`` or ``10bd`` (business days).

Business days skip Saturdays, Sundays and the holidays a process lists; the time of day
is kept, so a deal that entered a stage on Friday 15:00 with ``1bd`` is due Monday 15:00.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_PATTERN = re.compile(r"^\s*(\d+)\s*(bd|s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class ClockDuration:
    amount: int
    unit: str  # s, m, h, d, w or bd

    @property
    def is_business_days(self) -> bool:
        return self.unit == "bd"

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


def parse_duration(text: str) -> ClockDuration:
    """Parse ``90s``, ``15m``, ``36h``, ``14d``, ``2w`` or ``10bd``; raise ValueError otherwise."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a whole number followed by s, m, h, d, w or bd "
            "(business days), e.g. 90s, 36h, 14d, 10bd"
        )
    return ClockDuration(int(match.group(1)), match.group(2))


def is_business_day(day: date, holidays: frozenset[date]) -> bool:
    return day.weekday() < 5 and day not in holidays


def add_business_days(start: datetime, days: int, holidays: Iterable[date] = ()) -> datetime:
    """Move ``days`` business days forward from ``start``, keeping the time of day.

    A start on a weekend or holiday counts from the next business day's same time.
    """
    off = frozenset(holidays)
    current = start
    while not is_business_day(current.date(), off):
        current += timedelta(days=1)
    remaining = days
    while remaining > 0:
        current += timedelta(days=1)
        if is_business_day(current.date(), off):
            remaining -= 1
    return current


def add_duration(start: datetime, duration: ClockDuration, holidays: Iterable[date] = ()) -> datetime:
    if duration.is_business_days:
        return add_business_days(start, duration.amount, holidays)
    return start + timedelta(seconds=duration.amount * _SECONDS[duration.unit])
