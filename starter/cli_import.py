"""``oppflow import FILE`` and ``oppflow chart KIND --out FILE``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from starter.importer import ImportReport

PLAIN_EVERY_S = 5.0


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "… rows/s", style="progress.data.speed")


class RichProgress:
    """A live bar on a terminal: rows done, rows/s, ETA and errors so far."""

    def __init__(self, console: Console) -> None:
        self.errors = 0
        self.bar = Progress(
            TextColumn("[bold]importing"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[red]{task.fields[errors]} errors"),
            console=console,
        )
        self.task = self.bar.add_task("import", total=None, errors=0, visible=False)

    def start(self, total: int, already_done: int, errors: int) -> None:
        self.errors = errors
        self.bar.update(self.task, total=total, completed=already_done, errors=errors, visible=True)
        self.bar.start()

    def advance(self, ok: bool) -> None:
        if not ok:
            self.errors += 1
        self.bar.update(self.task, advance=1, errors=self.errors)

    def finish(self) -> None:
        self.bar.stop()


class PlainProgress:
    """One line every few seconds when the output is a file or a pipe."""

    def __init__(self, every_s: float = PLAIN_EVERY_S) -> None:
        self.every_s = every_s
        self.total = self.done = self.errors = self.counted = 0
        self.began = self.last = time.monotonic()

    def start(self, total: int, already_done: int, errors: int) -> None:
        self.total, self.done, self.errors = total, already_done, errors
        self.began = self.last = time.monotonic()
        self._line()

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.counted += 1
        self.errors += 0 if ok else 1
        if time.monotonic() - self.last >= self.every_s:
            self._line()

    def finish(self) -> None:
        self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.began
        rate = self.counted / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        print(
            f"import: {self.done}/{self.total} rows, {rate:.0f} rows/s, ETA {eta}, {self.errors} errors",
            flush=True,
        )


def summary_lines(report: ImportReport) -> list[str]:
    c = report.as_json()["counts"]
    state = "dry run" if report.dry_run else "interrupted" if report.interrupted else "done"
    lines = [
        f"import {state}: {report.file} ({report.source} mapping)",
        f"  rows {c['rows']}: created {c['created']}, already existed {c['existing']}, "
        f"imported by an earlier run {c['already_imported']}, skipped {c['skipped']}, "
        f"left to import {c['remaining']}",
        f"  {report.elapsed_s:.1f}s, {report.rows_per_s} rows/s",
    ]
    for problem in sorted(report.problems, key=lambda p: p.line)[:20]:
        lines.append(f"  line {problem.line}: {problem.column or '-'}: {problem.reason}")
    if len(report.problems) > 20:
        lines.append(f"  ... {len(report.problems) - 20} more in the report file")
    if report.remaining and not report.dry_run:
        lines.append("  run the same command again to continue")
    return lines


def default_report_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.import-report.json")


async def import_deals(
    path: Path,
    mapping: Path | None,
    actor: str | None,
    concurrency: int,
    limit: int | None,
    dry_run: bool,
    report: Path | None,
) -> int:
    """Run one import with progress, write the report, print the summary; the exit code."""
    from starter.cli import connected, console
    from starter.import_mapping import load_mapping
    from starter.importer import Importer, ImportStalled

    chosen = load_mapping(mapping) if mapping else None
    progress: Any = RichProgress(console) if console.is_terminal else PlainProgress()
    async with connected() as client:
        importer = Importer(
            client,
            path,
            mapping=chosen,
            actor_id=actor,
            concurrency=concurrency,
            limit=limit,
            dry_run=dry_run,
            progress=progress,
        )
        exit_code, stalled = 0, None
        try:
            await importer.run()
        except asyncio.CancelledError:
            exit_code = 130
        except ImportStalled as exc:
            exit_code, stalled = 1, exc
    result = importer.report
    report_path = report or default_report_path(path)
    report_path.write_text(json.dumps(result.as_json(), indent=2, default=str) + "\n", encoding="utf-8")
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"  report: {report_path}")
    if stalled:
        typer.echo(f"error: {stalled}", err=True)
    return exit_code or (2 if result.problems else 0)


def register(app: typer.Typer) -> None:
    """Add the import and chart commands to the ``oppflow`` app."""
    from starter.cli import resolve_database_url, run

    @app.command("import")
    def import_cmd(
        path: Annotated[Path, typer.Argument(help="Salesforce or HubSpot export (.csv or .xlsx)")],
        mapping: Annotated[
            Path | None, typer.Option("--mapping", help="YAML mapping for other exports")
        ] = None,
        actor: Annotated[
            str | None, typer.Option("--actor", help="who imports (default: each deal's owner)")
        ] = None,
        concurrency: Annotated[
            int, typer.Option("--concurrency", min=1, max=256, help="deals started at once")
        ] = 16,
        limit: Annotated[
            int | None, typer.Option("--limit", min=0, help="import at most N rows this run")
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="check every row, create nothing")] = False,
        report: Annotated[
            Path | None, typer.Option("--report", help="JSON report (default FILE.import-report.json)")
        ] = None,
    ) -> None:
        """Import opportunities from a CRM export; safe to interrupt and to run again."""
        # The exit code is raised here, outside `run`, which turns exceptions into one-line errors.
        code = run(import_deals)(path, mapping, actor, concurrency, limit, dry_run, report)
        if code:
            raise typer.Exit(code)

    @app.command("chart")
    @run
    async def chart_cmd(
        kind: Annotated[str, typer.Argument(help="funnel | time-in-stage | escalations")],
        out: Annotated[Path, typer.Option("--out", help="FILE.png or FILE.svg")],
        owner: Annotated[list[str] | None, typer.Option("--owner", help="only these owners' deals")] = None,
        weeks: Annotated[int, typer.Option("--weeks", min=1, max=104, help="escalations: weeks shown")] = 12,
        process: Annotated[
            str | None, typer.Option("--process", help="stage order from this process")
        ] = None,
    ) -> None:
        """Draw a pipeline chart to a PNG or SVG file."""
        from db.pool import create_pool
        from starter.charts import CHART_KINDS, Scope, render_chart
        from starter.settings import get_settings

        if kind not in CHART_KINDS:
            raise ValueError(f"chart must be one of {', '.join(CHART_KINDS)} (got {kind!r})")
        fmt = out.suffix.lower().lstrip(".")
        if fmt not in ("png", "svg"):
            raise ValueError(f"--out must end in .png or .svg (got {out.name})")
        scope = Scope(owner_ids=owner or None, weeks=weeks, **({"process_name": process} if process else {}))
        pool = await create_pool(resolve_database_url(get_settings()), 1, 2)
        try:
            image = await render_chart(kind, pool, fmt, scope)  # type: ignore[arg-type]
        finally:
            await pool.close()
        out.write_bytes(image)
        typer.echo(f"wrote {out} ({len(image):,} bytes)")
