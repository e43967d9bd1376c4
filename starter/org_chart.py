"""The org chart: people, their managers and roles, loaded from YAML or CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import asyncpg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sales.messages import Identifier

ROLE_PRIORITY = ("admin", "manager", "automation", "rep")

# The person ($1) and their managers up the chart, as ``chain(id, manager_id, depth)``
# (the person at depth 0); a statement goes on with its own SELECT from ``chain``.
CHAIN_OF = """
WITH RECURSIVE chain(id, manager_id, depth) AS (
    SELECT id, manager_id, 0 FROM users WHERE id = $1
    UNION ALL
    SELECT u.id, u.manager_id, c.depth + 1 FROM users u JOIN chain c ON u.id = c.manager_id
    WHERE c.depth < 20
)
"""


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Identifier
    name: str = Field(min_length=1, max_length=255)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    manager_id: Identifier | None = None
    roles: list[Identifier] = Field(min_length=1)

    @field_validator("manager_id", mode="before")
    @classmethod
    def _blank_manager(cls, value: object) -> object:
        return None if value in ("", None) else value


class OrgChartError(ValueError):
    pass


def parse_org_chart(text: str, source: str) -> list[Person]:
    if source.lower().endswith(".csv"):
        rows: list[dict[str, object]] = []
        for row in csv.DictReader(io.StringIO(text)):
            roles = [r.strip() for r in (row.get("roles") or "").split(";") if r.strip()]
            rows.append({**row, "roles": roles})
        entries, offset = rows, 2
    else:
        data = yaml.safe_load(text) or {}
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, list):
            raise OrgChartError(f"{source}: expected a top-level 'users:' list")
        entries, offset = users, 1
    people, problems = [], []
    for index, entry in enumerate(entries):
        try:
            people.append(Person.model_validate(entry))
        except ValidationError as exc:
            for error in exc.errors():
                field = ".".join(str(p) for p in error["loc"])
                where = f"row {index + offset}" if offset == 2 else f"users[{index}]"
                problems.append(f"{source}: {where}: {field}: {error['msg']}")
    ids = [p.id for p in people]
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"{source}: user {duplicate} appears more than once")
    if problems:
        raise OrgChartError("\n".join(problems))
    return people


def check_chain(people: dict[str, str | None]) -> None:
    """Every manager exists and nobody manages themselves through a loop."""
    for person, manager in people.items():
        if manager is not None and manager not in people:
            raise OrgChartError(f"user {person}: manager_id {manager} is not in the org chart")
        seen = {person}
        while manager is not None:
            if manager in seen:
                raise OrgChartError(f"user {person}: manager chain loops through {manager}")
            seen.add(manager)
            manager = people.get(manager)


async def import_people(pool: asyncpg.Pool, people: list[Person]) -> int:
    async with pool.acquire(timeout=5) as conn, conn.transaction():
        existing = {r["id"]: r["manager_id"] for r in await conn.fetch("SELECT id, manager_id FROM users")}
        check_chain({**existing, **{p.id: p.manager_id for p in people}})
        await conn.executemany(
            "INSERT INTO users (id, name, email, manager_id, roles, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
            "email = EXCLUDED.email, manager_id = EXCLUDED.manager_id, roles = EXCLUDED.roles, "
            "updated_at = now()",
            [(p.id, p.name, p.email, p.manager_id, p.roles) for p in people],
        )
    return len(people)


async def import_file(pool: asyncpg.Pool, path: str) -> int:
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    return await import_people(pool, parse_org_chart(text, path))


def primary_role(roles: list[str]) -> str:
    for role in ROLE_PRIORITY:
        if role in roles:
            return role
    return roles[0] if roles else "rep"


async def roles_of(pool: asyncpg.Pool, user_id: str) -> list[str] | None:
    return await pool.fetchval("SELECT roles FROM users WHERE id = $1", user_id)
