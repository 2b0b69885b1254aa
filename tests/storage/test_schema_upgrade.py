"""An index created by an older release gains the columns and indexes added since, on start-up."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import throwaway_postgres
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


def test_an_index_without_metadata_sizes_gains_them_and_their_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    db.dispose()
    document = '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Müller^Jürgen"}]}}'
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX ix_instances_sizes")
        conn.execute("ALTER TABLE instances DROP COLUMN metadata_size")
        conn.execute(
            "INSERT INTO instances (store_pk, study_uid, series_uid, sop_uid, transfer_syntax_uid, number_of_frames,"
            " blob_key, blob_size, storage_class, metadata, created) VALUES (1, '1', '2', '3', '1.2.840.10008.1.2.1',"
            " 0, 'k', 10, 'STANDARD', ?, 0)",
            (document,),
        )
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    with db.read() as conn:
        size = conn.execute(sa.text("SELECT metadata_size FROM instances")).scalar_one()
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("instances")}
    db.dispose()
    assert size == len(document.encode())  # bytes, not characters
    assert "ix_instances_sizes" in indexes


def test_start_up_on_postgresql_warns_when_autovacuum_is_off(caplog: pytest.LogCaptureFixture) -> None:
    """Without autovacuum nothing refreshes the planner's statistics, and searches slow down as the index grows."""
    with throwaway_postgres("dicomlake_autovacuum") as url:
        db = Database(url)
        with db.read() as conn:
            autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
        with caplog.at_level(logging.WARNING, logger="dicomlake"):
            db.create_schema()
        db.dispose()
    warned = any("autovacuum is off" in r.getMessage() for r in caplog.records)
    assert warned == (autovacuum != "on"), (autovacuum, caplog.text)


def _older_name_index(db: Database) -> None:
    """The index as releases before text_pattern_ops made it: the new ones removed, the old one back."""
    with db.write() as conn:
        for name in (
            "ix_studies_patient_name_prefix",
            "ix_studies_patient_name_ideographic",
            "ix_studies_patient_name_phonetic",
        ):
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql(
            "CREATE INDEX ix_studies_patient_name ON studies (store_pk, patient_name_alphabetic, study_uid)"
        )


def _study_indexes(db: Database) -> set[str]:
    with db.read() as conn:
        return {i["name"] for i in sa.inspect(conn).get_indexes("studies")}


NAME_INDEXES = {
    "ix_studies_patient_name_prefix",
    "ix_studies_patient_name_ideographic",
    "ix_studies_patient_name_phonetic",
}


def test_an_older_sqlite_index_gets_the_person_name_prefix_indexes(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    _older_name_index(db)
    db.create_schema()
    indexes = _study_indexes(db)
    db.dispose()
    assert indexes >= NAME_INDEXES
    assert "ix_studies_patient_name" not in indexes


def test_an_older_postgresql_index_gets_person_name_indexes_a_prefix_like_can_use() -> None:
    """Under a collation other than C, a plain B-tree index serves no `LIKE 'abc%'`: the name of every study of
    the store was read for each such search."""
    with throwaway_postgres("dicomlake_name_index") as url:
        db = Database(url)
        db.create_schema()
        _older_name_index(db)
        db.create_schema()
        indexes = _study_indexes(db)
        with db.write() as conn:
            conn.exec_driver_sql(
                "INSERT INTO studies (store_pk, study_uid, patient_name_alphabetic, patient_name_phonetic,"
                " series_count, instance_count, attributes, created)"
                " SELECT 1, 'uid' || n, 'name' || n, NULL, 1, 1, '{}', 0"
                " FROM generate_series(1, 5000) AS n"
            )
            conn.exec_driver_sql("ANALYZE studies")
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(
                conn.exec_driver_sql(
                    "EXPLAIN SELECT study_uid FROM studies WHERE store_pk = 1 AND (patient_name_alphabetic LIKE"
                    " 'name12%%' OR patient_name_phonetic LIKE 'name12%%') ORDER BY study_uid LIMIT 100"
                ).scalars()
            )
        db.dispose()
    assert indexes >= NAME_INDEXES and "ix_studies_patient_name" not in indexes
    assert "Index Cond: ((store_pk = 1) AND (patient_name_alphabetic ~>=~ 'name12'::text)" in plan, plan
    assert "ix_studies_patient_name_phonetic" in plan, plan
