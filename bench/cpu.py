"""CPU time spent by each part of the stack while a scenario runs: where a change's cost goes.

Every part runs on the same machine, so throughput is bounded by their sum; the split says
which part to make cheaper (the Temporal server, a worker, PostgreSQL, the callers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def _part(process: psutil.Process) -> str | None:
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except psutil.Error:
        return None
    if "bench.worker_process" in command:
        return "worker (oppflow)" if "--kind oppflow" in command else "worker (baseline)"
    if name.startswith("postgres"):
        return "postgres"
    if "temporal" in name or "start-dev" in command:
        return "temporal server"
    return None


def _stack_processes(workdir: Path) -> list[psutil.Process]:
    """The bench's children, and PostgreSQL (its server detaches from the bench)."""
    found = psutil.Process().children(recursive=True)
    for process in psutil.process_iter(["cmdline"]):
        if str(workdir) in " ".join(process.info["cmdline"] or []) and process.name().startswith("postgres"):
            found += [process, *process.children(recursive=True)]
    return found


def _cpu_seconds(workdir: Path) -> dict[str, float]:
    me = psutil.Process()
    totals: dict[str, float] = {"callers (bench)": sum(me.cpu_times()[:2])}
    for child in _stack_processes(workdir):
        part = _part(child)
        if part is None:
            continue
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        totals[part] = totals.get(part, 0.0) + times.user + times.system
    return totals


@dataclass
class CpuSplit:
    seconds: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def pooled(splits: list[CpuSplit]) -> CpuSplit:
        total: dict[str, float] = {}
        for split in splits:
            for part, seconds in split.seconds.items():
                total[part] = total.get(part, 0.0) + seconds
        return CpuSplit(total)

    def per_call_ms(self, calls: int) -> dict[str, float]:
        """CPU milliseconds per call, by part (every part found running; an idle one shows 0.0:
        a few light statements can stay under the kernel's 10 ms accounting tick)."""
        if not calls:
            return {}
        spent = {part: round(s * 1000 / calls, 1) for part, s in self.seconds.items()}
        return spent | {"total": round(sum(self.seconds.values()) * 1000 / calls, 1)}


@asynccontextmanager
async def cpu_split(workdir: Path) -> AsyncIterator[CpuSplit]:
    """CPU seconds each part used inside the block (a part that restarted counts from 0;
    PostgreSQL connections that ended inside the block are not counted)."""
    split = CpuSplit()
    before = _cpu_seconds(workdir)
    yield split
    after = _cpu_seconds(workdir)
    split.seconds = {part: max(0.0, after[part] - before.get(part, 0.0)) for part in after}
