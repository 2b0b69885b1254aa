"""Run one BigQuery Standard SQL statement on the embedded warehouse: translated to DuckDB, run on the file of the
query's project (other projects' files attached read-only when the statement reads their tables), its result
stored as an Arrow IPC file with the result's BigQuery schema (`results.write`: a local file, or an object of the
warehouse's object store)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.warehouse import embedded, results
from dicomlake.warehouse.embedded import Db, TableRef, Warehouse
from dicomlake.warehouse.schema import Field, from_duckdb, quote

if TYPE_CHECKING:
    from dicomlake.warehouse.iceberg import IcebergWarehouse
from dicomlake.warehouse.sql import DENIED_FUNCTIONS, InvalidQuery, Statement, TableName, engine_functions, parse

BATCH_ROWS = 65_536
# A result larger than this fails (BigQuery's "Response too large to return"), rather than fill the disk.
MAX_RESULT_BYTES = 4 << 30
# How often a running query looks whether it must stop (timeout, jobs.cancel).
WATCH_INTERVAL = 0.1
# Table functions the engine's parse of a query may hold: UNNEST of an array.
TABLE_FUNCTIONS = frozenset({"unnest"})


class Stopped(InvalidArgument):
    """A query stopped before its end: by its time limit (`timeout`) or by jobs.cancel (`stopped`)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# Asked while a query runs: the reason it must stop now (a Stopped), or None.
StopCheck = Callable[[], Stopped | None]


@dataclass(frozen=True)
class Summary:
    fields: list[Field]
    total_rows: int
    statement_type: str
    # Rows inserted, updated or deleted by a DML statement.
    affected_rows: int | None = None


def run(
    wh: Warehouse | IcebergWarehouse,
    project: str,
    sql: str,
    *,
    default_dataset: tuple[str, str] | None = None,
    results_path: Path | results.Place | None = None,
    dry_run: bool = False,
    stop: StopCheck | None = None,
) -> Summary:
    """Run `sql` as issued in `project` (bare table names in `default_dataset`, a (project, dataset) pair). A
    statement that returns rows writes them to `results_path` (see `results.read`); `dry_run` checks the statement
    and returns its schema without running it. A statement that changes data runs on the file of the one project
    whose tables it names. `stop` is asked every WATCH_INTERVAL seconds while the statement runs: the Stopped it
    returns interrupts the engine and is raised."""
    statement = parse(sql, project, default_dataset)
    named = {t.project for t in statement.tables}
    if not statement.returns_rows and len(named) == 1:
        project = named.pop()
    if not isinstance(wh, Warehouse):
        # Iceberg: a statement whose commit met another process's runs again on the tables as they are now.
        iceberg = wh
        return iceberg.run(
            lambda: _run(
                iceberg.session(project, statement, write=not dry_run), project, statement, results_path, dry_run, stop
            ),
            "the tables of the statement",
        )
    return _run(_session(wh, project, statement), project, statement, results_path, dry_run, stop)


def _run(
    session: AbstractContextManager[tuple[Db, Callable[[str], str | None]]],
    project: str,
    statement: Statement,
    results_path: Path | results.Place | None,
    dry_run: bool,
    stop: StopCheck | None,
) -> Summary:
    with session as (db, catalog_of):
        for name in statement.tables if statement.returns_rows else ():
            _require(db if name.project == project else Db(db.conn, str(catalog_of(name.project))), name)
        duck_sql = statement.to_duckdb(catalog_of)
        try:
            if statement.returns_rows:
                check_engine_parse(db.conn, duck_sql)
            with _watched(db.conn, stop) as stopped:
                return _execute(db, duck_sql, statement, results_path, dry_run)
        except duckdb.InterruptException:
            if stopped:
                raise stopped[0] from None
            raise
        except duckdb.Error as exc:
            if embedded.is_busy(exc):
                raise
            raise InvalidQuery(_message(exc)) from None


def _execute(
    db: Db, duck_sql: str, statement: Statement, results_path: Path | results.Place | None, dry_run: bool
) -> Summary:
    if statement.returns_rows:
        return _select(db.conn, duck_sql, statement, results_path, dry_run)
    if dry_run:
        return Summary([], 0, statement.statement_type)
    row = embedded.first_row(db.conn, duck_sql)
    affected = None
    if statement.statement_type in ("INSERT", "UPDATE", "DELETE", "MERGE") and row is not None:
        affected = int(row[0])
    if statement.target is not None:
        target = statement.target
        embedded.record_change(db, TableRef(target.project, target.dataset, target.table))
    return Summary([], 0, statement.statement_type, affected)


@contextmanager
def _watched(conn: duckdb.DuckDBPyConnection, stop: StopCheck | None) -> Iterator[list[Stopped]]:
    """Interrupt `conn` as soon as `stop` says so; the list holds the reason once it did."""
    stopped: list[Stopped] = []
    if stop is None:
        yield stopped
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL):
            if not stopped:
                reason = stop()
                if reason is None:
                    continue
                stopped.append(reason)
            # Again and again until the statement ends: an interrupt that comes while the statement is still being
            # planned is spent there, and the engine then starts to run it.
            conn.interrupt()

    watcher = threading.Thread(target=watch, name="query-watchdog", daemon=True)
    watcher.start()
    try:
        yield stopped
    finally:
        done.set()
        watcher.join()


def check_engine_parse(conn: duckdb.DuckDBPyConnection, duck_sql: str) -> None:
    """The sandbox's third wall: the engine's own parse of a query names no table function but UNNEST and only
    functions of the allow-list (`sql.engine_functions` minus `sql.DENIED_FUNCTIONS`)."""
    (serialized,) = embedded.first_row(conn, "SELECT json_serialize_sql(?)", [duck_sql])
    tree = orjson.loads(serialized)
    if tree.get("error"):
        return  # not a statement the engine can run either: running it reports the error
    # generate_series here is GENERATE_ARRAY's, bounded by a guard (`sql._bounded_arrays`).
    allowed = (engine_functions() | {"unnest", "error", "generate_series"}) - (DENIED_FUNCTIONS - {"generate_series"})
    for node in _nodes(tree):
        if node.get("type") == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).casefold()
            if name not in TABLE_FUNCTIONS:
                raise InvalidQuery(f"Table-valued function not found: {name}. A query reads tables and UNNEST only")
        elif node.get("class") in ("FUNCTION", "WINDOW") and "function_name" in node:
            name = str(node["function_name"]).casefold()
            if name not in allowed:
                raise InvalidQuery(f"Function not found: {name}")


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _select(
    conn: duckdb.DuckDBPyConnection,
    duck_sql: str,
    statement: Statement,
    path: Path | results.Place | None,
    dry_run: bool,
) -> Summary:
    relation = conn.sql(duck_sql)
    try:
        fields = [from_duckdb(name, kind) for name, kind in zip(relation.columns, relation.types, strict=True)]
    except InvalidArgument as exc:
        raise InvalidQuery(exc.message) from None
    seen: set[str] = set()
    repeated: set[str] = set()
    for f in fields:
        folded = f["name"].casefold()
        if folded in seen:
            repeated.add(f["name"])
        seen.add(folded)
    duplicates = sorted(repeated)
    if duplicates:
        raise InvalidQuery(
            f"Duplicate column names in the result are not supported. Found duplicate(s): {', '.join(duplicates)}"
        )
    if dry_run or path is None:
        return Summary(fields, 0, statement.statement_type)
    reader = relation.to_arrow_reader(BATCH_ROWS)
    total = results.write(path, fields, reader.schema, _capped(reader))
    return Summary(fields, total, statement.statement_type)


def _capped(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    size = 0
    for batch in batches:
        size += batch.nbytes
        if size > MAX_RESULT_BYTES:
            raise Stopped(
                f"Response too large to return: the result passed {MAX_RESULT_BYTES >> 30} GiB; select fewer rows "
                "or columns, or write it to a table with CREATE TABLE ... AS SELECT",
                "responseTooLarge",
            )
        yield batch


@contextmanager
def _session(wh: Warehouse, project: str, statement: Statement) -> Iterator[tuple[Db, Callable[[str], str | None]]]:
    """The DuckDB connection a statement runs on, and the catalog each project's tables are found in."""
    projects = sorted({t.project for t in statement.tables} - {project})
    if not projects:
        if not wh.file(project).exists():
            if statement.tables:
                first = statement.tables[0]
                raise NotFound(f"Not found: Dataset {first.project}:{first.dataset} was not found in location US")
            conn = duckdb.connect(config=_in_memory_config(wh))
            try:
                yield Db(conn, "memory"), lambda _p: "memory"
            finally:
                conn.close()
            return
        missing = NotFound(f"Not found: Project {project}")
        with embedded.connect(wh, project, missing=missing, write=not statement.returns_rows) as db:
            yield db, lambda _p: db.catalog
        return
    if not statement.returns_rows:
        raise InvalidQuery("A statement that changes data can only name tables of one project")
    everyone = [project, *projects]
    aliases = {p: f"project_{i}" for i, p in enumerate(everyone)}
    for p in everyone:
        if p != project and not wh.file(p).exists():
            table = next(t for t in statement.tables if t.project == p)
            raise NotFound(f"Not found: Dataset {table.project}:{table.dataset} was not found in location US")

    def attach_all() -> duckdb.DuckDBPyConnection:
        def attach(conn: duckdb.DuckDBPyConnection) -> None:
            for p in everyone:
                if wh.file(p).exists():
                    path = str(wh.file(p)).replace("'", "''")
                    conn.execute(f"ATTACH '{path}' AS {quote(aliases[p])} (READ_ONLY)")

        return embedded.locked(_in_memory_config(wh), attach)

    conn = embedded.retrying(attach_all, f"the warehouse files of projects {', '.join(everyone)}")
    try:
        yield Db(conn, aliases[project]), aliases.get
    finally:
        conn.close()


def _in_memory_config(wh: Warehouse) -> dict[str, Any]:
    """A query's own DuckDB instance: the sandbox and memory limit of the files', spilling under the warehouse."""
    spill = wh.root / "tmp"
    spill.mkdir(parents=True, exist_ok=True)
    return {**embedded.CONFIG, "temp_directory": str(spill)}


def _require(db: Db, name: TableName) -> None:
    project, dataset, table = name.project, name.dataset, name.table
    ref = TableRef(project, dataset, table)
    try:
        embedded.require_dataset(db, ref)
    except NotFound:
        raise NotFound(f"Not found: Dataset {project}:{dataset} was not found in location US") from None
    if embedded.relation_kind(db, ref) is None:
        raise NotFound(f"Not found: Table {project}:{dataset}.{table} was not found in location US")


def _message(exc: duckdb.Error) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
