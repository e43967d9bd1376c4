"""One SalesProcess object per published version in a worker process (passed through the
workflow sandbox, so every deal's workflow sees the same dict). Processes are frozen and
versions immutable, so sharing cannot change what a workflow computes."""

from __future__ import annotations

from sales.process import SalesProcess

_by_version: dict[tuple[str, int, int], SalesProcess] = {}


def intern(process: SalesProcess) -> SalesProcess:
    # The hash guards against two different definitions carrying the same version number.
    key = (process.name, process.version, hash(process.model_dump_json()))
    return _by_version.setdefault(key, process)
