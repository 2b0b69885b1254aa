"""DeleteStudy and DeleteSeries: a DICOMweb DELETE of a study or series queues a long-running operation
that removes its instances shard by shard; the study or series is gone when the operation is done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from dicomlake.errors import NotFound
from dicomlake.operations import records
from dicomlake.operations.model import Kind, Operation, ShardResult
from dicomlake.services import Services
from dicomlake.store import instances
from dicomlake.store.catalog import StoreRef

DELETE_STUDY = records.DELETE_STUDY
DELETE_SERIES = records.DELETE_SERIES
SHARD_SIZE = 500


def start(services: Services, store: StoreRef, study: str, series_uid: str | None) -> dict[str, Any]:
    """Queue the deletion of a study or series that has instances (NotFound otherwise); its JSON, not done."""
    if not instances.keys_of(services.db, store, study, series_uid)[:1]:
        raise NotFound(f"series {study}/{series_uid} not found" if series_uid else f"study {study} not found")
    method = DELETE_SERIES if series_uid else DELETE_STUDY
    return records.create_pending(services, store, method, {"study": study, "series": series_uid})


def plan(services: Services, operation: Operation) -> Iterator[list[instances.Key]]:
    request = operation.request
    keys = instances.keys_of(services.db, operation.store, request["study"], request["series"])
    for start_at in range(0, len(keys), SHARD_SIZE):
        yield keys[start_at : start_at + SHARD_SIZE]


def process(
    services: Services, operation: Operation, keys: list[instances.Key], heartbeat: Callable[[], None]
) -> ShardResult:
    # Instances already gone (deleted twice, or by an earlier attempt at this shard) count as deleted.
    instances.delete_keys(services.db, services.blobs, operation.store, keys)
    return ShardResult(success=len(keys))


KIND = Kind(plan=plan, process=process, response=records.EMPTY_RESPONSE)
