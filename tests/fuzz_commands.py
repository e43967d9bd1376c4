"""Payloads for fuzzing: a valid command of each kind, and the ways a caller can spoil it
(wrong types, unknown stages, huge or negative amounts, 1-3 MB strings, NUL bytes,
unicode, SQL metacharacters, extra fields)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from sales.messages import MAX_FIELD_VALUE, MAX_TEXT
from sales.process import default_process
from tests.sales_team import SalesTeam

SQL_METACHARACTERS = [
    "'; DROP TABLE opportunities; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM stage_history WHERE ('1'='1",
    "$1 $$ \\ %s %(x)s ? :name",
    "/* */ UNION SELECT * FROM users --",
    "E'\\x00'",
]
UNICODE_SAMPLES = ["Zoë & Søren", "契約書", "🚀 deal", "\u202eevil", "a\u0301", "\ufeffbom", "\U0010ffff"]
STAGE_NAMES = [
    "Qualification",
    "Needs Analysis",
    "Closed Lost",
    "Closed Won",
    "Prospecting",
    "Negotiation",
    "qualification",
    "Qualification ",
    "",
    "Proposal/Price Quote",
]
# Up to 1 MB here; payloads over Temporal's 2 MB blob limit have a test of their own.
HUGE_LENGTHS = [MAX_TEXT + 1, MAX_FIELD_VALUE + 1, 70_000, 1_000_000]


def huge_strings() -> st.SearchStrategy[str]:
    """Long strings of at most 1 MB of UTF-8 (a 3-byte character counts three)."""
    return st.builds(
        lambda n, ch: ch * (n // len(ch.encode())),
        st.sampled_from(HUGE_LENGTHS),
        st.sampled_from(["x", "é", "€"]),
    )


def text_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(SQL_METACHARACTERS),
        st.sampled_from(UNICODE_SAMPLES),
        st.sampled_from(["", " ", "\x00", "deal\x00name", "line\nbreak\ttab"]),
        st.sampled_from(STAGE_NAMES),
    )


def nasty_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        text_values(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["-1", "1e14", "99999999999999999", "NaN", "1.005", "0.1", "12,5", "1E+2"]),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        st.sampled_from(["2026-13-45", "2026-02-29", "2027-01-31", "2030-01-01T09:00:00Z", "yesterday"]),
        huge_strings(),
    )


def valid_payloads(team: SalesTeam) -> dict[str, dict[str, Any]]:
    """One acceptable-looking payload per command, from the owner rep or their manager."""
    rep = {"id": team.id("rep"), "role": "rep"}
    mgr = {"id": team.id("mgr"), "role": "manager"}
    admin = {"id": team.id("ops"), "role": "admin"}
    return {
        "change_stage": {
            "actor": rep,
            "stage": "Qualification",
            "reason": "call went well",
            "fields": {"budget": 1000, "pain_points": "slow reports"},
        },
        "update_fields": {
            "actor": rep,
            "fields": {"pain_points": "slow reports"},
            "amount": "1200.50",
            "close_date": "2027-01-31",
            "name": "Acme renewal",
        },
        "reopen": {"actor": mgr, "stage": "Qualification", "reason": "budget back"},
        "reassign": {"actor": mgr, "owner_id": team.id("rep2"), "reason": "territory change"},
        "add_team_member": {"actor": rep, "user_id": team.id("se"), "team_role": "sales_engineer"},
        "remove_team_member": {"actor": rep, "user_id": team.id("se")},
        "acknowledge_escalation": {"actor": mgr, "note": "on it"},
        "snooze_escalation": {"actor": mgr, "until": "2030-01-01T09:00:00Z"},
        "pause_clock": {"actor": rep, "reason": "customer on holiday"},
        "resume_clock": {"actor": rep},
        "migrate_process": {
            "actor": admin,
            "process": default_process().model_dump(mode="json"),
            "reason": "new version",
        },
        "record_activity": {
            "actor": rep,
            "kind": "call",
            "subject": "intro call",
            "outcome": "positive",
            "data": {"minutes": 30},
        },
    }


@st.composite
def spoiled(draw: st.DrawFn, base: dict[str, Any], objects_only: bool = False) -> Any:
    """The valid payload with one part replaced, one key added, or not an object at all."""
    payload: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    ways = ["replace", "replace", "replace", "nested", "extra", "drop"] + (
        [] if objects_only else ["not_object"]
    )
    how = draw(st.sampled_from(ways))
    if how == "not_object":
        return draw(
            st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5), st.integers(), st.none())
        )
    if how == "extra":
        payload[draw(st.sampled_from(["owner_id", "is_won", "state", "role", "x" * 100]))] = draw(
            nasty_values()
        )
    elif how == "drop":
        payload.pop(draw(st.sampled_from(sorted(payload))))
    elif how == "nested":
        target = draw(st.sampled_from(["actor", "fields", "data"]))
        found = payload.get(target)
        inner = found if isinstance(found, dict) else {}
        key = draw(
            st.one_of(
                st.sampled_from([*inner, "id", "role", "budget", "loss_reason", "amount"]),
                st.text(max_size=70),
            )
        )
        payload[target] = {**inner, key: draw(nasty_values())}
    else:
        payload[draw(st.sampled_from(sorted(payload)))] = draw(nasty_values())
    return payload
