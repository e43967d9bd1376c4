"""Bring an existing pipeline in: every row of a CRM export becomes a running opportunity.

Safe to run again and to interrupt. Each deal starts as workflow ``opportunity-<id>`` with
a request id derived from the file's SHA-256 and the deal's id, and an existing workflow
is kept (the server admits one start per id), so nothing is created twice. Rows done are checkpointed in
``import_rows``; a second run of the same file with the same mapping skips them and
continues where the first stopped. Rows that cannot be imported are reported (line,
column, reason) and skipped whole; fix them and run again to import just those.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from temporalio.service import RPCError

from sales.messages import Actor
from starter import org_chart
from starter.client import CommandRejected, OpportunityClient
from starter.import_mapping import (
    DealRow,
    ImportMapping,
    MappingError,
    OwnerDirectory,
    Person,
    RowConverter,
    RowProblem,
    Target,
    detect,
    resolve_columns,
)

CREATE_ATTEMPTS = 4
LANDING_TIMEOUT_S = 60.0
LANDING_POLL_S = 0.1
CHECKPOINT_EVERY_S = 0.5
CHECKPOINT_BATCH = 200
# Which source column a refusal from OpportunityClient.create is about.
REJECTED_FIELD_COLUMN: dict[str, Target] = {
    "owner_id": "owner",
    "stage": "stage",
    "amount": "amount",
    "close_date": "close_date",
    "name": "name",
    "account": "account",
    "opportunity_id": "opportunity_id",
    "stage_entered_at": "stage_entered_at",
}


# -- reading exports --------------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    path: Path
    sha256: str
    headers: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (line number in the file, column -> value)


def read_export(path: str | Path) -> Export:
    path = Path(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        headers, rows = _read_xlsx(data)
    elif suffix in (".csv", ".txt", ".tsv"):
        headers, rows = _read_csv(data)
    else:
        raise MappingError(f"{path}: import reads .csv or .xlsx files (got {suffix or 'no extension'})")
    return Export(path, digest, headers, [(line, row) for line, row in rows if _has_values(row)])


def _has_values(row: dict[str, Any]) -> bool:
    return any(v not in (None, "") and str(v).strip() for v in row.values())


def _read_csv(data: bytes) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252")
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        headers = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MappingError("the file is empty") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        start = reader.line_num + 1
        for cells in reader:
            yield start, dict(zip(headers, cells, strict=False))
            start = reader.line_num + 1

    return headers, rows()


def _read_xlsx(data: bytes) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    sheet = book.worksheets[0]
    cells = sheet.iter_rows(values_only=True)
    line, headers = 0, []
    for values in cells:
        line += 1
        if any(v not in (None, "") for v in values):
            headers = [str(v).strip() if v is not None else "" for v in values]
            break
    if not headers:
        raise MappingError("the workbook's first sheet is empty")

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for number, values in enumerate(cells, start=line + 1):
            yield number, dict(zip(headers, values, strict=False))
        book.close()

    return headers, rows()


# -- progress and report ------------------------------------------------------------------------


class ImportProgress(Protocol):
    def start(self, total: int, already_done: int, errors: int) -> None: ...
    def advance(self, ok: bool) -> None: ...
    def finish(self) -> None: ...


@dataclass
class ImportReport:
    file: str
    sha256: str
    run_id: str
    source: str
    rows: int = 0
    created: int = 0
    existing: int = 0
    already_imported: int = 0
    remaining: int = 0
    interrupted: bool = False
    dry_run: bool = False
    elapsed_s: float = 0.0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len({p.line for p in self.problems})

    @property
    def rows_per_s(self) -> float:
        done = self.created + self.existing
        return round(done / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "run_id": self.run_id,
            "source": self.source,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "counts": {
                "rows": self.rows,
                "created": self.created,
                "existing": self.existing,
                "already_imported": self.already_imported,
                "skipped": self.skipped,
                "remaining": self.remaining,
            },
            "elapsed_s": round(self.elapsed_s, 2),
            "rows_per_s": self.rows_per_s,
            "errors": [p.as_dict() for p in sorted(self.problems, key=lambda p: (p.line, p.column or ""))],
        }


# -- checkpoint ----------------------------------------------------------------------------------


class Checkpoint:
    """Rows already imported by earlier runs of the same file and mapping; batched writes."""

    def __init__(self, pool: asyncpg.Pool, run_id: str) -> None:
        self.pool = pool
        self.run_id = run_id
        self.pending: list[tuple[str, str, int, str]] = []

    async def open(self, export: Export, source: str, now: datetime) -> datetime:
        return await self.pool.fetchval(
            "INSERT INTO import_runs (id, file_name, file_sha256, source, rows_total, started_at, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) "
            "ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at RETURNING started_at",
            self.run_id,
            export.path.name,
            export.sha256,
            source,
            len(export.rows),
            now,
        )

    async def done(self) -> set[str]:
        rows = await self.pool.fetch("SELECT opportunity_id FROM import_rows WHERE run_id = $1", self.run_id)
        return {r["opportunity_id"] for r in rows}

    def mark(self, row: DealRow, outcome: str) -> None:
        self.pending.append((self.run_id, row.opportunity_id, row.line, outcome))

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            await self.pool.executemany(
                "INSERT INTO import_rows (run_id, opportunity_id, line, outcome, done_at) "
                "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (run_id, opportunity_id) DO NOTHING",
                batch,
            )
        except BaseException:
            self.pending = batch + self.pending
            raise

    async def keep_flushing(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self.flush()

    async def finish(self, report: ImportReport) -> None:
        await self.pool.execute(
            "UPDATE import_runs SET updated_at = now(), summary = $2, "
            "finished_at = CASE WHEN $3 THEN now() ELSE finished_at END WHERE id = $1",
            self.run_id,
            report.as_json()["counts"],
            report.remaining == 0 and not report.interrupted,
        )


class ImportStalled(RuntimeError):
    """Deals are started but no worker saves them: the import stops instead of piling up."""


class Landing:
    """Waits until started deals are saved in Postgres by the worker; one query for all waiting.

    Holding a concurrency slot until then keeps at most ``--concurrency`` new workflows
    queued for the workers, so a big import never floods them with task timeouts.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting: dict[str, asyncio.Future[None]] = {}

    async def wait(self, opportunity_id: str, timeout: float) -> None:  # noqa: ASYNC109
        landed = self.waiting.setdefault(opportunity_id, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(landed), timeout)
        finally:
            self.waiting.pop(opportunity_id, None)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(LANDING_POLL_S)
            if not self.waiting:
                continue
            ids = list(self.waiting)
            rows = await self.pool.fetch("SELECT id FROM opportunities WHERE id = ANY($1)", ids)
            for row in rows:
                landed = self.waiting.pop(row["id"], None)
                if landed is not None and not landed.done():
                    landed.set_result(None)


# -- the import ------------------------------------------------------------------------------------


def request_id_for(file_sha: str, opportunity_id: str) -> str:
    rid = f"import-{file_sha[:16]}-{opportunity_id}"
    if len(rid) > 120:
        rid = f"import-{file_sha[:16]}-{hashlib.sha256(opportunity_id.encode()).hexdigest()[:32]}"
    return rid


async def load_owners(pool: asyncpg.Pool) -> OwnerDirectory:
    rows = await pool.fetch("SELECT id, name, email, roles FROM users")
    return OwnerDirectory([Person(r["id"], r["name"], r["email"], list(r["roles"])) for r in rows])


class Importer:
    """One run over one export. ``report`` is live, so an interrupted run can still say how far it got."""

    def __init__(
        self,
        client: OpportunityClient,
        path: str | Path,
        *,
        mapping: ImportMapping | None = None,
        actor_id: str | None = None,
        concurrency: int = 16,
        limit: int | None = None,
        dry_run: bool = False,
        progress: ImportProgress | None = None,
        landing_timeout: float = LANDING_TIMEOUT_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        self.client = client
        self.export = read_export(path)
        self.mapping = mapping or detect(self.export.headers)
        self.columns = resolve_columns(self.mapping, self.export.headers)
        self.actor_id = actor_id
        self.concurrency = concurrency
        self.limit = limit
        self.progress = progress
        self.run_id = f"{self.export.sha256[:16]}-{self.mapping.digest()[:8]}"
        self.report = ImportReport(
            file=str(self.export.path),
            sha256=self.export.sha256,
            run_id=self.run_id,
            source=self.mapping.source,
            rows=len(self.export.rows),
            dry_run=dry_run,
        )
        self.checkpoint = Checkpoint(client.pool, self.run_id)
        self.landing = Landing(client.pool)
        self.landing_timeout = landing_timeout

    async def run(self) -> ImportReport:
        began = time.monotonic()
        now = datetime.now(UTC)
        started_at = (
            now if self.report.dry_run else await self.checkpoint.open(self.export, self.mapping.source, now)
        )
        done = await self.checkpoint.done()
        process = await self.client.process_for(self.mapping.process)
        owners = await load_owners(self.client.pool)
        converter = RowConverter(self.mapping, self.columns, process, owners, now, default_entered=started_at)
        actor = await self.client.actor(self.actor_id) if self.actor_id else None
        deals: list[DealRow] = []
        for line, raw in self.export.rows:
            converted = converter.convert(line, raw)
            if isinstance(converted, DealRow):
                deals.append(converted)
            else:
                self.report.problems.extend(converted)
        todo = [d for d in deals if d.opportunity_id not in done]
        self.report.already_imported = len(deals) - len(todo)
        if self.limit is not None:
            todo = todo[: max(self.limit, 0)]
        self.report.remaining = len(deals) - self.report.already_imported
        if self.progress:
            self.progress.start(len(deals), self.report.already_imported, self.report.skipped)
        try:
            if not self.report.dry_run:
                await self._create_all(todo, actor, owners, process.name)
        except (asyncio.CancelledError, ImportStalled):
            self.report.interrupted = True
            raise
        finally:
            self.report.elapsed_s = time.monotonic() - began
            if self.progress:
                self.progress.finish()
            if not self.report.dry_run:
                await asyncio.shield(self._save())
        return self.report

    async def _save(self) -> None:
        await self.checkpoint.flush()
        await self.checkpoint.finish(self.report)

    async def _create_all(
        self, todo: list[DealRow], actor: Actor | None, owners: OwnerDirectory, process_name: str
    ) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(deal: DealRow) -> None:
            try:
                await self._create(deal, actor or _owner_actor(owners, deal.owner_id), process_name)
            finally:
                gate.release()

        helpers = [
            asyncio.create_task(self.checkpoint.keep_flushing()),
            asyncio.create_task(self.landing.watch()),
        ]
        try:
            async with asyncio.TaskGroup() as group:
                for deal in todo:
                    await gate.acquire()
                    group.create_task(one(deal))
                    if len(self.checkpoint.pending) >= CHECKPOINT_BATCH:
                        await self.checkpoint.flush()
        except* ImportStalled as stalled:
            raise stalled.exceptions[0] from None
        finally:
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    async def _create(self, deal: DealRow, actor: Actor, process_name: str) -> None:
        await self._create_once(deal, actor, process_name)
        self.report.remaining -= 1

    async def _create_once(self, deal: DealRow, actor: Actor, process_name: str) -> None:
        problem: RowProblem | None = None
        for attempt in range(CREATE_ATTEMPTS):
            try:
                created = await self.client.create(
                    actor=actor,
                    name=deal.name,
                    account=deal.account,
                    owner_id=deal.owner_id,
                    opportunity_id=deal.opportunity_id,
                    amount=deal.amount,
                    close_date=deal.close_date,
                    stage=deal.stage,
                    stage_entered_at=deal.stage_entered_at,
                    fields=deal.fields,
                    process_name=process_name,
                    request_id=request_id_for(self.export.sha256, deal.opportunity_id),
                )
            except CommandRejected as exc:
                target = REJECTED_FIELD_COLUMN.get(exc.field_name or "")
                column = self.columns.get(target) if target else None
                problem = RowProblem(
                    deal.line, column, f"refused [{exc.rule}]: {exc.message}", deal.opportunity_id
                )
                break
            except (RPCError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
                problem = RowProblem(
                    deal.line,
                    None,
                    f"not imported, run again to retry: {type(exc).__name__}: {exc}",
                    deal.opportunity_id,
                )
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                await self._landed(deal)
                outcome = "created" if created.created else "existing"
                if created.created:
                    self.report.created += 1
                else:
                    self.report.existing += 1
                self.checkpoint.mark(deal, outcome)
                if self.progress:
                    self.progress.advance(True)
                return
        if problem is not None:
            self.report.problems.append(problem)
            if self.progress:
                self.progress.advance(False)

    async def _landed(self, deal: DealRow) -> None:
        try:
            await self.landing.wait(deal.opportunity_id, self.landing_timeout)
        except TimeoutError:
            raise ImportStalled(
                f"opportunity {deal.opportunity_id} (line {deal.line}) was started but not saved within "
                f"{self.landing_timeout:g}s: is a worker running on task queue {self.client.task_queue!r}? "
                "Start one (oppflow worker) and run the import again to continue"
            ) from None


def _owner_actor(owners: OwnerDirectory, owner_id: str) -> Actor:
    return Actor(id=owner_id, role=org_chart.primary_role(owners.by_id[owner_id].roles))
