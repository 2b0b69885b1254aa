"""ImportDicomData: `POST {store}:import` stores every object a `gs://` wildcard URI matches, as a
long-running operation. The listing is planned into shards of object names; each file that is not a
storable DICOM instance counts as a failure with one ImportDicomLogEntry, and duplicates of stored
instances are skipped and count as successes (spec §6.3, §6.12)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import obstore

from dicomlake.errors import InvalidArgument
from dicomlake.operations import logs, records
from dicomlake.operations.model import Kind, Operation, ShardResult
from dicomlake.services import Services
from dicomlake.storage.buckets import ObjectPattern, parse_pattern
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import STORAGE_CLASSES, Failed, store_instances

IMPORT = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
RESPONSE = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"}
# Object names per shard: the unit one worker claims and a crash repeats.
SHARD_SIZE = 200
# Files per store_instances call: one index transaction each, and a heartbeat between them.
BATCH_SIZE = 50


def start(services: Services, store: StoreRef, body: dict[str, Any]) -> dict[str, Any]:
    """Check the request now (a bad one creates nothing) and queue the operation; its JSON, not done."""
    source = body.get("gcsSource")
    uri = source.get("uri") if isinstance(source, dict) else None
    if not isinstance(uri, str) or not uri:
        raise InvalidArgument("gcsSource.uri is required, e.g. gs://BUCKET/DIR/**.dcm")
    settings = body.get("blobStorageSettings") or {}
    storage_class = settings.get("blobStorageClass") if isinstance(settings, dict) else None
    if storage_class in (None, "", "BLOB_STORAGE_CLASS_UNSPECIFIED"):
        storage_class = "STANDARD"
    if storage_class not in STORAGE_CLASSES:
        raise InvalidArgument(f"invalid blobStorageClass {storage_class!r}: use one of {', '.join(STORAGE_CLASSES)}")
    pattern = parse_pattern(uri)
    services.buckets.open(pattern.scheme, pattern.bucket)
    request = {"gcsSource": {"uri": uri}, "blobStorageSettings": {"blobStorageClass": storage_class}}
    return records.create_pending(services.db, store, IMPORT, request)


def plan(services: Services, operation: Operation) -> Iterator[list[str]]:
    """The matching object names in listing order, SHARD_SIZE at a time; never the whole listing in memory."""
    shard: list[str] = []
    for info in services.buckets.list(_pattern(operation)):
        shard.append(info.name)
        if len(shard) == SHARD_SIZE:
            yield shard
            shard = []
    if shard:
        yield shard


def process(services: Services, operation: Operation, names: list[str], heartbeat: Callable[[], None]) -> ShardResult:
    pattern = _pattern(operation)
    storage_class = operation.request["blobStorageSettings"]["blobStorageClass"]
    result = ShardResult()
    for start_at in range(0, len(names), BATCH_SIZE):
        heartbeat()
        sources: list[str] = []
        datas: list[bytes] = []
        for name in names[start_at : start_at + BATCH_SIZE]:
            uri = _object_uri(pattern, name)
            try:
                datas.append(services.buckets.get(uri))
            except (FileNotFoundError, obstore.exceptions.NotFoundError):
                # Deleted between listing and reading.
                result.failure += 1
                result.logs.append(_log_entry(operation, uri, 5, f"object {uri} no longer exists"))
                continue
            sources.append(uri)
        outcomes = store_instances(services.db, services.blobs, operation.store, datas, None, storage_class)
        for uri, outcome in zip(sources, outcomes, strict=True):
            if isinstance(outcome, Failed) and not outcome.duplicate:
                result.failure += 1
                message = f"{uri} is not a storable DICOM file: {outcome.detail}"
                result.logs.append(_log_entry(operation, uri, 3, message))
            else:
                result.success += 1
    return result


def _pattern(operation: Operation) -> ObjectPattern:
    return parse_pattern(operation.request["gcsSource"]["uri"])


def _object_uri(pattern: ObjectPattern, name: str) -> str:
    if pattern.scheme == "file":
        return f"file://{name}"
    return f"{pattern.scheme}://{pattern.bucket}/{name}"


def _log_entry(operation: Operation, source: str, code: int, message: str) -> dict[str, Any]:
    payload = {"@type": "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry", "source": source}
    return logs.entry(operation, "import_dicom", payload, code, message)


KIND = Kind(plan=plan, process=process, response=RESPONSE)
