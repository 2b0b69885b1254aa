"""One instance by its full name (dataset, store and UID triple) in one indexed query: the lean path of the
single-instance WADO-RS requests (an instance, its frames, its rendered image, its bulk data) that viewers make
one at a time.

`catalog.find_store` then `instances.find` take 0.9 ms between them on this machine, nearly all of it
SQLAlchemy building statements, their cache keys and two read transactions around 40 us of SQLite work. This
module compiles one joined statement per database once and runs it on a pooled driver connection (25 us).
It finds what those two find, or nothing: the caller sends every miss back through them, so that a missing
dataset, store or instance is reported in exactly their words."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from dicomlake.storage.db import Database, datasets, dicom_stores, instances
from dicomlake.store.instances import ROW_COLUMNS, InstanceRow

_ONE_INSTANCE = (
    sa.select(*ROW_COLUMNS[:-1])  # all but the metadata
    .select_from(
        datasets.join(dicom_stores, dicom_stores.c.dataset_pk == datasets.c.pk).join(
            instances, instances.c.store_pk == dicom_stores.c.pk
        )
    )
    .where(
        datasets.c.project == sa.bindparam("project"),
        datasets.c.location == sa.bindparam("location"),
        datasets.c.dataset_id == sa.bindparam("dataset_id"),
        dicom_stores.c.store_id == sa.bindparam("store_id"),
        instances.c.study_uid == sa.bindparam("study"),
        instances.c.series_uid == sa.bindparam("series"),
        instances.c.sop_uid == sa.bindparam("sop"),
    )
)

# Per dialect and driver parameter style: the statement's SQL, and the order of its positional parameters (None
# for named ones). Compiling is the cost this module exists to avoid, so it is done once per process.
_compiled: dict[tuple[str, str, str], tuple[str, tuple[str, ...] | None]] = {}
_compiling = threading.Lock()


def instance_row(
    db: Database, project: str, location: str, dataset_id: str, store_id: str, study: str, series: str, sop: str
) -> InstanceRow | None:
    """The instance's row (without its metadata), or None: the caller then asks `catalog.find_store` and
    `instances.find`, which say what is missing."""
    names = (project, location, dataset_id, store_id)
    if not all(name and "\x00" not in name for name in names):  # PostgreSQL refuses NUL in text outright
        return None
    values = {"project": project, "location": location, "dataset_id": dataset_id, "store_id": store_id}
    row = _query(db, {**values, "study": study, "series": series, "sop": sop})
    if row is None:
        return None
    study_uid, series_uid, sop_uid, sop_class, syntax, frames, key, size, storage_class = row
    return InstanceRow(study_uid, series_uid, sop_uid, sop_class, syntax, frames, key, size, storage_class, "")


def _query(db: Database, values: dict[str, str]) -> tuple[Any, ...] | None:
    sql, order = _statement(db)
    params: tuple[str, ...] | dict[str, str] = values if order is None else tuple(values[n] for n in order)
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            # One statement reads one snapshot; returning the connection to the pool rolls back whatever the
            # driver opened around it.
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
    finally:
        connection.close()
    return tuple(row) if row is not None else None


def _statement(db: Database) -> tuple[str, tuple[str, ...] | None]:
    dialect = db.engine.dialect
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    found = _compiled.get(key)
    if found is None:
        with _compiling:
            compiled = _ONE_INSTANCE.compile(dialect=db.engine.dialect)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            found = _compiled[key] = (compiled.string, order)
    return found
