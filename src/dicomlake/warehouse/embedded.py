"""The embedded warehouse: BigQuery datasets and tables in DuckDB, one database file per BigQuery project
(`<data dir>/warehouse/<project>.duckdb`), one DuckDB schema per dataset, RECORD columns as STRUCTs and REPEATED
ones as LISTs.

DuckDB lets one process at a time open a file, and dicomlake runs several (`serve --workers`, `dicomlake worker`).
So every call opens the file, does its work in one transaction and closes it; a call that finds the file held by
another process retries with a short backoff for up to LOCK_TIMEOUT seconds, then fails with UNAVAILABLE. Threads
of one process share one open database (DuckDB keeps one instance per file and process), and take turns to write."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import duckdb
import orjson
import pyarrow as pa

from dicomlake.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from dicomlake.warehouse import sql as bigquery_sql
from dicomlake.warehouse.schema import Field, arrow_schema, duckdb_type, from_duckdb, merge, normalize, quote

if TYPE_CHECKING:
    from dicomlake.warehouse.iceberg import IcebergWarehouse

LOCK_TIMEOUT = 30.0
# Every server, worker and pool process may open the files: each keeps its buffers small (DuckDB's default
# is 80% of the machine's memory per process).
MEMORY_LIMIT_MB = 256
# The engine reaches nothing but its own files: no file functions, COPY, ATTACH, extensions or URLs, whatever a
# statement says (the query sandbox's second wall, see `sql`). It cannot be switched back on while a file is open,
# and every connection of a process to one file must pass the same settings.
SANDBOX = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}
# What a query past its memory limit may spill to disk, per DuckDB instance, before it fails (DuckDB's default is
# 90% of the free disk).
MAX_SPILL = "4GiB"
CONFIG: dict[str, Any] = {"memory_limit": f"{MEMORY_LIMIT_MB}MB", "max_temp_directory_size": MAX_SPILL, **SANDBOX}


def set_memory_limit(megabytes: int) -> None:
    """The memory limit of each DuckDB instance this process opens (one per project file, one per query that reads
    no file or several): set at start-up, before any file is open."""
    global MEMORY_LIMIT_MB
    MEMORY_LIMIT_MB = megabytes
    CONFIG["memory_limit"] = f"{megabytes}MB"


# A checkpoint holds a block of about 256 KiB per column it writes at once, and DuckDB stops for good (a fatal
# error, the rows of the transaction lost) when they do not fit: wide tables get a larger limit (see
# `allow_columns`).
CHECKPOINT_KB_PER_COLUMN = 384
DEFAULT_LOCATION = "US"
# Times and labels live in a dataset of each file that BigQuery's naming rules hide (a leading underscore).
META = "_dicomlake"

_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,127}")
_DATASET_ID = re.compile(r"[A-Za-z0-9_]{1,1024}")
_TABLE_ID = re.compile(r"[\w\- ]{1,1024}")
_TABLE_URI = re.compile(
    r"(?:bq://)?(?:(?P<project>[\w\-.:]+)[.:])?(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[\w\- ]{1,1024})"
)


class DatasetInUse(FailedPrecondition):
    reason = "resourceInUse"


@dataclass(frozen=True)
class Warehouse:
    """Where the DuckDB files of every project live."""

    root: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Warehouse:
        return cls(Path(data_dir) / "warehouse")

    def file(self, project: str) -> Path:
        check_project(project)
        return self.root / f"{project}.duckdb"

    # The calls of the BigQuery API, named and taking what `iceberg.IcebergWarehouse`'s take.
    def create_dataset(self, *args: Any, **kwargs: Any) -> Any:
        return create_dataset(self, *args, **kwargs)

    def get_dataset(self, *args: Any, **kwargs: Any) -> Any:
        return get_dataset(self, *args, **kwargs)

    def list_datasets(self, *args: Any, **kwargs: Any) -> Any:
        return list_datasets(self, *args, **kwargs)

    def delete_dataset(self, *args: Any, **kwargs: Any) -> Any:
        return delete_dataset(self, *args, **kwargs)

    def create_table(self, *args: Any, **kwargs: Any) -> Any:
        return create_table(self, *args, **kwargs)

    def get_table(self, *args: Any, **kwargs: Any) -> Any:
        return get_table(self, *args, **kwargs)

    def list_tables(self, *args: Any, **kwargs: Any) -> Any:
        return list_tables(self, *args, **kwargs)

    def delete_table(self, *args: Any, **kwargs: Any) -> Any:
        return delete_table(self, *args, **kwargs)

    def patch_table(self, *args: Any, **kwargs: Any) -> Any:
        return patch_table(self, *args, **kwargs)

    def append(self, *args: Any, **kwargs: Any) -> Any:
        return append(self, *args, **kwargs)

    def truncate(self, *args: Any, **kwargs: Any) -> Any:
        return truncate(self, *args, **kwargs)

    def row_count(self, *args: Any, **kwargs: Any) -> Any:
        return row_count(self, *args, **kwargs)

    def read_rows(self, *args: Any, **kwargs: Any) -> Any:
        return read_rows(self, *args, **kwargs)

    def create_or_replace_view(self, *args: Any, **kwargs: Any) -> Any:
        return create_or_replace_view(self, *args, **kwargs)


# Either kind of warehouse, for the code above both (the BigQuery API, its jobs and inserts).
AnyWarehouse: TypeAlias = "Warehouse | IcebergWarehouse"


@dataclass(frozen=True)
class TableRef:
    project: str
    dataset: str
    table: str

    @classmethod
    def parse(cls, text: str, default_project: str | None = None) -> TableRef:
        """`bq://P.D.T`, `P.D.T`, `P:D.T`, or `D.T` in `default_project`."""
        match = _TABLE_URI.fullmatch(text.strip())
        project = (match.group("project") if match else None) or default_project
        if match is None or project is None:
            raise InvalidArgument(
                f"invalid table {text!r}: expected bq://PROJECT.DATASET.TABLE or PROJECT:DATASET.TABLE"
            )
        return cls(project, match.group("dataset"), match.group("table"))

    @classmethod
    def parse_uri(cls, text: str) -> TableRef | None:
        """A destination URI as the Healthcare API takes it, `bq://PROJECT.DATASET.TABLE` exactly; None otherwise."""
        if not text.startswith("bq://") or len(text) > 2000:
            return None
        match = _TABLE_URI.fullmatch(text)
        if match is None or match.group("project") is None:
            return None
        return cls(match.group("project"), match.group("dataset"), match.group("table"))

    def __str__(self) -> str:
        return f"{self.project}:{self.dataset}.{self.table}"


@dataclass(frozen=True)
class DatasetInfo:
    project: str
    dataset: str
    created_ms: int
    modified_ms: int
    location: str = DEFAULT_LOCATION
    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    type: str  # TABLE or VIEW
    created_ms: int
    modified_ms: int
    # Left empty by list_tables, which reads neither schemas nor row counts.
    fields: list[Field] = field(default_factory=list)
    num_rows: int | None = None
    view_query: str | None = None
    description: str | None = None

    @property
    def etag(self) -> str:
        """Changes whenever the table does (its schema, description or rows), as tables.patch's If-Match needs."""
        return f'"{self.modified_ms}"'


def check_project(project: str) -> None:
    if not _PROJECT_ID.fullmatch(project) or ".." in project:
        raise InvalidArgument(f"invalid project id {project!r}")


def check_dataset(dataset: str) -> None:
    if not _DATASET_ID.fullmatch(dataset):
        raise InvalidArgument(
            f"invalid dataset id {dataset!r}: dataset ids contain only letters, numbers and underscores (at most 1024)"
        )


def check_table(table: str) -> None:
    if not _TABLE_ID.fullmatch(table):
        raise InvalidArgument(
            f"invalid table id {table!r}: table ids contain letters, numbers, underscores, dashes and spaces"
        )


# ---- connections ------------------------------------------------------------------------------


@dataclass
class Db:
    """An open project file: the connection and the name DuckDB gave its catalog."""

    conn: duckdb.DuckDBPyConnection
    catalog: str

    def name(self, dataset: str, table: str | None = None) -> str:
        parts = [self.catalog, dataset] + ([table] if table is not None else [])
        return ".".join(quote(p) for p in parts)


_write_locks: dict[Path, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def is_busy(exc: Exception) -> bool:
    """True for DuckDB's "another process (or another database of this process) holds the file"."""
    text = str(exc)
    return "Could not set lock on file" in text or "Unique file handle conflict" in text


def retrying(attempt: Any, what: str) -> Any:
    """Call `attempt()` until it does not fail with a lock conflict, for up to LOCK_TIMEOUT seconds."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    delay = 0.002
    while True:
        try:
            return attempt()
        except duckdb.Error as exc:
            if not is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"{what} stayed locked by another dicomlake process for {LOCK_TIMEOUT:g} s; try again"
                ) from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


@contextmanager
def connect(
    wh: Warehouse, project: str, *, missing: Exception | None = None, write: bool = False, hold: float = 0.0
) -> Iterator[Db]:
    """The project's file, open for one call. A file that does not exist raises `missing`, or is created when
    `missing` is None. With `write`, the call holds this process's write turn and runs in one transaction.

    `hold` (seconds, writes only): keep the file open in this process for that long after the write, for
    frequent small writes (streaming). Closing the file checkpoints it, which costs more than a small append
    itself; while it is kept open, the writes in between are only committed to DuckDB's log. Other processes
    wait for the file meanwhile, so the time is short and is not extended by further writes."""
    path = wh.file(project)
    if not path.exists():
        if missing is not None:
            raise missing
        path.parent.mkdir(parents=True, exist_ok=True)
        write = True
    lock = _write_lock(path) if write else None
    if lock is not None:
        lock.acquire()
    try:
        conn = retrying(lambda: duckdb.connect(str(path), config=CONFIG), f"the warehouse file of project {project}")
        try:
            (catalog,) = first_row(conn, "SELECT current_database()")
            db = Db(conn, catalog)
            if not write:
                yield db
                return
            conn.begin()
            _ensure_meta(db)
            try:
                yield db
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            if hold > 0:
                _keep_open(path, hold)
        finally:
            conn.close()
    finally:
        if lock is not None:
            lock.release()


_kept: dict[Path, duckdb.DuckDBPyConnection] = {}
_kept_guard = threading.Lock()


def _keep_open(path: Path, seconds: float) -> None:
    """Keep the file open (one more connection to the process's DuckDB instance of it) for `seconds`."""
    with _kept_guard:
        if path in _kept:
            return
        _kept[path] = duckdb.connect(str(path), config=CONFIG)
    timer = threading.Timer(seconds, _let_go, (path,))
    timer.daemon = True
    timer.start()


def _let_go(path: Path) -> None:
    with _kept_guard:
        conn = _kept.pop(path, None)
    if conn is not None:
        conn.close()  # the last connection of the instance to close checkpoints the file


def allow_columns(db: Db, columns: int) -> None:
    """Raise this file's memory limit, for as long as it is open, so that a table of `columns` columns (nested ones
    included) can be checkpointed."""
    needed = max(MEMORY_LIMIT_MB, 64 + columns * CHECKPOINT_KB_PER_COLUMN // 1024)
    if needed > MEMORY_LIMIT_MB:
        db.conn.execute(f"SET memory_limit = '{needed}MB'")


def locked(config: dict[str, Any], prepare: Callable[[duckdb.DuckDBPyConnection], object]) -> duckdb.DuckDBPyConnection:
    """A DuckDB instance of `config` that `prepare` may set up with file access still on (ATTACH, allowed paths),
    then external access off and the configuration locked, so that nothing a query says can switch it back."""
    conn = duckdb.connect(config={k: v for k, v in config.items() if k != "enable_external_access"})
    try:
        prepare(conn)
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
    except BaseException:
        conn.close()
        raise
    return conn


def first_row(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first row of a statement's result, or None. The whole result is read: DuckDB refuses the next statement
    on a connection whose last result was left half read."""
    rows = conn.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _write_lock(path: Path) -> threading.Lock:
    with _write_locks_guard:
        return _write_locks.setdefault(path, threading.Lock())


def _ensure_meta(db: Db) -> None:
    db.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {db.name(META)}")
    db.conn.execute(
        f"CREATE TABLE IF NOT EXISTS {db.name(META, 'datasets')} (dataset VARCHAR, created BIGINT, modified BIGINT, "
        "location VARCHAR, description VARCHAR, labels VARCHAR)"
    )
    db.conn.execute(
        f"CREATE TABLE IF NOT EXISTS {db.name(META, 'tables')} "
        '(dataset VARCHAR, "table" VARCHAR, kind VARCHAR, created BIGINT, modified BIGINT)'
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dataset_missing(project: str, dataset: str) -> NotFound:
    return NotFound(f"Not found: Dataset {project}:{dataset}")


def _table_missing(ref: TableRef) -> NotFound:
    return NotFound(f"Not found: Table {ref}")


# ---- datasets ---------------------------------------------------------------------------------


def create_dataset(
    wh: Warehouse,
    project: str,
    dataset: str,
    *,
    location: str | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> DatasetInfo:
    check_dataset(dataset)
    if dataset.casefold() == META:
        raise InvalidArgument(f"dataset id {META} is reserved by dicomlake")
    with connect(wh, project, write=True) as db:
        if _schema_name(db, dataset, exact=False) is not None:
            raise AlreadyExists(f"Already Exists: Dataset {project}:{dataset}")
        db.conn.execute(f"CREATE SCHEMA {db.name(dataset)}")
        now = _now_ms()
        db.conn.execute(f"DELETE FROM {db.name(META, 'datasets')} WHERE dataset = ?", [dataset])
        db.conn.execute(
            f"INSERT INTO {db.name(META, 'datasets')} VALUES (?, ?, ?, ?, ?, ?)",
            [dataset, now, now, location or DEFAULT_LOCATION, description, orjson.dumps(dict(labels or {})).decode()],
        )
        return _dataset_info(db, project, dataset)


def get_dataset(wh: Warehouse, project: str, dataset: str) -> DatasetInfo:
    with connect(wh, project, missing=_dataset_missing(project, dataset)) as db:
        if _schema_name(db, dataset) is None:
            raise _dataset_missing(project, dataset)
        return _dataset_info(db, project, dataset)


def list_datasets(wh: Warehouse, project: str, *, include_hidden: bool = False) -> list[DatasetInfo]:
    if not wh.file(project).exists():
        return []
    with connect(wh, project, missing=_dataset_missing(project, "")) as db:
        names = db.conn.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? AND NOT internal ORDER BY schema_name",
            [db.catalog],
        ).fetchall()
        return [
            _dataset_info(db, project, name)
            for (name,) in names
            if name != META and (include_hidden or not name.startswith("_"))
        ]


def delete_dataset(wh: Warehouse, project: str, dataset: str, *, delete_contents: bool = False) -> None:
    with connect(wh, project, missing=_dataset_missing(project, dataset), write=True) as db:
        if _schema_name(db, dataset) is None:
            raise _dataset_missing(project, dataset)
        if _relations(db, dataset) and not delete_contents:
            raise DatasetInUse(f"Dataset {project}:{dataset} is still in use")
        db.conn.execute(f"DROP SCHEMA {db.name(dataset)} CASCADE")
        db.conn.execute(f"DELETE FROM {db.name(META, 'datasets')} WHERE dataset = ?", [dataset])
        db.conn.execute(f"DELETE FROM {db.name(META, 'tables')} WHERE dataset = ?", [dataset])


def _schema_name(db: Db, dataset: str, exact: bool = True) -> str | None:
    """The dataset's schema as spelled in the file. DuckDB names are case-insensitive, BigQuery's dataset ids are
    not: lookups match exactly, creation refuses a name that differs only in case."""
    rows = db.conn.execute(
        "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? AND lower(schema_name) = lower(?) "
        "AND NOT internal AND schema_name != ?",
        [db.catalog, dataset, META],
    ).fetchall()
    for (name,) in rows:
        if name == dataset or not exact:
            return name
    return None


def _dataset_info(db: Db, project: str, dataset: str) -> DatasetInfo:
    row = first_row(
        db.conn,
        f"SELECT created, modified, location, description, labels FROM {db.name(META, 'datasets')} WHERE dataset = ?",
        [dataset],
    )
    if row is None:
        return DatasetInfo(project, dataset, 0, 0)
    created, modified, location, description, labels = row
    return DatasetInfo(project, dataset, created, modified, location, description, orjson.loads(labels or "{}"))


def _relations(db: Db, dataset: str) -> list[tuple[str, str]]:
    """(name, TABLE or VIEW) of every table and view of a dataset, by name."""
    return db.conn.execute(
        "SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
        "UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() WHERE database_name = ? AND schema_name = ? "
        "AND NOT internal ORDER BY 1",
        [db.catalog, dataset, db.catalog, dataset],
    ).fetchall()


# ---- tables -----------------------------------------------------------------------------------


def create_table(
    wh: Warehouse, ref: TableRef, fields: list[Field] | list[dict[str, Any]], *, description: str | None = None
) -> TableInfo:
    check_table(ref.table)
    wanted = normalize(fields)
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        if relation_kind(db, ref, exact=False) is not None:
            raise AlreadyExists(f"Already Exists: Table {ref}")
        _create(db, ref, wanted)
        if description:
            db.conn.execute(f"COMMENT ON TABLE {db.name(ref.dataset, ref.table)} IS {_literal(description)}")
        return _table_info(db, ref)


def get_table(wh: Warehouse, ref: TableRef) -> TableInfo:
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset)) as db:
        require_dataset(db, ref)
        return _table_info(db, ref)


def list_tables(wh: Warehouse, project: str, dataset: str) -> list[TableInfo]:
    with connect(wh, project, missing=_dataset_missing(project, dataset)) as db:
        require_dataset(db, TableRef(project, dataset, ""))
        times = dict(
            ((name, (created, modified)))
            for name, created, modified in db.conn.execute(
                f'SELECT "table", created, modified FROM {db.name(META, "tables")} WHERE dataset = ?', [dataset]
            ).fetchall()
        )
        return [
            TableInfo(TableRef(project, dataset, name), kind, *times.get(name, (0, 0)))
            for name, kind in _relations(db, dataset)
        ]


def delete_table(wh: Warehouse, ref: TableRef) -> None:
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        kind = relation_kind(db, ref)
        if kind is None:
            raise _table_missing(ref)
        db.conn.execute(f"DROP {kind} {db.name(ref.dataset, ref.table)}")
        db.conn.execute(
            f'DELETE FROM {db.name(META, "tables")} WHERE dataset = ? AND "table" = ?', [ref.dataset, ref.table]
        )


def evolve(wh: Warehouse, ref: TableRef, fields: list[Field] | list[dict[str, Any]]) -> list[Field]:
    """Widen a table to the union of its schema and `fields`: new columns, and new fields inside RECORD columns
    and inside the items of REPEATED RECORD columns, at any depth. A field that exists with another type, or as
    REPEATED on one side only, raises SchemaConflict. Returns the table's schema afterwards."""
    wanted = normalize(fields)
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        if relation_kind(db, ref) != "TABLE":
            raise _table_missing(ref)
        return _evolve(db, ref, wanted)


def patch_table(
    wh: Warehouse,
    ref: TableRef,
    *,
    fields: list[Field] | list[dict[str, Any]] | None = None,
    description: str | None = None,
    etag: str | None = None,
) -> TableInfo:
    """tables.patch of a table: `fields` is the whole new schema, which may add columns and nested fields (as
    `evolve`) but not leave one out; `description` replaces the table's. With `etag` (If-Match), a table
    changed since that etag was read raises PreconditionFailed and nothing changes."""
    wanted = normalize(fields) if fields is not None else None
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        info = _table_info(db, ref)
        if info.type != "TABLE":
            raise InvalidArgument(f"{ref} is a view: patch its view.query instead")
        if etag is not None and etag != info.etag:
            raise PreconditionFailed(f"Precondition check failed: {ref} changed since etag {etag} was read")
        if wanted is not None:
            given = {f["name"].casefold() for f in wanted}
            missing = [f["name"] for f in info.fields if f["name"].casefold() not in given]
            if missing:
                raise InvalidArgument(
                    f"Provided Schema does not match Table {ref}. Field {missing[0]} is missing in new schema"
                )
            _evolve(db, ref, wanted)
        if description is not None:
            db.conn.execute(f"COMMENT ON TABLE {db.name(ref.dataset, ref.table)} IS {_literal(description)}")
            _touch(db, ref)
        return _table_info(db, ref)


def append(
    wh: Warehouse, ref: TableRef, fields: list[Field] | list[dict[str, Any]], rows: Iterable[Mapping[str, Any]]
) -> int:
    """Add rows to a table, creating it (its dataset must exist) or evolving it to `fields` first, all in one
    transaction. A row maps column names to str, int, float, bool, date, time, tz-aware datetime, bytes, lists
    (REPEATED) and dicts (RECORD); absent keys are NULL. Returns the number of rows added."""
    check_table(ref.table)
    wanted = normalize(fields)
    rows = list(rows)
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        kind = relation_kind(db, ref)
        if kind == "VIEW":
            raise InvalidArgument(f"{ref} is a view; rows can only be added to tables")
        if kind is None:
            _create(db, ref, wanted)
            schema = wanted
        else:
            schema = _evolve(db, ref, wanted)
        if rows:
            data = _arrow_rows(schema, rows)
            db.conn.register("_dicomlake_rows", data)
            try:
                db.conn.execute(f"INSERT INTO {db.name(ref.dataset, ref.table)} BY NAME SELECT * FROM _dicomlake_rows")
            finally:
                db.conn.unregister("_dicomlake_rows")
            _touch(db, ref)
    return len(rows)


def truncate(wh: Warehouse, ref: TableRef) -> None:
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        if relation_kind(db, ref) != "TABLE":
            raise _table_missing(ref)
        db.conn.execute(f"DELETE FROM {db.name(ref.dataset, ref.table)}")
        _touch(db, ref)


def row_count(wh: Warehouse, ref: TableRef) -> int:
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset)) as db:
        require_dataset(db, ref)
        if relation_kind(db, ref) is None:
            raise _table_missing(ref)
        return first_row(db.conn, f"SELECT count(*) FROM {db.name(ref.dataset, ref.table)}")[0]


def read_rows(
    wh: Warehouse, ref: TableRef, start: int, count: int, columns: list[str] | None = None
) -> tuple[list[Field], pa.Table, int]:
    """Rows `start` .. `start + count` of a table in insertion order (tabledata.list), with their schema and the
    table's row count."""
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset)) as db:
        require_dataset(db, ref)
        kind = relation_kind(db, ref)
        if kind is None:
            raise _table_missing(ref)
        if kind == "VIEW":
            raise InvalidArgument(f"Cannot list a table of type VIEW: {ref}")
        fields = _fields(db, ref)
        if columns:
            by_name = {f["name"].casefold(): f for f in fields}
            unknown = [c for c in columns if c.casefold() not in by_name]
            if unknown:
                raise InvalidArgument(f"selectedFields names unknown columns: {', '.join(unknown)}")
            fields = [by_name[c.casefold()] for c in columns]
        name = db.name(ref.dataset, ref.table)
        (total,) = first_row(db.conn, f"SELECT count(*) FROM {name}")
        select = ", ".join(quote(f["name"]) for f in fields)
        data = db.conn.sql(f"SELECT {select} FROM {name} LIMIT {int(count)} OFFSET {int(start)}").to_arrow_table()
        return fields, data, total


def create_or_replace_view(wh: Warehouse, ref: TableRef, query: str) -> TableInfo:
    """Create or replace the view `ref` defined by a BigQuery Standard SQL query over tables of its own project
    (`dataset.table` names resolve in it). The query text is kept as written, for tables.get."""
    check_table(ref.table)
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        replace_view(db, ref, query)
        return _table_info(db, ref)


def replace_view(db: Db, ref: TableRef, query: str) -> None:
    """create_or_replace_view inside a write already open on the view's file (for a caller that changes a table
    and its view in one transaction)."""
    statement = bigquery_sql.parse(query, ref.project)
    if not statement.returns_rows:
        raise bigquery_sql.InvalidQuery("a view is defined by a query (SELECT ...)")
    others = sorted({t.project for t in statement.tables} - {ref.project})
    if others:
        raise bigquery_sql.InvalidQuery(f"a view can only read tables of its own project, not of {', '.join(others)}")
    for table in statement.tables:
        if relation_kind(db, TableRef(table.project, table.dataset, table.table)) is None:
            raise NotFound(f"Not found: Table {table}")
    if relation_kind(db, ref, exact=False) == "TABLE":
        raise AlreadyExists(f"Already Exists: Table {ref} (a table, not a view)")
    name = db.name(ref.dataset, ref.table)
    # Dataset-qualified names, so that the view also resolves when its file is attached under another name.
    body = statement.to_duckdb(lambda _project: None)
    try:
        db.conn.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    except duckdb.Error as exc:
        raise bigquery_sql.InvalidQuery(str(exc).splitlines()[0]) from None
    db.conn.execute(f"COMMENT ON VIEW {name} IS {_literal(query)}")
    _touch(db, ref, "VIEW")


def require_dataset(db: Db, ref: TableRef) -> None:
    if _schema_name(db, ref.dataset) is None:
        raise _dataset_missing(ref.project, ref.dataset)


def relation_kind(db: Db, ref: TableRef, exact: bool = True) -> str | None:
    """TABLE, VIEW or None. Exact by default (BigQuery table ids are case-sensitive); `exact=False` finds the
    names DuckDB would confuse with this one. Looked up in the metadata first: the first scan of DuckDB's own
    catalog functions costs some 7 ms on every newly opened file, more than a one-row append itself."""
    try:
        known = db.conn.execute(
            f'SELECT "table", kind FROM {db.name(META, "tables")} WHERE dataset = ? AND lower("table") = lower(?)',
            [ref.dataset, ref.table],
        ).fetchall()
    except duckdb.CatalogException:
        known = []
    for name, kind in known:
        if name == ref.table or not exact:
            try:
                db.conn.sql(f"FROM {db.name(ref.dataset, name)} LIMIT 0")
            except duckdb.CatalogException:
                break  # dropped by a statement the metadata did not see
            return kind
    return _catalog_kind(db, ref, exact)


def _catalog_kind(db: Db, ref: TableRef, exact: bool = True) -> str | None:
    for name, kind in db.conn.execute(
        "SELECT table_name, 'TABLE' FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
        "AND lower(table_name) = lower(?) UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() "
        "WHERE database_name = ? AND schema_name = ? AND lower(view_name) = lower(?)",
        [db.catalog, ref.dataset, ref.table, db.catalog, ref.dataset, ref.table],
    ).fetchall():
        if name == ref.table or not exact:
            return kind
    return None


def _fields(db: Db, ref: TableRef) -> list[Field]:
    name = db.name(ref.dataset, ref.table)
    required = {
        column
        for column, not_null in db.conn.execute(
            f'SELECT name, "notnull" FROM pragma_table_info({_literal(name)})'
        ).fetchall()
        if not_null
    }
    relation = db.conn.sql(f"FROM {name}")
    return [from_duckdb(n, t, n not in required) for n, t in zip(relation.columns, relation.types, strict=True)]


def _table_info(db: Db, ref: TableRef) -> TableInfo:
    kind = relation_kind(db, ref)
    if kind is None:
        raise _table_missing(ref)
    row = first_row(
        db.conn,
        f'SELECT created, modified FROM {db.name(META, "tables")} WHERE dataset = ? AND "table" = ?',
        [ref.dataset, ref.table],
    )
    created, modified = row or (0, 0)
    source, name_column = ("duckdb_tables()", "table_name") if kind == "TABLE" else ("duckdb_views()", "view_name")
    # A view keeps the BigQuery SQL it was made from as its comment; one made by a DuckDB statement has only its SQL.
    definition = "sql" if kind == "VIEW" else "NULL"
    comment, duckdb_sql = first_row(
        db.conn,
        f"SELECT comment, {definition} FROM {source} WHERE database_name = ? AND schema_name = ? AND {name_column} = ?",
        [db.catalog, ref.dataset, ref.table],
    ) or (None, None)
    fields = _fields(db, ref)
    if kind == "VIEW":
        return TableInfo(ref, kind, created, modified, fields, None, view_query=comment or duckdb_sql)
    (count,) = first_row(db.conn, f"SELECT count(*) FROM {db.name(ref.dataset, ref.table)}")
    return TableInfo(ref, kind, created, modified, fields, count, description=comment)


def _create(db: Db, ref: TableRef, fields: list[Field]) -> None:
    if not fields:
        raise InvalidArgument(f"table {ref} needs at least one column")
    columns = ", ".join(
        f"{quote(f['name'])} {duckdb_type(f)}{' NOT NULL' if f['mode'] == 'REQUIRED' else ''}" for f in fields
    )
    db.conn.execute(f"CREATE TABLE {db.name(ref.dataset, ref.table)} ({columns})")
    now = _now_ms()
    db.conn.execute(
        f"INSERT INTO {db.name(META, 'tables')} VALUES (?, ?, 'TABLE', ?, ?)", [ref.dataset, ref.table, now, now]
    )


def _evolve(db: Db, ref: TableRef, wanted: list[Field]) -> list[Field]:
    widened = merge(_fields(db, ref), wanted).strict()
    merged, additions = widened.fields, widened.additions
    name = db.name(ref.dataset, ref.table)
    for parent, added in additions:
        path = ".".join(quote(p) for p in (*parent, added["name"]))
        # A column added to a table with rows cannot be NOT NULL (BigQuery refuses new REQUIRED columns too).
        db.conn.execute(f"ALTER TABLE {name} ADD COLUMN {path} {duckdb_type(added)}")
    if additions:
        _touch(db, ref)
    return merged


def _touch(db: Db, ref: TableRef, kind: str = "TABLE") -> None:
    now = _now_ms()
    table = db.name(META, "tables")
    updated = db.conn.execute(
        f'UPDATE {table} SET modified = ?, kind = ? WHERE dataset = ? AND "table" = ? RETURNING 1',
        [now, kind, ref.dataset, ref.table],
    ).fetchall()
    if not updated:
        db.conn.execute(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", [ref.dataset, ref.table, kind, now, now])


def record_change(db: Db, ref: TableRef) -> None:
    """Bring the metadata of one table up to date after a SQL statement created, changed or dropped it."""
    kind = _catalog_kind(db, ref)
    if kind is None:
        db.conn.execute(
            f'DELETE FROM {db.name(META, "tables")} WHERE dataset = ? AND "table" = ?', [ref.dataset, ref.table]
        )
    else:
        _touch(db, ref, kind)


def _arrow_rows(fields: list[Field], rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of exactly the table's schema, gathered column by column: the cost follows the values
    present, not rows x columns, which matters for DICOM rows that fill a few hundred of thousands of columns."""
    count = len(rows)
    columns: dict[str, list[Any]] = {f["name"]: [None] * count for f in fields}
    folded = {name.casefold(): name for name in columns}
    for i, row in enumerate(rows):
        for key, value in row.items():
            column = columns.get(key)
            if column is None:
                real = folded.get(key.casefold())
                if real is None:
                    raise InvalidArgument(f"row {i} has a value for {key!r}, which is not a column of the schema")
                column = columns[real]
            column[i] = value
    for f in fields:
        if f["type"] == "JSON":
            columns[f["name"]] = [_json_text(v) for v in columns[f["name"]]]
    schema = arrow_schema(fields)
    arrays = []
    for arrow_field in schema:
        try:
            arrays.append(pa.array(columns[arrow_field.name], type=arrow_field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise InvalidArgument(f"values of column {arrow_field.name} do not fit its type: {exc}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _literal(text: str) -> str:
    """A SQL string literal, for the statements that take no parameters (COMMENT ON)."""
    return "'" + text.replace("'", "''") + "'"


def _json_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
