"""Run one BigQuery Standard SQL statement on the embedded warehouse: translated to DuckDB, run on the file of the
query's project (other projects' files attached read-only when the statement reads their tables), its result
stored as an Arrow IPC file with the result's BigQuery schema."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.warehouse import embedded, results
from dicomlake.warehouse.embedded import Db, TableRef, Warehouse
from dicomlake.warehouse.schema import Field, from_duckdb, quote
from dicomlake.warehouse.sql import InvalidQuery, Statement, TableName, parse

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class Summary:
    fields: list[Field]
    total_rows: int
    statement_type: str
    # Rows inserted, updated or deleted by a DML statement.
    affected_rows: int | None = None


def run(
    wh: Warehouse,
    project: str,
    sql: str,
    *,
    default_dataset: tuple[str, str] | None = None,
    results_path: Path | None = None,
    dry_run: bool = False,
) -> Summary:
    """Run `sql` as issued in `project` (bare table names in `default_dataset`, a (project, dataset) pair). A
    statement that returns rows writes them to `results_path` (see `results.read`); `dry_run` checks the statement
    and returns its schema without running it. A statement that changes data runs on the file of the one project
    whose tables it names."""
    statement = parse(sql, project, default_dataset)
    named = {t.project for t in statement.tables}
    if not statement.returns_rows and len(named) == 1:
        project = named.pop()
    with _session(wh, project, statement) as (db, catalog_of):
        for name in statement.tables if statement.returns_rows else ():
            _require(db if name.project == project else Db(db.conn, str(catalog_of(name.project))), name)
        duck_sql = statement.to_duckdb(catalog_of)
        try:
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
        except duckdb.Error as exc:
            if embedded.is_busy(exc):
                raise
            raise InvalidQuery(_message(exc)) from None


def _select(
    conn: duckdb.DuckDBPyConnection, duck_sql: str, statement: Statement, path: Path | None, dry_run: bool
) -> Summary:
    relation = conn.sql(duck_sql)
    try:
        fields = [from_duckdb(name, kind) for name, kind in zip(relation.columns, relation.types, strict=True)]
    except InvalidArgument as exc:
        raise InvalidQuery(exc.message) from None
    seen: set[str] = set()
    duplicates = sorted({f["name"] for f in fields if f["name"].casefold() in seen or seen.add(f["name"].casefold())})
    if duplicates:
        raise InvalidQuery(
            f"Duplicate column names in the result are not supported. Found duplicate(s): {', '.join(duplicates)}"
        )
    if dry_run or path is None:
        return Summary(fields, 0, statement.statement_type)
    reader = relation.to_arrow_reader(BATCH_ROWS)
    total = results.write(path, fields, reader.schema, iter(reader))
    return Summary(fields, total, statement.statement_type)


@contextmanager
def _session(wh: Warehouse, project: str, statement: Statement) -> Iterator[tuple[Db, Callable[[str], str | None]]]:
    """The DuckDB connection a statement runs on, and the catalog each project's tables are found in."""
    projects = sorted({t.project for t in statement.tables} - {project})
    if not projects:
        if not wh.file(project).exists():
            if statement.tables:
                first = statement.tables[0]
                raise NotFound(f"Not found: Dataset {first.project}:{first.dataset} was not found in location US")
            conn = duckdb.connect()
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
        conn = duckdb.connect()
        try:
            for p in everyone:
                if wh.file(p).exists():
                    path = str(wh.file(p)).replace("'", "''")
                    conn.execute(f"ATTACH '{path}' AS {quote(aliases[p])} (READ_ONLY)")
        except BaseException:
            conn.close()
            raise
        return conn

    conn = embedded.retrying(attach_all, f"the warehouse files of projects {', '.join(everyone)}")
    try:
        yield Db(conn, aliases[project]), aliases.get
    finally:
        conn.close()


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
