"""ImportDicomData: `POST {store}:import` stores every object a `gs://` wildcard URI matches, as a
long-running operation. The listing is planned into shards of object names; each file that is not a
storable DICOM instance counts as a failure with one ImportDicomLogEntry, and duplicates of stored
instances are skipped and count as successes (spec §6.3, §6.12)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import obstore

from dicomlake.errors import DicomlakeError, InvalidArgument
from dicomlake.operations import records
from dicomlake.operations.model import Kind, Operation, ShardResult, map_in_pool
from dicomlake.services import Services, in_worker
from dicomlake.storage.buckets import ObjectPattern, parse_pattern
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import STORAGE_CLASSES, Failed, store_instances

IMPORT = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
RESPONSE = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"}
# Object names per shard: the unit one worker claims and a crash repeats.
SHARD_SIZE = 200
# Files per store_instances call: one index transaction each, run by one cpu_pool process.
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
    services.buckets.check(pattern.scheme, pattern.bucket, pattern.prefix, uri)
    request = {"gcsSource": {"uri": uri}, "blobStorageSettings": {"blobStorageClass": storage_class}}
    return records.create_pending(services, store, IMPORT, request)


def plan(services: Services, operation: Operation) -> Iterator[list[str]]:
    """The matching object names in listing order, SHARD_SIZE at a time; never the whole listing in memory."""
    services.warm_pool()
    shard: list[str] = []
    for info in services.buckets.list(_pattern(operation)):
        shard.append(info.name)
        if len(shard) == SHARD_SIZE:
            yield shard
            shard = []
    if shard:
        yield shard


def process(services: Services, operation: Operation, names: list[str], heartbeat: Callable[[], None]) -> ShardResult:
    """Store the shard's files in batches, on every core: each batch goes to a `cpu_pool` process, which
    reads, parses and stores it exactly as a STOW would, with its own index transaction."""
    pattern = _pattern(operation)
    storage_class = operation.request["blobStorageSettings"]["blobStorageClass"]
    uris = [_object_uri(pattern, name) for name in names]
    calls = [(operation.store, uris[i : i + BATCH_SIZE], storage_class) for i in range(0, len(uris), BATCH_SIZE)]
    failures = [failure for batch in map_in_pool(services, heartbeat, store_files, calls) for failure in batch]
    result = ShardResult(success=len(uris) - len(failures), failure=len(failures))
    result.logs = [_log_entry(operation, uri, code, message) for uri, code, message in failures]
    return result


def store_files(store: StoreRef, uris: list[str], storage_class: str) -> list[tuple[str, int, str]]:
    """Store the files at `uris` (run in a `cpu_pool` process); (uri, google.rpc code, message) of each that
    failed. Duplicates of stored instances are not failures."""
    services = in_worker()
    failures: list[tuple[str, int, str]] = []
    sources: list[str] = []
    datas: list[bytes] = []
    for uri in uris:
        try:
            datas.append(services.buckets.get(uri))
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            # Deleted between listing and reading.
            failures.append((uri, 5, f"object {uri} no longer exists"))
            continue
        except DicomlakeError as exc:
            # A link, FIFO or device in a local bucket, a name no bucket allows: this file only.
            failures.append((uri, exc.code, exc.message))
            continue
        sources.append(uri)
    outcomes = store_instances(services.db, services.blobs, store, datas, None, storage_class)
    for uri, outcome in zip(sources, outcomes, strict=True):
        if isinstance(outcome, Failed) and not outcome.duplicate:
            failures.append((uri, 3, f"{uri} is not a storable DICOM file: {outcome.detail}"))
    return failures


def _pattern(operation: Operation) -> ObjectPattern:
    return parse_pattern(operation.request["gcsSource"]["uri"])


def _object_uri(pattern: ObjectPattern, name: str) -> str:
    if pattern.scheme == "file":
        return f"file://{name}"
    return f"{pattern.scheme}://{pattern.bucket}/{name}"


def _log_entry(operation: Operation, source: str, code: int, message: str) -> dict[str, Any]:
    payload = {"@type": "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry", "source": source}
    return records.log_entry(operation, "import_dicom", payload, code, message)


KIND = Kind(plan=plan, process=process, response=RESPONSE)
