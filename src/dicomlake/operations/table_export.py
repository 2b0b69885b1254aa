"""ExportDicomData to a table: `POST {store}:export` with `bigqueryDestination {tableUri, writeDisposition,
force}` writes one row of the BigQuery DICOM schema per instance (or per instance a filter file names),
flattened from the DICOM JSON kept at ingest, never from the blobs. `bq://P.D.T` names a table of the
process's destination (`warehouse/destinations.py`: the embedded tables, or a BigQuery API); the dataset must
exist, the table is created. What an existing table allows (spec §2.4, §6.9):

| writeDisposition | table absent | table empty | table with rows |
|---|---|---|---|
| unset, force unset or false | created | ALREADY_EXISTS | ALREADY_EXISTS |
| unset, force true | created | written | emptied, then written |
| WRITE_EMPTY | created | written | FAILED_PRECONDITION |
| WRITE_TRUNCATE | created | written | emptied, then written |
| WRITE_APPEND | created | written | appended to |
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dicomlake.dicom.flatten import FlatRow, ServiceColumns, flatten
from dicomlake.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from dicomlake.operations import exporting, records
from dicomlake.operations.model import Kind, Operation, ShardResult, map_in_pool
from dicomlake.services import Services, in_worker
from dicomlake.storage.db import instances, operation_shards
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import Key, select_by_keys
from dicomlake.warehouse import dicom_tables
from dicomlake.warehouse.embedded import TableRef
from dicomlake.warehouse.schema import Field

EXPORT_BQ = "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData_bq"
DISPOSITIONS = ("WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND")
# Instances per shard (the unit a worker claims and a crash repeats; one warehouse transaction), and per
# cpu_pool task.
SHARD_SIZE = 5000
BATCH_SIZE = 1000


def start(services: Services, store: StoreRef, body: dict[str, Any]) -> dict[str, Any]:
    """Check the request now (a bad one creates nothing) and queue the operation; its JSON, not done."""
    destination = body.get("bigqueryDestination")
    if not isinstance(destination, dict):
        raise InvalidArgument("bigqueryDestination must be an object with tableUri")
    uri = destination.get("tableUri")
    if not isinstance(uri, str) or not uri.startswith("bq://") or len(uri) > 2000:
        raise InvalidArgument(f"invalid tableUri {uri!r}: expected bq://PROJECT_ID.DATASET_ID.TABLE_ID")
    TableRef.parse(uri)
    disposition = destination.get("writeDisposition") or "WRITE_DISPOSITION_UNSPECIFIED"
    if disposition not in ("WRITE_DISPOSITION_UNSPECIFIED", *DISPOSITIONS):
        raise InvalidArgument(f"invalid writeDisposition {disposition!r}: use one of {', '.join(DISPOSITIONS)}")
    force = destination.get("force", False)
    if not isinstance(force, bool):
        raise InvalidArgument("bigqueryDestination.force must be true or false")
    if destination.get("schemaJson") is not None:
        raise InvalidArgument("schemaJson is not supported: dicomlake exports the flattened schema")
    request: dict[str, Any] = {
        "bigqueryDestination": {"tableUri": uri, "writeDisposition": disposition, "force": force}
    }
    filter_uri = exporting.filter_config(services, body)
    if filter_uri:
        request["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
    return records.create_pending(services, store, EXPORT_BQ, request)


def plan(services: Services, operation: Operation) -> Iterator[list[exporting.Unit]]:
    # A planner that resumes after a crash finds shards written: the table was prepared then, and rows of
    # finished shards are in it, so it must not be checked or emptied again.
    with services.db.read() as conn:
        resumed = conn.execute(
            sa.select(operation_shards.c.shard).where(operation_shards.c.operation_pk == operation.pk).limit(1)
        ).first()
    if resumed is None:
        _prepare(services, operation)
    return exporting.shards(exporting.units(services, operation), SHARD_SIZE)


def _prepare(services: Services, operation: Operation) -> None:
    destination = operation.request["bigqueryDestination"]
    tables = services.tables
    ref = TableRef.parse(destination["tableUri"])
    has_rows = tables.has_rows(ref)  # NOT_FOUND when the dataset does not exist
    disposition = destination["writeDisposition"]
    if has_rows is None:
        tables.ensure(ref)
        return
    if disposition == "WRITE_DISPOSITION_UNSPECIFIED":
        if not destination["force"]:
            raise AlreadyExists(
                f"table {destination['tableUri']} already exists: set writeDisposition (or force) to write to it"
            )
        disposition = "WRITE_TRUNCATE"
    if disposition == "WRITE_EMPTY" and has_rows:
        raise FailedPrecondition(f"table {destination['tableUri']} is not empty and writeDisposition is WRITE_EMPTY")
    if disposition == "WRITE_TRUNCATE" and has_rows:
        tables.truncate(ref)


def process(
    services: Services, operation: Operation, batch: list[exporting.Unit], heartbeat: Callable[[], None]
) -> ShardResult:
    """Flatten and fit the shard's instances in the pool, a batch per process, and append the batches here in
    one call, which the destination makes atomic: a shard repeated after a crash writes its rows once."""
    result = ShardResult()
    keys = exporting.missing_units(operation, batch, result)
    if not keys:
        return result
    tables = services.tables
    ref = TableRef.parse(operation.request["bigqueryDestination"]["tableUri"])
    schema = tables.known_schema(ref)
    calls = [(operation.store, keys[i : i + BATCH_SIZE], schema) for i in range(0, len(keys), BATCH_SIZE)]
    # Every batch is fitted before the table is held, and all are appended at once: the table is held only to
    # append and commit, while the pool works on other shards.
    parts = map_in_pool(services, heartbeat, fit_rows, calls)
    tables.append(ref, parts, lambda i: flat_rows(services, calls[i][0], calls[i][1]), f"export/{operation.pk}")
    # Instances deleted since the plan was made have no row to write; they count as done.
    result.success += len(keys)
    return result


def fit_rows(store: StoreRef, keys: list[Key], schema: list[Field]) -> dicom_tables.Fitted:
    """The rows of `keys` fitted to `schema` (run in a `cpu_pool` process)."""
    # A batch of rows makes a great many containers and no cycles: the collector would walk them again and
    # again while they pile up, and they are freed by reference counting once fitted.
    gc.disable()
    try:
        return dicom_tables.fit(schema, flat_rows(in_worker(), store, keys))
    finally:
        gc.enable()


def flat_rows(services: Services, store: StoreRef, keys: list[Key]) -> list[FlatRow]:
    """The instances of `keys` flattened from their stored DICOM JSON (those deleted meanwhile left out)."""
    wanted = set(keys)
    extra = (
        instances.c.metadata,
        instances.c.file_meta,
        instances.c.storage_class,
        instances.c.blob_size,
        instances.c.created,
    )
    with services.db.read() as conn:
        rows = [row for row in conn.execute(select_by_keys(store, keys, *extra)) if tuple(row[:3]) in wanted]
    return [
        flatten(
            row.metadata,
            ServiceColumns(datetime.fromtimestamp(row.created, UTC), row.storage_class, row.blob_size),
            file_meta=row.file_meta,
        )
        for row in rows
    ]


KIND = Kind(plan=plan, process=process, response=exporting.RESPONSE)
