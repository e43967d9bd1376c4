"""A refused command: which rule said no, and why, in words a rep understands."""

from __future__ import annotations


class CommandRefused(Exception):
    """Raised by the domain rules; the workflow turns it into a rejected update."""

    def __init__(self, rule: str, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.missing = list(missing or [])

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"
