"""Refused commands waiting to be written to ``rejected_commands``.

Update validators run on the worker, never on replay, and may not do I/O; they drop
the refusal here (a process-wide queue, passed through the workflow sandbox) and the
worker's audit writer flushes it to Postgres. The audit is best effort: a worker killed
before a flush loses the refusals of its last moments, never a command.
"""

from __future__ import annotations

from collections import deque

from sales.records import RejectedCommand

_pending: deque[RejectedCommand] = deque(maxlen=100_000)


def push(rejection: RejectedCommand) -> None:
    _pending.append(rejection)


def drain(limit: int = 500) -> list[RejectedCommand]:
    items: list[RejectedCommand] = []
    while _pending and len(items) < limit:
        items.append(_pending.popleft())
    return items


def requeue(items: list[RejectedCommand]) -> None:
    _pending.extendleft(reversed(items))
