"""Operation records in the index database and their JSON as google.longrunning.Operation."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.storage.db import Database, insert_one, operations
from dicomlake.store import logs
from dicomlake.store.catalog import DatasetRef, StoreRef, encode_page_token, now_rfc3339, paging

if TYPE_CHECKING:
    from dicomlake.operations.model import Operation
    from dicomlake.services import Services

METADATA_TYPE = "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
EMPTY_RESPONSE = {"@type": "type.googleapis.com/google.protobuf.Empty"}
DELETE_STUDY = "google.cloud.healthcare.v1.dicomweb.service.DeleteStudy"
DELETE_SERIES = "google.cloud.healthcare.v1.dicomweb.service.DeleteSeries"
CREATE_DATASET = "google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset"


def record_finished(
    db: Database, dataset: DatasetRef, method: str, response: dict[str, Any], success: int = 0, failure: int = 0
) -> dict[str, Any]:
    """Record an operation whose work is already done and return its JSON."""
    now = now_rfc3339()
    with db.write() as conn:
        pk = insert_one(
            conn,
            operations.insert().values(
                dataset_pk=dataset.pk,
                method=method,
                done=True,
                success=success,
                failure=failure,
                pending=0,
                response=orjson.dumps(response).decode(),
                create_time=now,
                end_time=now,
            ),
        )
    return get(db, dataset, str(pk))


def create_pending(services: Services, store: StoreRef, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """Record an operation for the workers to plan and run (operations/runner.py) and return its JSON. This
    process's workers start on it at once; other processes' find it when they next look."""
    db = services.db
    with db.write() as conn:
        pk = insert_one(
            conn,
            operations.insert().values(
                dataset_pk=store.dataset.pk,
                store_pk=store.pk,
                method=method,
                done=False,
                planned=False,
                cancel_requested=False,
                request=orjson.dumps(request).decode(),
                create_time=now_rfc3339(),
            ),
        )
    services.work_queued.set()
    return get(db, store.dataset, str(pk))


def request_cancel(db: Database, dataset: DatasetRef, operation_id: str) -> None:
    """Ask the workers to stop (best effort, as Google's): they claim no more of its work and end it
    with error CANCELLED once the shards in hand are done. A finished operation is left as it is."""
    get(db, dataset, operation_id)
    with db.write() as conn:
        conn.execute(
            operations.update()
            .where(operations.c.pk == int(operation_id), operations.c.done.is_(False))
            .values(cancel_requested=True)
        )


def get(db: Database, dataset: DatasetRef, operation_id: str) -> dict[str, Any]:
    pk = _operation_pk(operation_id)
    row = None
    if pk is not None:
        with db.read() as conn:
            row = conn.execute(
                sa.select(operations).where(operations.c.pk == pk, operations.c.dataset_pk == dataset.pk)
            ).first()
    if row is None:
        raise NotFound(f"operation {dataset.name}/operations/{operation_id} not found")
    return to_json(dataset, row)


def _operation_pk(operation_id: str) -> int | None:
    # Ids are positive 64-bit integers; anything else names no operation.
    if not (operation_id.isascii() and operation_id.isdigit()):
        return None
    pk = int(operation_id)
    return pk if 0 < pk < 2**63 else None


# AIP-160 terms joined by AND: `done=true`, `metadata.apiMethodName="…"` (`:` for "contains"),
# `metadata.createTime>="2026-01-01T00:00:00Z"` (and endTime), with = != < <= > >=.
_FILTER_TERM = re.compile(
    r"\s*(done|metadata\.apiMethodName|metadata\.createTime|metadata\.endTime)\s*(!=|>=|<=|=|<|>|:)\s*"
    r'("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.:-]+)\s*'
)
_FILTER_COLUMNS = {
    "done": operations.c.done,
    "metadata.apiMethodName": operations.c.method,
    "metadata.createTime": operations.c.create_time,
    "metadata.endTime": operations.c.end_time,
}


def parse_filter(text: str | None) -> list[Any]:
    """SQL conditions for an operations.list `filter`; INVALID_ARGUMENT for anything else."""
    conditions: list[Any] = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text and text.strip() else []:
        match = _FILTER_TERM.fullmatch(part)
        if match is None:
            raise InvalidArgument(
                f'unsupported operations filter term {part!r}: use done=true|false, metadata.apiMethodName="…", '
                "metadata.createTime or metadata.endTime compared with a quoted RFC 3339 time, joined by AND"
            )
        field, op, raw = match.groups()
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        column = _FILTER_COLUMNS[field]
        if field == "done":
            if value not in ("true", "false") or op not in ("=", "!="):
                raise InvalidArgument(f"invalid filter term {part!r}: done takes = or != with true or false")
            conditions.append(column.is_(value == "true") if op == "=" else column.is_not(value == "true"))
            continue
        if op == ":":
            conditions.append(column.contains(value, autoescape=True))
            continue
        conditions.append(
            {
                "=": column == value,
                "!=": column != value,
                "<": column < value,
                "<=": column <= value,
                ">": column > value,
                ">=": column >= value,
            }[op]
        )
    return conditions


def list_(
    db: Database, dataset: DatasetRef, page_size: int | None, page_token: str | None, filter_text: str | None = None
) -> dict[str, Any]:
    conditions = parse_filter(filter_text)
    size, after = paging(page_size, page_token, "operations")
    after_pk = 0
    if after:
        after_pk = _operation_pk(after) or 0
        if not after_pk:
            raise InvalidArgument("invalid pageToken: pass the nextPageToken of the previous response")
    with db.read() as conn:
        rows = conn.execute(
            sa.select(operations)
            .where(operations.c.dataset_pk == dataset.pk, operations.c.pk > after_pk, *conditions)
            .order_by(operations.c.pk)
            .limit(size + 1)
        ).all()
    # proto3 JSON: an empty list is left out.
    out: dict[str, Any] = {"operations": [to_json(dataset, r) for r in rows[:size]]} if rows else {}
    if len(rows) > size:
        out["nextPageToken"] = encode_page_token("operations", str(rows[size - 1].pk))
    return out


def to_json(dataset: DatasetRef, row: Any) -> dict[str, Any]:
    name = f"{dataset.name}/operations/{row.pk}"
    counts = (("success", row.success), ("failure", row.failure), ("pending", row.pending))
    counter = {k: str(v) for k, v in counts if v}
    metadata: dict[str, Any] = {
        "@type": METADATA_TYPE,
        "apiMethodName": row.method,
        "createTime": row.create_time,
        "logsUrl": f"/v1/projects/{dataset.project}/logs?filter=operation.id%3D%22{name}%22",
    }
    if row.cancel_requested:
        metadata["cancelRequested"] = True
    if row.end_time:
        metadata["endTime"] = row.end_time
    if counter:
        metadata["counter"] = counter
    out: dict[str, Any] = {"name": name, "metadata": metadata}
    if row.done:
        out["done"] = True
        if row.error:
            out["error"] = orjson.loads(row.error)
        else:
            out["response"] = orjson.loads(row.response or "{}")
    return out


def log_entry(operation: Operation, log_id: str, payload: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    """A Cloud Logging LogEntry for one failed unit of an operation, shaped as Google's (spec §4.2).
    `log_id` is e.g. "import_dicom"; `payload` the jsonPayload fields besides `error`."""
    method = operation.method.rsplit(".", 1)[-1]
    return {
        **logs.store_entry(operation.store, log_id, payload, code, message),
        "operation": {"id": operation.name, "producer": f"healthcare.googleapis.com/{method}"},
    }
