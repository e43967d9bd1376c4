"""A Salesforce opportunity report export (CSV, US dates), generated with known broken rows.

    python -m tests.data.salesforce_export OUT.csv --rows 2000 --broken 30 --owner "Rita Rep"

Used by the import tests; the owners named must be in the org chart by full name.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

HEADER = [
    "Opportunity ID",
    "Opportunity Name",
    "Account Name",
    "Opportunity Owner",
    "Stage",
    "Amount",
    "Close Date",
    "Last Stage Change Date",
    "Probability (%)",
    "Created Date",
]
# (stage, probability, share of rows); recent stage changes so most deals are not stuck yet.
STAGES = [
    ("Prospecting", 10, 24),
    ("Qualification", 10, 18),
    ("Needs Analysis", 20, 14),
    ("Value Proposition", 50, 12),
    ("Id. Decision Makers", 60, 10),
    ("Proposal/Price Quote", 75, 8),
    ("Negotiation/Review", 90, 8),
    ("Closed Lost", 0, 6),
]
# What is wrong with a broken row, and the column the import must blame.
BREAKAGES = [
    ("Stage", "Negotiating (legacy)"),
    ("Opportunity Owner", "Nobody Known"),
    ("Amount", "12,5OO.00"),
    ("Close Date", "31/31/2026"),
    ("Opportunity Name", ""),
]


@dataclass
class Generated:
    text: str
    ids: list[str]  # every row's Opportunity ID, in file order
    broken: dict[int, str] = field(default_factory=dict)  # line -> column blamed
    old_ids: list[str] = field(default_factory=list)  # deals 40 days into Prospecting
    stages: dict[str, str] = field(default_factory=dict)  # good id -> stage

    @property
    def good_ids(self) -> list[str]:
        bad_lines = set(self.broken)
        return [oid for line, oid in enumerate(self.ids, start=2) if line not in bad_lines]


def _us(day: date) -> str:
    return f"{day.month}/{day.day}/{day.year}"


def generate(
    rows: int,
    broken: int,
    owners: list[str],
    id_prefix: str,
    *,
    old: int = 0,
    today: date | None = None,
    seed: int = 7,
) -> Generated:
    """`rows` data rows, `broken` of them spread evenly and broken in turn in each way of
    BREAKAGES, and `old` good Prospecting deals whose last stage change was 40 days ago."""
    rng = random.Random(seed)
    today = today or datetime.now(UTC).date()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    weights = [share for _, _, share in STAGES]
    broken_at = {round(i * rows / broken) + rows // (2 * broken) for i in range(broken)} if broken else set()
    old_at = {round(i * rows / old) for i in range(old)} - broken_at if old else set()
    out = Generated(text="", ids=[])
    for index in range(rows):
        line = index + 2
        oid = f"{id_prefix}{index:06d}"
        stage, probability, _ = rng.choices(STAGES, weights)[0]
        changed = today - timedelta(days=rng.randint(0, 9))
        if index in old_at:
            stage, probability, changed = "Prospecting", 10, today - timedelta(days=40)
            out.old_ids.append(oid)
        amount = rng.choice([f"{rng.randint(5, 900) * 100:.2f}", f"USD {rng.randint(5, 900) * 100:,}", ""])
        record = {
            "Opportunity ID": oid,
            "Opportunity Name": f'Deal {index} - "{rng.choice(["Renewal", "Expansion", "New"])}", phase 1',
            "Account Name": f"Account {rng.randint(1, 150)}",
            "Opportunity Owner": rng.choice(owners),
            "Stage": stage,
            "Amount": amount,
            "Close Date": _us(today + timedelta(days=rng.randint(-30, 120))),
            "Last Stage Change Date": _us(changed),
            "Probability (%)": str(probability),
            "Created Date": _us(changed - timedelta(days=rng.randint(0, 60))),
        }
        if index in broken_at:
            column, value = BREAKAGES[len(out.broken) % len(BREAKAGES)]
            record[column] = value
            out.broken[line] = column
        else:
            out.stages[oid] = stage
        out.ids.append(oid)
        writer.writerow([record[h] for h in HEADER])
    out.text = buffer.getvalue()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--broken", type=int, default=30)
    parser.add_argument("--old", type=int, default=0, help="deals 40 days into Prospecting")
    parser.add_argument("--owner", action="append", required=True, help="full name in the org chart")
    parser.add_argument("--id-prefix", default="006SAMPLE")
    args = parser.parse_args()
    generated = generate(args.rows, args.broken, args.owner, args.id_prefix, old=args.old)
    with open(args.out, "w", encoding="utf-8", newline="") as handle:
        handle.write(generated.text)
    print(f"wrote {args.rows} rows ({len(generated.broken)} broken) to {args.out}")


if __name__ == "__main__":
    main()
