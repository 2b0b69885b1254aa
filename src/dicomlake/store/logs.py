"""The log entries of a dataset's stores (a failed unit of an operation, a stream row that could not be written,
...), shaped as Cloud Logging's and read back with its filter language."""

from __future__ import annotations

import re
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dicomlake.errors import InvalidArgument
from dicomlake.storage.db import Database, log_entries
from dicomlake.store.catalog import StoreRef, now_rfc3339

# `field="value"` terms joined by AND: the subset of the Logging query language that logsUrl uses.
_TERM = re.compile(r'\s*(logName|operation\.id)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')
_COLUMNS = {"logName": log_entries.c.log_name, "operation.id": log_entries.c.operation_name}
MAX_ENTRIES = 10_000


def parse_filter(text: str) -> list[tuple[str, str]]:
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _TERM.fullmatch(part)
        if match is None:
            raise InvalidArgument(
                f'unsupported log filter term {part!r}: use logName="..." or operation.id="...", joined by AND'
            )
        terms.append((match.group(1), re.sub(r"\\(.)", r"\1", match.group(2))))
    return terms


def query(db: Database, project: str, filter_text: str) -> list[dict[str, Any]]:
    """The project's entries that match every term, oldest first."""
    where = [log_entries.c.project == project]
    for field, value in parse_filter(filter_text):
        # logName is stored URL-encoded, as Google writes it; accept the unencoded slash too.
        if field == "logName":
            value = value.replace("/logs/healthcare.googleapis.com/", "/logs/healthcare.googleapis.com%2F")
        where.append(_COLUMNS[field] == value)
    with db.read() as conn:
        rows = conn.execute(
            sa.select(log_entries.c.entry).where(*where).order_by(log_entries.c.pk).limit(MAX_ENTRIES)
        ).scalars()
        return [orjson.loads(row) for row in rows]


def store_entry(store: StoreRef, log_id: str, payload: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    """A LogEntry about a DICOM store (`operations.records.log_entry` adds the operation it came from)."""
    dataset = store.dataset
    now = now_rfc3339()
    return {
        "jsonPayload": {**payload, "error": {"code": code, "message": message}},
        "logName": f"projects/{dataset.project}/logs/healthcare.googleapis.com%2F{log_id}",
        "resource": {
            "type": "healthcare_dicom_store",
            "labels": {
                "project_id": dataset.project,
                "location": dataset.location,
                "dataset_id": dataset.dataset_id,
                "dicom_store_id": store.store_id,
            },
        },
        "severity": "ERROR",
        "timestamp": now,
        "receiveTimestamp": now,
    }


def write(conn: Connection, entries: list[dict[str, Any]]) -> None:
    """Store log entries (in the caller's transaction, so they are written exactly when its work is)."""
    if entries:
        conn.execute(
            log_entries.insert(),
            [
                {
                    "project": e["resource"]["labels"]["project_id"],
                    "log_name": e["logName"],
                    "operation_name": e.get("operation", {}).get("id"),
                    "timestamp": e["timestamp"],
                    "entry": orjson.dumps(e).decode(),
                }
                for e in entries
            ],
        )
