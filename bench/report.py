"""The benchmark's output: a table per scenario, the targets, and one final JSON line with
every figure, the ratios and the machine."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

SAMPLE_COLUMNS = ("count", "per_s", "p50_ms", "p99_ms", "max_ms", "errors")
SUMMARY_KEYS = ("per_s", "p50_ms", "p99_ms", "seconds", "errors")


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def _sample_table(title: str, figures: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("variant")
    for column in SAMPLE_COLUMNS:
        table.add_column(column, justify="right")
    for variant, row in figures.items():
        table.add_row(variant, *(str(row.get(column, "")) for column in SAMPLE_COLUMNS))
    errors = [e for row in figures.values() for e in row.get("first_errors", [])]
    if errors:
        table.caption = "errors: " + "; ".join(errors)[:500]
    return table


def _flat_table(title: str, figures: dict[str, dict[str, Any]]) -> Table:
    """Variants as columns, figures as rows (for the storm and open-deal scenarios)."""
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    for variant in figures:
        table.add_column(variant, justify="right")
    names: list[str] = []
    for row in figures.values():
        names += [k for k in _flatten(row) if k not in names]
    flat = {variant: _flatten(row) for variant, row in figures.items()}
    for name in names:
        table.add_row(name, *(str(flat[v].get(name, "")) for v in figures))
    return table


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            wanted = {
                k: v for k, v in value.items() if k in ("per_s", "p50_ms", "p99_ms", "seconds", "errors")
            }
            out.update(_flatten(wanted, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_report(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=140)
    for name, result in results["scenarios"].items():
        figures = result["figures"]
        if name in ("stage-changes", "creation"):
            console.print(_sample_table(f"{name} {result['sizes']}", figures))
        else:
            console.print(_flat_table(f"{name} {result['sizes']}", figures))
        extra = {k: v for k, v in result.items() if k not in ("figures", "rounds", "targets", "sizes")}
        for key, value in extra.items():
            console.print(f"  {key}: {value}")
    targets = Table(title="targets", title_justify="left")
    targets.add_column("scenario")
    targets.add_column("target")
    targets.add_column("met")
    for name, result in results["scenarios"].items():
        for target, met in result["targets"].items():
            targets.add_row(name, target, "yes" if met else "MISSED")
    console.print(targets)
    console.print(f"machine: {results['machine']}")


def json_line(results: dict[str, Any]) -> str:
    return json.dumps(results, default=str, separators=(",", ":"))


def markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables (for docs/performance.md):
    ``python -m bench | tail -1 | python -c 'import bench.report as r, json, sys;
    print(r.markdown(json.load(sys.stdin)))'``."""
    out: list[str] = []
    for name, result in results["scenarios"].items():
        figures = result["figures"]
        flat = {variant: _flatten(row) for variant, row in figures.items()}
        keys: list[str] = []
        for row in flat.values():
            keys += [k for k in row if k not in keys]
        out.append(f"**{name}** {result['sizes']}\n")
        out.append("| figure | " + " | ".join(figures) + " |")
        out.append("| --- |" + " --- |" * len(figures))
        for key in keys:
            out.append(f"| {key} | " + " | ".join(str(flat[v].get(key, "")) for v in figures) + " |")
        out.append("")
        out.append(f"ratios: {result['ratios']}  ")
        met = (f"{t}: {'met' if ok else 'MISSED'}" for t, ok in result["targets"].items())
        out.append("targets: " + ", ".join(met))
        out.append("")
    return "\n".join(out)
