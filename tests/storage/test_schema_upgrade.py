"""An index created before the operations columns of long-running work gains them on start-up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from dicomlake.storage.db import Database, operations


def test_create_schema_adds_operation_columns_to_an_older_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE operations (pk INTEGER PRIMARY KEY, dataset_pk INTEGER NOT NULL, method TEXT NOT NULL,"
            " done BOOLEAN NOT NULL, success BIGINT NOT NULL, failure BIGINT NOT NULL, pending BIGINT NOT NULL,"
            " error TEXT, response TEXT, create_time VARCHAR(40) NOT NULL, end_time VARCHAR(40))"
        )
        conn.execute("INSERT INTO operations VALUES (1, 1, 'm', 1, 2, 0, 0, NULL, '{}', 't', 't')")
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    with db.read() as conn:
        row = conn.execute(sa.select(operations)).one()
    db.dispose()
    assert (row.success, row.cancel_requested, row.planned, row.store_pk, row.request) == (2, False, True, None, None)
