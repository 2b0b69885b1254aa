"""What the operations runner hands to the code of one kind of operation, and what it gets back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dicomlake.services import Services
from dicomlake.store.catalog import StoreRef

T = TypeVar("T")
HEARTBEAT_SECONDS = 5.0


@dataclass(frozen=True)
class Operation:
    """A running operation as its worker sees it."""

    pk: int
    method: str
    store: StoreRef
    request: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.store.dataset.name}/operations/{self.pk}"


@dataclass
class ShardResult:
    success: int = 0
    failure: int = 0
    # Cloud Logging LogEntry JSON, one per failed unit; stored with the shard's counts, so exactly once.
    logs: list[dict[str, Any]] = field(default_factory=list)


class LeaseLost(Exception):
    """Another worker took over this shard (ours was presumed dead): drop the work, count nothing."""


@dataclass(frozen=True)
class Kind:
    """One kind of long-running operation. `plan` yields the shard payloads in a stable order (a planner
    that resumes after a crash yields them again); `process` does one shard, calling `heartbeat` between
    steps (it raises LeaseLost)."""

    plan: Callable[[Services, Operation], Iterator[Any]]
    process: Callable[[Services, Operation, Any, Callable[[], None]], ShardResult]
    response: dict[str, Any]


def map_in_pool(
    services: Services, heartbeat: Callable[[], None], function: Callable[..., T], calls: list[tuple[Any, ...]]
) -> list[T]:
    """Run `function(*args)` for each of `calls` in the services' process pool (all cores) and return the
    results in order, renewing the shard's lease while waiting."""
    try:
        futures = [services.cpu_pool.submit(function, *args) for args in calls]
        results = []
        for future in futures:
            while True:
                try:
                    results.append(future.result(timeout=HEARTBEAT_SECONDS))
                    break
                except TimeoutError:
                    heartbeat()
        return results
    except BrokenProcessPool:
        # A pool process died (killed, out of memory): start afresh next time; this shard is retried.
        services.discard_pool()
        raise
