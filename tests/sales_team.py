"""A running oppflow app for a test: a worker on its own task queue, the client facade, and
an org chart of unique people (so tests share one server and one database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from temporalio.client import Client

from sales.messages import Actor
from starter.client import OpportunityClient
from starter.org_chart import Person, import_people
from starter.settings import Settings
from tests.helpers import new_task_queue
from worker import build_worker, write_rejections


@dataclass
class SalesTeam:
    """People of one test's org chart: vp > manager > two reps; an SE, legal, CS and ops."""

    tag: str

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"

    @property
    def people(self) -> list[Person]:
        def person(name: str, roles: list[str], manager: str | None) -> Person:
            return Person(
                id=self.id(name),
                name=f"{name.title()} {self.tag}",
                email=f"{name}-{self.tag}@example.com",
                manager_id=self.id(manager) if manager else None,
                roles=roles,
            )

        return [
            person("vp", ["manager"], None),
            person("mgr", ["manager"], "vp"),
            person("othermgr", ["manager"], "vp"),
            person("rep", ["rep"], "mgr"),
            person("rep2", ["rep"], "mgr"),
            person("se", ["sales_engineer"], "mgr"),
            person("legal", ["legal"], "vp"),
            person("csm", ["customer_success"], "vp"),
            person("ops", ["admin"], None),
        ]

    def actor(self, name: str, role: str | None = None) -> Actor:
        roles = {p.id: p.roles[0] for p in self.people}
        return Actor(id=self.id(name), role=role or roles[self.id(name)])


@dataclass
class App:
    client: OpportunityClient
    team: SalesTeam
    pool: asyncpg.Pool
    temporal: Client
    task_queue: str

    def opp_id(self) -> str:
        return f"opp-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def running_app(
    temporal: Client, pool: asyncpg.Pool, settings: Settings | None = None, **worker_options: object
) -> AsyncIterator[App]:
    team = SalesTeam(uuid.uuid4().hex[:6])
    await import_people(pool, team.people)
    queue = new_task_queue()
    settings = settings or Settings(task_queue=queue)
    worker = build_worker(temporal, pool, settings, task_queue=queue, **worker_options)  # type: ignore[arg-type]
    import asyncio

    audit = asyncio.create_task(write_rejections(pool, interval=0.1))
    try:
        async with worker:
            yield App(OpportunityClient(temporal, pool, queue), team, pool, temporal, queue)
    finally:
        audit.cancel()
