"""The index database: its schema (SQLAlchemy Core) and connections to SQLite (embedded) or PostgreSQL.

Every write goes through `Database.write()`, one short transaction. On SQLite, writers of all threads
and processes first queue on an advisory file lock, then take the write lock up front (BEGIN
IMMEDIATE): SQLite's own busy handler polls with sleeps of up to 100 ms, which under concurrent
ingest costs far more than the writes themselves."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger("dicomlake")

_STREAM_EVENTS = "dicomlake_stream_events"

if TYPE_CHECKING:
    import psycopg

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(256), nullable=False),
    sa.Column("location", sa.String(256), nullable=False),
    sa.Column("dataset_id", sa.String(256), nullable=False),
    sa.Column("create_time", sa.String(40), nullable=False),
    sa.UniqueConstraint("project", "location", "dataset_id"),
)

dicom_stores = sa.Table(
    "dicom_stores",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_pk", sa.Integer, sa.ForeignKey("datasets.pk", ondelete="CASCADE"), nullable=False),
    sa.Column("store_id", sa.String(256), nullable=False),
    # The DicomStore resource fields other than `name`, as Google's JSON.
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("create_time", sa.String(40), nullable=False),
    sa.UniqueConstraint("dataset_pk", "store_id"),
)


def _person_name_columns(prefix: str) -> list[sa.Column]:
    # Lower-cased Alphabetic / Ideographic / Phonetic groups, matched separately so a search in
    # one script finds the name; `tokens` serves fuzzy matching.
    return [
        sa.Column(f"{prefix}_alphabetic", sa.Text),
        sa.Column(f"{prefix}_ideographic", sa.Text),
        sa.Column(f"{prefix}_phonetic", sa.Text),
        sa.Column(f"{prefix}_tokens", sa.Text),
    ]


studies = sa.Table(
    "studies",
    metadata,
    sa.Column("store_pk", sa.Integer, nullable=False),
    sa.Column("study_uid", sa.Text, nullable=False),
    *_person_name_columns("patient_name"),
    *_person_name_columns("referring_physician_name"),
    sa.Column("patient_id", sa.Text),
    sa.Column("accession_number", sa.Text),
    sa.Column("study_date", sa.Text),
    sa.Column("study_time", sa.Text),
    sa.Column("study_id", sa.Text),
    sa.Column("study_description", sa.Text),
    sa.Column("series_count", sa.Integer, nullable=False, default=0),
    sa.Column("instance_count", sa.Integer, nullable=False, default=0),
    # ModalitiesInStudy, sorted and backslash-separated, kept current by ingest and delete.
    sa.Column("modalities", sa.Text),
    # Study-level attributes of the first instance stored, as DICOM JSON.
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("store_pk", "study_uid"),
    # study_uid last: results come in study UID order, so an exact match needs no sort.
    sa.Index("ix_studies_patient_id", "store_pk", "patient_id", "study_uid"),
    # Person names are matched by prefix (`LIKE 'abc%'`) in any of their three groups: each group has an index
    # that such a LIKE can range-scan. PostgreSQL does that only with text_pattern_ops under a collation other
    # than C (C.UTF-8 included); SQLite with case_sensitive_like, which the index database sets.
    sa.Index(
        "ix_studies_patient_name_prefix",
        "store_pk",
        "patient_name_alphabetic",
        "study_uid",
        postgresql_ops={"patient_name_alphabetic": "text_pattern_ops"},
    ),
    *(
        # Most names have no ideographic or phonetic group: indexes of the names that do.
        sa.Index(
            f"ix_studies_patient_name_{group}",
            "store_pk",
            f"patient_name_{group}",
            postgresql_ops={f"patient_name_{group}": "text_pattern_ops"},
            postgresql_where=sa.text(f"patient_name_{group} IS NOT NULL"),
            sqlite_where=sa.text(f"patient_name_{group} IS NOT NULL"),
        )
        for group in ("ideographic", "phonetic")
    ),
    sa.Index("ix_studies_accession", "store_pk", "accession_number", "study_uid"),
    sa.Index("ix_studies_date", "store_pk", "study_date", "study_uid"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("store_pk", sa.Integer, nullable=False),
    sa.Column("study_uid", sa.Text, nullable=False),
    sa.Column("series_uid", sa.Text, nullable=False),
    sa.Column("modality", sa.Text),
    sa.Column("series_number", sa.Text),
    sa.Column("series_description", sa.Text),
    sa.Column("instance_count", sa.Integer, nullable=False, default=0),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("store_pk", "study_uid", "series_uid"),
    sa.Index("ix_series_uid", "store_pk", "series_uid"),
    sa.Index("ix_series_modality", "store_pk", "modality", "study_uid"),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("store_pk", sa.Integer, nullable=False),
    sa.Column("study_uid", sa.Text, nullable=False),
    sa.Column("series_uid", sa.Text, nullable=False),
    sa.Column("sop_uid", sa.Text, nullable=False),
    sa.Column("sop_class_uid", sa.Text),
    sa.Column("transfer_syntax_uid", sa.Text, nullable=False),
    sa.Column("instance_number", sa.Integer),
    sa.Column("number_of_frames", sa.Integer, nullable=False, default=0),
    sa.Column("blob_key", sa.Text, nullable=False),
    sa.Column("blob_size", sa.BigInteger, nullable=False),
    sa.Column("storage_class", sa.Text, nullable=False, default="STANDARD"),
    # The instance's DICOM JSON with bulk data replaced by BulkDataURIs relative to the instance.
    sa.Column("metadata", sa.Text, nullable=False),
    # The bytes of `metadata` (UTF-8): summed with blob_size from one index for a store's metrics.
    sa.Column("metadata_size", sa.BigInteger),
    # Its file meta information (group 0002) as DICOM JSON, for the table exports (spec §6.10).
    sa.Column("file_meta", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("store_pk", "study_uid", "series_uid", "sop_uid"),
    sa.Index("ix_instances_sop", "store_pk", "sop_uid"),
    sa.Index("ix_instances_sizes", "store_pk", "blob_size", "metadata_size"),
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_pk", sa.Integer, sa.ForeignKey("datasets.pk", ondelete="CASCADE"), nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("success", sa.BigInteger, nullable=False, default=0),
    sa.Column("failure", sa.BigInteger, nullable=False, default=0),
    sa.Column("pending", sa.BigInteger, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("response", sa.Text),
    sa.Column("create_time", sa.String(40), nullable=False),
    sa.Column("end_time", sa.String(40)),
    # Long-running work (see operations/runner.py); operations recorded already finished leave these unset.
    sa.Column("store_pk", sa.Integer),
    sa.Column("request", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # False until the planner has written every shard; a planner is leased like a shard.
    sa.Column("planned", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("claimed_by", sa.Text),
    sa.Column("heartbeat", sa.Float),
    sa.Index("ix_operations_open", "done", "planned"),
)

operation_shards = sa.Table(
    "operation_shards",
    metadata,
    sa.Column("operation_pk", sa.Integer, sa.ForeignKey("operations.pk", ondelete="CASCADE"), nullable=False),
    # Numbered in listing order, so a planner that resumes after a crash rewrites the same shards.
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("claimed_by", sa.Text),
    sa.Column("heartbeat", sa.Float),
    sa.Column("success", sa.BigInteger, nullable=False, default=0),
    sa.Column("failure", sa.BigInteger, nullable=False, default=0),
    sa.PrimaryKeyConstraint("operation_pk", "shard"),
    sa.Index("ix_operation_shards_state", "state", "operation_pk"),
)

# The outbox of streaming (operations/streaming.py): one row per instance stored into or deleted from a store
# with streamConfigs, written in the transaction that stores or deletes it, removed once delivered.
stream_events = sa.Table(
    "stream_events",
    metadata,
    sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("store_pk", sa.Integer, nullable=False),
    sa.Column("type", sa.String(8), nullable=False),  # CREATE or DELETE
    sa.Column("study_uid", sa.Text, nullable=False),
    sa.Column("series_uid", sa.Text, nullable=False),
    sa.Column("sop_uid", sa.Text, nullable=False),
    sa.Column("last_updated", sa.Float, nullable=False),
    sa.Column("storage_class", sa.Text),
    sa.Column("blob_size", sa.BigInteger),
    # The instance's DICOM JSON for CREATE (the instance may be gone by delivery time).
    sa.Column("metadata", sa.Text),
    sa.Column("file_meta", sa.Text),
    sa.Index("ix_stream_events_store", "store_pk", "pk"),
    # Keys are never reused (the warehouse remembers delivered ones), not even once the outbox is empty.
    sqlite_autoincrement=True,
)

log_entries = sa.Table(
    "log_entries",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(256), nullable=False),
    sa.Column("log_name", sa.Text, nullable=False),
    sa.Column("operation_name", sa.Text),
    sa.Column("timestamp", sa.String(40), nullable=False),
    # The whole LogEntry as Cloud Logging's JSON.
    sa.Column("entry", sa.Text, nullable=False),
    sa.Index("ix_log_entries_operation", "project", "operation_name", "pk"),
)


# Indexes of older releases whose definition changed: dropped at start-up, and made again under their new name.
RETIRED_INDEXES = (
    # (store_pk, patient_name_alphabetic, study_uid) without text_pattern_ops: no use to a LIKE on PostgreSQL.
    "ix_studies_patient_name",
)


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL of a database URL as users write it: PostgreSQL through psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """An engine plus the two ways the code uses it: short read snapshots and short write transactions."""

    def __init__(self, url: str, durable: bool = True) -> None:
        """`durable`: a commit is on stable storage when it returns (SQLite synchronous=FULL, PostgreSQL's
        default synchronous_commit); off, a power cut may lose the last commits (NORMAL; synchronous_commit=off)."""
        url = sqlalchemy_url(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._lock_path: Path | None = None
        self._local = threading.local()
        # Set when a transaction of this process that added stream events commits (operations/streaming.py).
        self.stream_events = threading.Event()
        if self.is_sqlite:
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._lock_path = Path(path + ".writelock")
            self.engine = sa.create_engine(url, pool_size=16, max_overflow=16, connect_args={"timeout": 60})
            _configure_sqlite(self.engine, durable)
        else:
            self.engine = sa.create_engine(url, pool_size=8, max_overflow=16)
            _ping_idle_connections(self.engine)
            if not durable:
                _relax_postgresql(self.engine)
        # Reads on PostgreSQL run in autocommit: under READ COMMITTED each statement of a transaction takes its
        # own snapshot anyway, so BEGIN and ROLLBACK bought nothing but two round trips per read (a DICOMweb
        # request makes two reads). Same pool, same connections.
        self._read_engine = (
            self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    def create_schema(self) -> None:
        with self.engine.begin() as conn:
            metadata.create_all(conn)
            added = _add_missing_columns(conn)
            if ("instances", "metadata_size") in added:
                size = "length(CAST(metadata AS BLOB))" if self.is_sqlite else "octet_length(metadata)"
                conn.exec_driver_sql(f"UPDATE instances SET metadata_size = {size}")
            for name in RETIRED_INDEXES:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
            if not self.is_sqlite and conn.exec_driver_sql("SHOW autovacuum").scalar() != "on":
                # Nothing else refreshes the planner's statistics: after a bulk load it keeps planning for empty
                # tables and sorts every study of a store for a page of them (docs/configuration.md).
                log.warning(
                    "autovacuum is off on this PostgreSQL server: searches slow down as the index grows unless "
                    "ANALYZE runs regularly; turn autovacuum on (postgresql.conf) or schedule VACUUM ANALYZE"
                )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads only: one snapshot for all its statements on SQLite, one per statement on
        PostgreSQL (its default isolation, READ COMMITTED)."""
        with self._read_engine.connect() as conn:
            yield conn
            conn.rollback()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that writes; a block that calls `added_stream_events(conn)` wakes this process's stream
        delivery once it has committed."""
        with self.write_lock(), self._writing() as conn:
            yield conn

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """On SQLite, the turn of this thread to write to the database file, among every thread and process (what
        else writes to the file takes it too: the Iceberg catalog and streaming buffer); on PostgreSQL nothing."""
        if self._lock_path is None:
            yield
            return
        # One descriptor per thread: flock excludes other descriptors, in this process or another.
        lock = getattr(self._local, "lock", None)
        if lock is None:
            lock = self._local.lock = open(self._lock_path, "a+b")  # noqa: SIM115 - kept for the thread's life
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(dicomlake_write=True) as conn:
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                conn.info.pop(_STREAM_EVENTS, None)
                raise
            if conn.info.pop(_STREAM_EVENTS, False):
                self.stream_events.set()

    @staticmethod
    def added_stream_events(conn: Connection) -> None:
        """Mark the write transaction of `conn` as one that adds stream events."""
        conn.info[_STREAM_EVENTS] = True

    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        """INSERT that silently skips rows whose primary key already exists."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    def dispose(self) -> None:
        self.engine.dispose()


def insert_one(conn: Connection, statement: sa.Insert) -> int:
    """Run a single-row INSERT and return the primary key of its row."""
    key = conn.execute(statement).inserted_primary_key
    if key is None:  # SQLAlchemy's type allows it; an INSERT always has one
        raise RuntimeError("the INSERT made no row")
    return int(key[0])


def _add_missing_columns(conn: Connection) -> set[tuple[str, str]]:
    """Columns added to a table after an index was created (the operations columns of long-running work)
    are added to it here; each has a server default or is nullable, so existing rows stay valid. The
    (table, column) pairs added."""
    added: set[tuple[str, str]] = set()
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing:
                spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {spec}")
                added.add((table.name, column.name))
    return added


# A pooled PostgreSQL connection left unused for longer than this is tested before it is used again.
IDLE_PING_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, for idle connections only. A connection that was checked in a moment ago is as
    good as a ping would prove, and the ping is a round trip at each of the two checkouts of every request (0.2 ms
    of a 3 ms search here). One that sat idle (a restart of the server or a proxy may have closed it) is pinged,
    and replaced by a new one if the ping fails."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
            dbapi_conn.rollback()  # the ping began a transaction unless the connection was in autocommit
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"pooled connection lost while idle: {exc}") from exc


def _relax_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: psycopg.Connection[Any], _record: ConnectionPoolEntry) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_conn.commit()


def _configure_sqlite(engine: Engine, durable: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Transactions are started by the "begin" hook below, not by the driver.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # In WAL mode FULL syncs the log at every commit; NORMAL only at checkpoints, so a power cut can
        # undo the last commits (never corrupt the file).
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        # DICOM matching is case-sensitive except where we lower-case on purpose (person names).
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.execute("PRAGMA cache_size=-65536")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("dicomlake_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
