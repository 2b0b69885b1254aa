"""ExportDicomData to a bucket: `POST {store}:export` with `gcsDestination {uriPrefix, mimeType}` writes
every instance (or those a filter file names) as objects `{uriPrefix}/{study}/{series}/{instance}.dcm`,
or one object per frame — `{instance}/{frame}` for multi-frame instances — for the per-frame media
types (raw frames, JPEG, PNG). An instance that cannot be written in the requested form counts as a
failure with one ExportDicomLogEntry; a malformed filter file ends the operation with INVALID_ARGUMENT
before any instance is written (spec §2.6, §6.3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import obstore
import sqlalchemy as sa

from dicomlake.dicom import pixels
from dicomlake.dicom.uids import InvalidUid, normalize_uid
from dicomlake.errors import DicomlakeError, InvalidArgument, NotFound
from dicomlake.operations import records
from dicomlake.operations.model import Kind, Operation, ShardResult, map_in_pool
from dicomlake.services import Services, in_worker
from dicomlake.storage.blobs import NotFoundError
from dicomlake.storage.buckets import parse_object, parse_prefix
from dicomlake.storage.db import instances
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import KEY_COLUMNS, Key, keys_of, select_by_keys

EXPORT = "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
RESPONSE = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ExportDicomDataResponse"}
LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ExportDicomLogEntry"
# Instances per shard (the unit one worker claims and a crash repeats), and per cpu_pool task.
SHARD_SIZE = 200
BATCH_SIZE = 25

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# The transfer syntaxes Google lists for `application/dicom` exports (spec §2.6); "*" keeps the bytes as stored.
DICOM_SYNTAXES = frozenset(
    ["*", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5"]
    + [f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 110, 111, 112, 201, 202, 203)]
    + ["1.2.840.10008.1.2.8.1"]
)

_FILTER_LEVELS = (("studies", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("instances", "SOPInstanceUID"))


@dataclass(frozen=True)
class Format:
    """What each instance becomes: the whole file (`per_frame` False) or one object per frame."""

    kind: str  # "dicom", "frames", "jpeg" or "png"
    transfer_syntax: str
    extension: str

    @property
    def per_frame(self) -> bool:
        return self.kind != "dicom"


def parse_mime_type(mime_type: str | None) -> Format:
    """`gcsDestination.mimeType` → Format; INVALID_ARGUMENT for a type or syntax the export does not offer."""
    text = (mime_type or "").strip()
    media, _, params = text.partition(";")
    media = media.strip().lower()
    syntax: str | None = None
    for param in filter(None, (p.strip() for p in params.split(";"))):
        key, _, value = param.partition("=")
        if key.strip().lower() != "transfer-syntax":
            raise InvalidArgument(f"invalid mimeType {text!r}: unknown parameter {key.strip()!r}")
        syntax = value.strip().strip('"')
    if media in ("", "application/dicom"):
        syntax = syntax or "*"
        if syntax not in DICOM_SYNTAXES:
            raise InvalidArgument(f"invalid mimeType {text!r}: transfer syntax {syntax} cannot be exported")
        return Format("dicom", syntax, ".dcm")
    if media == "application/octet-stream":
        syntax = syntax or EXPLICIT_LE
        if syntax not in ("*", EXPLICIT_LE):
            raise InvalidArgument(f"invalid mimeType {text!r}: raw frames are exported as '*' or {EXPLICIT_LE}")
        return Format("frames", syntax, "")
    if media == "image/jpeg" and syntax in (None, JPEG_BASELINE):
        return Format("jpeg", JPEG_BASELINE, ".jpg")
    if media == "image/png" and syntax is None:
        return Format("png", "", ".png")
    raise InvalidArgument(
        f"invalid mimeType {text!r}: use application/dicom (optionally with transfer-syntax), "
        "application/octet-stream, image/jpeg or image/png"
    )


def start(services: Services, store: StoreRef, body: dict[str, Any]) -> dict[str, Any]:
    """Check the request now (a bad one creates nothing) and queue the operation; its JSON, not done."""
    destination = body.get("gcsDestination")
    if not isinstance(destination, dict):
        raise InvalidArgument("gcsDestination is required, e.g. {'uriPrefix': 'gs://BUCKET/DIR'}")
    prefix = destination.get("uriPrefix")
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgument("gcsDestination.uriPrefix is required, e.g. gs://BUCKET/DIR")
    services.buckets.check(*parse_prefix(prefix), prefix)
    mime_type = destination.get("mimeType") or ""
    if not isinstance(mime_type, str):
        raise InvalidArgument("gcsDestination.mimeType must be a string")
    parse_mime_type(mime_type)
    request: dict[str, Any] = {"gcsDestination": {"uriPrefix": prefix, "mimeType": mime_type}}
    filter_uri = filter_config(services, body)
    if filter_uri:
        request["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
    return records.create_pending(services, store, EXPORT, request)


def filter_config(services: Services, body: dict[str, Any]) -> str | None:
    """The filter file an export request names (`filterConfig.resourcePathsGcsUri`), checked as an object name
    in a bucket this server may read; None when there is none."""
    config = body.get("filterConfig")
    if config is None:
        return None
    uri = config.get("resourcePathsGcsUri") if isinstance(config, dict) else None
    if not isinstance(uri, str) or not uri:
        raise InvalidArgument("filterConfig.resourcePathsGcsUri must name the filter file, e.g. gs://BUCKET/filter.txt")
    services.buckets.check(*parse_object(uri), uri)
    return uri


# ---- planning ---------------------------------------------------------------------------------


Unit = list[str] | str  # an instance's UID triple, or the resource path of a filter line that names nothing


def plan(services: Services, operation: Operation) -> Iterator[list[Unit]]:
    return shards(units(services, operation), SHARD_SIZE)


def shards(items: Iterator[Unit], size: int) -> Iterator[list[Unit]]:
    shard: list[Unit] = []
    for unit in items:
        shard.append(unit)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def units(services: Services, operation: Operation) -> Iterator[Unit]:
    """What an export covers: instance UID triples in key order, or as a filter file lists them; a filter
    line that names nothing stored becomes its own unit (its resource path) that fails with a log entry."""
    filter_uri = operation.request.get("filterConfig", {}).get("resourcePathsGcsUri")
    return _filtered(services, operation, filter_uri) if filter_uri else _all(services, operation.store)


def _all(services: Services, store: StoreRef) -> Iterator[Unit]:
    after: tuple[str, ...] = ("", "", "")
    while True:
        with services.db.read() as conn:
            keys = conn.execute(
                sa.select(*KEY_COLUMNS)
                .where(instances.c.store_pk == store.pk, sa.tuple_(*KEY_COLUMNS) > sa.tuple_(*after))
                .order_by(*KEY_COLUMNS)
                .limit(1000)
            ).all()
        if not keys:
            return
        for key in keys:
            yield list(key)
        after = tuple(keys[-1])


def read_filter(services: Services, uri: str) -> Iterator[tuple[str, str | None, str | None]]:
    """The (study, series, instance) of each line of a filter file; INVALID_ARGUMENT on the first bad line,
    saying which line and what is wrong with it, never what it holds (the file may be anything)."""
    try:
        for number, line in enumerate(services.buckets.lines(uri), start=1):
            if line.strip():
                yield filter_line(line.strip(), f"line {number} of filter file {uri}")
    except (FileNotFoundError, NotFoundError, NotFound):
        raise InvalidArgument(f"filter file {uri} does not exist") from None


def filter_line(text: str, where: str) -> tuple[str, str | None, str | None]:
    """(study, series, instance) of one filter line `/studies/UID[/series/UID[/instances/UID]]`."""
    parts = text.split("/")
    levels = [level for level, _ in _FILTER_LEVELS]
    if parts[0] or len(parts) not in (3, 5, 7) or parts[1::2] != levels[: len(parts) // 2]:
        raise InvalidArgument(f"{where} is not a resource path /studies/UID[/series/UID[/instances/UID]]")
    uids: list[str | None] = [None, None, None]
    for level, value in enumerate(parts[2::2]):
        keyword = _FILTER_LEVELS[level][1]
        try:
            uids[level] = normalize_uid(value, keyword)
        except InvalidUid:
            raise InvalidArgument(
                f"{where}: its {keyword} is not a UID (digits separated by single dots, at most 64 characters)"
            ) from None
    return uids[0] or "", uids[1], uids[2]


def _filtered(services: Services, operation: Operation, uri: str) -> Iterator[Unit]:
    # Every line is checked before the first unit is planned, so a bad file fails the operation untouched.
    for _ in read_filter(services, uri):
        pass
    seen: set[Key] = set()
    for study, series_uid, sop in read_filter(services, uri):
        keys = keys_of(services.db, operation.store, study, series_uid, sop)
        if not keys:
            yield _resource_path(study, series_uid, sop)
        for key in keys:
            if key not in seen:
                seen.add(key)
                yield list(key)


def _resource_path(study: str, series_uid: str | None, sop: str | None) -> str:
    path = f"studies/{study}"
    if series_uid:
        path += f"/series/{series_uid}"
    if sop:
        path += f"/instances/{sop}"
    return path


# ---- working ----------------------------------------------------------------------------------


def process(services: Services, operation: Operation, batch: list[Unit], heartbeat: Callable[[], None]) -> ShardResult:
    """Write the shard's instances in batches, on every core (`cpu_pool`); count and log what failed."""
    destination = operation.request["gcsDestination"]
    result = ShardResult()
    keys = missing_units(operation, batch, result)
    wanted = set(keys)
    with services.db.read() as conn:
        rows = [tuple(row) for row in conn.execute(select_by_keys(operation.store, keys)) if tuple(row[:3]) in wanted]
    calls = [
        (rows[i : i + BATCH_SIZE], destination["uriPrefix"], destination["mimeType"])
        for i in range(0, len(rows), BATCH_SIZE)
    ]
    failures = [failure for batch in map_in_pool(services, heartbeat, write_objects, calls) for failure in batch]
    # Instances deleted since the plan was made have nothing to export: they count as done.
    result.success = len(keys) - len(failures)
    result.failure += len(failures)
    result.logs += [log_entry(operation, path, code, message) for path, code, message in failures]
    return result


def missing_units(operation: Operation, batch: list[Unit], result: ShardResult) -> list[Key]:
    """Count and log the filter lines of a shard that name nothing stored; the instance keys of the rest."""
    for path in (u for u in batch if isinstance(u, str)):
        result.failure += 1
        result.logs.append(log_entry(operation, path, 5, f"{path} is not in the DICOM store"))
    return [(u[0], u[1], u[2]) for u in batch if not isinstance(u, str)]


def write_objects(rows: list[tuple[str, str, str, str]], uri_prefix: str, mime_type: str) -> list[tuple[str, int, str]]:
    """Write each (study, series, instance, blob key) as the export's objects (run in a `cpu_pool` process);
    (resource path, google.rpc code, message) of each that failed."""
    services = in_worker()
    prefix = uri_prefix.rstrip("/")
    fmt = parse_mime_type(mime_type)
    failures: list[tuple[str, int, str]] = []
    for study, series_uid, sop, blob_key in rows:
        path = _resource_path(study, series_uid, sop)
        try:
            data = services.blobs.get(blob_key)
            for name, payload in _objects(fmt, data):
                services.buckets.put(f"{prefix}/{study}/{series_uid}/{sop}{name}", payload)
        except NotFoundError:
            continue  # deleted while the export ran
        except pixels.PixelError as exc:
            failures.append((path, 9, f"cannot export {path} as {fmt.kind}: {exc}"))
        except DicomlakeError as exc:
            # A link or a folder in the way of a local object, a name the bucket refuses: this instance only.
            failures.append((path, exc.code, exc.message))
        except (OSError, obstore.exceptions.BaseError) as exc:
            failures.append((path, 14, f"cannot write {path} to {prefix}: {exc}"))
    return failures


def _objects(fmt: Format, data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name suffix after the instance UID, bytes) of each object one instance becomes."""
    if fmt.kind == "dicom":
        if fmt.transfer_syntax == "*":
            yield fmt.extension, data
        elif pixels.frame_count(data) == 0 and fmt.transfer_syntax not in pixels.NATIVE_SYNTAXES:
            # Reports, plans and the like have no pixels to compress: they go in the default syntax.
            yield fmt.extension, pixels.transcode(data, EXPLICIT_LE)
        else:
            yield fmt.extension, pixels.transcode(data, fmt.transfer_syntax)
        return
    count = pixels.frame_count(data)
    if count == 0:
        raise pixels.PixelError("the instance has no pixel data")
    if fmt.kind == "frames":
        payloads = pixels.frames(data, list(range(1, count + 1)), fmt.transfer_syntax)
    else:
        payloads = [pixels.render(data, n, f"image/{fmt.kind}") for n in range(1, count + 1)]
    if count == 1:
        yield fmt.extension, payloads[0]
        return
    for number, payload in enumerate(payloads, start=1):
        yield f"/{number}{fmt.extension}", payload


def log_entry(operation: Operation, path: str, code: int, message: str) -> dict[str, Any]:
    resource = f"{operation.store.name}/dicomWeb/{path}"
    return records.log_entry(operation, "export_dicom", {"@type": LOG_TYPE, "resourceName": resource}, code, message)


KIND = Kind(plan=plan, process=process, response=RESPONSE)
