"""Operation records in the index database and their JSON as google.longrunning.Operation."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import sqlalchemy as sa

from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.storage.db import Database, operations
from dicomlake.store.catalog import DatasetRef, now_rfc3339

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
        pk = conn.execute(
            operations.insert().values(
                dataset_pk=dataset.pk, method=method, done=True, success=success, failure=failure, pending=0,
                response=orjson.dumps(response).decode(), create_time=now, end_time=now,
            )
        ).inserted_primary_key[0]
    return get(db, dataset, str(pk))


def get(db: Database, dataset: DatasetRef, operation_id: str) -> dict[str, Any]:
    if not operation_id.isdigit():
        raise NotFound(f"operation {dataset.name}/operations/{operation_id} not found")
    with db.read() as conn:
        row = conn.execute(
            sa.select(operations).where(operations.c.pk == int(operation_id), operations.c.dataset_pk == dataset.pk)
        ).first()
    if row is None:
        raise NotFound(f"operation {dataset.name}/operations/{operation_id} not found")
    return to_json(dataset, row)


def list_(db: Database, dataset: DatasetRef, page_size: int | None, page_token: str | None) -> dict[str, Any]:
    size = min(page_size or 100, 1000)
    after = 0
    if page_token:
        try:
            after = int(base64.urlsafe_b64decode(page_token.encode()))
        except ValueError:
            raise InvalidArgument("invalid pageToken: pass the nextPageToken of the previous response") from None
    with db.read() as conn:
        rows = conn.execute(
            sa.select(operations)
            .where(operations.c.dataset_pk == dataset.pk, operations.c.pk > after)
            .order_by(operations.c.pk)
            .limit(size + 1)
        ).all()
    out: dict[str, Any] = {"operations": [to_json(dataset, r) for r in rows[:size]]}
    if len(rows) > size:
        out["nextPageToken"] = base64.urlsafe_b64encode(str(rows[size - 1].pk).encode()).decode()
    return out


def to_json(dataset: DatasetRef, row: Any) -> dict[str, Any]:
    name = f"{dataset.name}/operations/{row.pk}"
    counter = {k: str(v) for k, v in (("success", row.success), ("failure", row.failure), ("pending", row.pending)) if v}
    metadata: dict[str, Any] = {
        "@type": METADATA_TYPE,
        "apiMethodName": row.method,
        "createTime": row.create_time,
        "logsUrl": f"/v1/{dataset.name}/logs?filter=operation.id%3D%22{name}%22",
    }
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
