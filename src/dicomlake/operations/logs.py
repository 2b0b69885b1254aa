"""The log entries dicomlake writes for failed units of operations, read back with a Cloud Logging filter."""

from __future__ import annotations

import re
from typing import Any

import orjson
import sqlalchemy as sa

from dicomlake.errors import InvalidArgument
from dicomlake.storage.db import Database, log_entries

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
