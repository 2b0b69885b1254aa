"""BigQuery datasets and tables as Apache Iceberg tables that every process and machine shares: the catalog in the
index database (pyiceberg's SQL catalog: SQLite by default, the shared PostgreSQL at scale), data and metadata
files under the warehouse URL (`file://`, `s3://`, `gs://`). A dataset is the namespace `(project, dataset)`, a
table the Iceberg table `(project, dataset, table)`; RECORD columns are structs, REPEATED ones lists.

Every write is one Iceberg commit, and a commit that finds the table changed by another process meanwhile is
tried again on the table as it is now. Queries run on DuckDB over the Parquet files of the tables' current
snapshots (`session`): they read a snapshot, so they neither wait for a writer nor make one wait.

What BigQuery has and Iceberg does not is kept in properties: a dataset's location, labels, description and
times, and its views (BigQuery SQL, expanded when a query names them) in the namespace's; a table's description
and creation time in the table's. Outside readers (pyiceberg, DuckDB, Polars, Spark, Trino) open the same catalog
and read the tables as they are."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import orjson
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.schema import Schema as IcebergSchema
from pyiceberg.table import Table as IcebergTable
from pyiceberg.types import StructType

from dicomlake.dicom.flatten import FlatRow
from dicomlake.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed, Unavailable
from dicomlake.warehouse import dicom_tables, embedded
from dicomlake.warehouse import sql as bigquery_sql
from dicomlake.warehouse.embedded import (
    DEFAULT_LOCATION,
    META,
    DatasetInfo,
    DatasetInUse,
    Db,
    TableInfo,
    TableRef,
    _dataset_missing,
    _now_ms,
    _table_missing,
    check_dataset,
    check_project,
    check_table,
)
from dicomlake.warehouse.schema import Field, duckdb_type, from_duckdb, merge, normalize, quote
from dicomlake.warehouse.stream_buffer import FLUSHED, Entry, StreamBuffer

log = logging.getLogger("dicomlake.tables")

# How long a commit that keeps meeting other processes' commits is tried again before it fails (UNAVAILABLE).
COMMIT_TIMEOUT = 60.0
# Properties of every table: metadata files of replaced versions are deleted after a few commits.
TABLE_PROPERTIES = {
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "8",
    "write.parquet.compression-codec": "zstd",
    # Appends merge the manifests once there are this many, so planning a scan reads a few files, not one per commit.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}
# Streams commit often. After a commit `maintain` bounds what that leaves: data files smaller than SMALL_FILE_BYTES
# are rewritten as one once there are more than MAX_SMALL_FILES of them; snapshots older than KEEP_SECONDS are
# expired (but never the last KEEP_SNAPSHOTS: their summaries say which stream events and export shards a table
# holds, which a redelivery after a crash asks within a lease, see operations/streaming.py), and the schemas no
# snapshot uses removed; files that no snapshot names any more are deleted after ORPHAN_SECONDS.
# A stream's rows wait in the streaming buffer (stream_buffer.py), visible to queries, until FLUSH_ROWS of them
# or FLUSH_SECONDS have gathered: then they are appended in one commit.
FLUSH_ROWS = 5000
FLUSH_SECONDS = 10.0
SMALL_FILE_BYTES = 32 << 20
MAX_SMALL_FILES = 16
KEEP_SECONDS = 120
KEEP_SNAPSHOTS = 16
ORPHAN_SECONDS = 3600
_VIEW = "dicomlake.view."  # namespace property per view: {"query", "created", "modified"}
_CREATED = "dicomlake.created"
_MODIFIED = "dicomlake.modified"
_LOCATION = "dicomlake.location"
_LABELS = "dicomlake.labels"
_DESCRIPTION = "comment"  # the property Iceberg engines show as a table's or namespace's comment
# The snapshot summary property naming the export shard whose rows a commit added.
WRITER = "dicomlake.writer"


# pyiceberg deep-copies the whole table metadata after applying each update, and reapplies a transaction's updates
# every time its metadata is asked for: some 30 copies per commit, each walking every field of every schema kept
# (a 2,000-column table took 30 s a commit). Its metadata models are frozen, so a schema can be shared, not copied.
IcebergSchema.__deepcopy__ = lambda self, memo=None: self  # type: ignore[method-assign]
# Schema evolution asks for the schema as a struct once per field, and each time builds and validates it again
# (quadratic in the columns: 12 s at 2,000). A frozen schema's struct is built once.
_as_struct = IcebergSchema.as_struct


def _cached_struct(schema: IcebergSchema) -> Any:
    private = schema.__pydantic_private__
    if private is None:
        return _as_struct(schema)
    found = private.get("_dicomlake_struct")
    if found is None:
        found = private["_dicomlake_struct"] = _as_struct(schema)
    return found


IcebergSchema.as_struct = _cached_struct  # type: ignore[method-assign,assignment]
# A struct finds a field by name by walking its fields, and schema evolution asks once per field of the new
# schema: 3 s of each evolution of a 2,000-column table. A frozen struct's fields are indexed once.
_field_by_name = StructType.field_by_name


def _indexed_field_by_name(struct: StructType, name: str, case_sensitive: bool = True) -> Any:
    private = struct.__pydantic_private__
    if private is None or len(struct.fields) < 16:
        return _field_by_name(struct, name, case_sensitive)
    index = private.get("_dicomlake_names")
    if index is None:
        exact: dict[str, Any] = {}
        folded: dict[str, Any] = {}
        for f in struct.fields:
            exact.setdefault(f.name, f)
            folded.setdefault(f.name.lower(), f)
        index = private["_dicomlake_names"] = (exact, folded)
    return index[0].get(name) if case_sensitive else index[1].get(name.lower())


StructType.field_by_name = _indexed_field_by_name  # type: ignore[method-assign,assignment]


class _Catalog(SqlCatalog):
    """pyiceberg's SQL catalog, keeping the metadata files it has read: a metadata file never changes (a commit
    writes a new one), and parsing one of a wide table costs more than the commit that follows (1.3 s at 2,000
    columns), while loading a table happens on every call."""

    CACHED = 32

    def __init__(self, name: str, **properties: str) -> None:
        super().__init__(name, **properties)
        self._metadata: OrderedDict[str, Any] = OrderedDict()
        self._metadata_guard = threading.Lock()

    def _convert_orm_to_iceberg(self, orm_table: Any) -> IcebergTable:
        location = orm_table.metadata_location
        with self._metadata_guard:
            metadata = self._metadata.get(location)
            if metadata is not None:
                self._metadata.move_to_end(location)
        if metadata is None or not location:
            table = super()._convert_orm_to_iceberg(orm_table)
            self.remember(table)
            return table
        return IcebergTable(
            identifier=(*Catalog.identifier_to_tuple(orm_table.table_namespace), orm_table.table_name),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    # The index database's turn to write, when it is a SQLite file (set by IcebergWarehouse).
    write_lock: Callable[[], AbstractContextManager[None]] = nullcontext

    def commit_table(self, table: IcebergTable, requirements: Any, updates: Any) -> Any:
        """Commit, and keep the metadata the commit wrote: this process reads it next."""
        with self.write_lock():
            response = super().commit_table(table, requirements, updates)
        with self._metadata_guard:
            self._metadata[response.metadata_location] = response.metadata
            while len(self._metadata) > self.CACHED:
                self._metadata.popitem(last=False)
        return response

    def remember(self, table: IcebergTable) -> None:
        """Keep the metadata of `table` (as loaded, or as a commit of this process left it)."""
        with self._metadata_guard:
            self._metadata[table.metadata_location] = table.metadata
            while len(self._metadata) > self.CACHED:
                self._metadata.popitem(last=False)


_catalogs: dict[tuple[str, str], _Catalog] = {}
_buffers: dict[tuple[str, str], StreamBuffer] = {}
_catalogs_guard = threading.Lock()


class IcebergWarehouse:
    """The Iceberg tables of one catalog (the index database) and one warehouse location. `root` is this process's
    own folder for query results, spill files and job records."""

    def __init__(
        self,
        database_url: str,
        location: str,
        root: Path,
        write_lock: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        """`database_url`: the SQLAlchemy URL of the index database, which holds the catalog (`Database.url`).
        `write_lock`: the index database's turn to write (`Database.write_lock`), taken by the catalog's commits
        and the streaming buffer's writes on SQLite."""
        self.uri = database_url
        self.write_lock = write_lock
        self.location = location.rstrip("/")
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"IcebergWarehouse({self.location!r})"

    @property
    def catalog(self) -> _Catalog:
        key = (self.uri, self.location)
        with _catalogs_guard:
            catalog = _catalogs.get(key)
            if catalog is None:
                catalog = _catalogs[key] = _Catalog(
                    "dicomlake", uri=self.uri, warehouse=self.location, pool_pre_ping="true", **_io_properties()
                )
            if self.write_lock is not None and catalog.write_lock is nullcontext:
                catalog.write_lock = self.write_lock
            return catalog

    @property
    def buffer(self) -> StreamBuffer:
        """The streaming buffer (`stream_buffer.py`), in the catalog's database."""
        key = (self.uri, self.location)
        with _catalogs_guard:
            found = _buffers.get(key)
        if found is None:
            found = StreamBuffer(self.catalog.engine, self.write_lock)
            with _catalogs_guard:
                _buffers[key] = found
        return found

    @functools.cached_property
    def results(self) -> tuple[Any, str]:
        """Where query jobs keep their results for every machine to read, `<location>/_jobs`: pyarrow's filesystem
        of the tables' files (with the catalog's credentials) and the path in it."""
        from pyiceberg.io.pyarrow import PyArrowFileIO

        scheme, netloc, path = PyArrowFileIO.parse_location(self.location + "/_jobs")
        return PyArrowFileIO(self.catalog.properties).fs_by_scheme(scheme, netloc), path

    def read(self, ref: TableRef) -> tuple[IcebergTable | None, list[Entry]]:
        """The table as it is now and its buffered rows that it does not hold yet (the buffer is read first: an
        entry flushed meanwhile is then held by the table and left out)."""
        entries = self.buffer.pending(_table_id(ref))
        table = self.find(ref)
        if table is None:
            return None, []
        mark = flushed_mark(table)
        return table, [e for e in entries if e.id > mark]

    def flush(self, ref: TableRef, *, wait: bool = False) -> None:
        """Append the table's buffered rows to it in one commit (nothing when another process is flushing it,
        unless `wait`: then wait for that flush and flush again)."""
        table_id = _table_id(ref)

        def attempt() -> tuple[int, bool]:
            table, entries = self.read(ref)
            if table is None or not entries:
                return (flushed_mark(table) if table is not None else 0), False
            data = self._buffered_rows(table, entries)
            with table.transaction() as tx:
                append_rows(tx, table, fit_to(data, tx.table_metadata.schema().as_arrow()))
                tx.set_properties({FLUSHED: str(entries[-1].id)})
            return entries[-1].id, True

        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            with self.buffer.flushing(table_id) as mine:
                if mine:
                    # The entries up to the mark are the table's now, also those of a flush that died before
                    # forgetting them.
                    mark, committed = committing(attempt, f"table {ref}")
                    if mark:
                        self.buffer.flushed(table_id, mark)
                    break
            if not wait:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(f"the streaming buffer of {ref} stayed busy for {COMMIT_TIMEOUT:g} s; try again")
            time.sleep(0.05)
        if committed:
            self.maintain(ref)

    def flush_due(self, ref: TableRef | None = None) -> None:
        """Flush the tables (or one) whose buffer holds FLUSH_ROWS rows or rows older than FLUSH_SECONDS."""
        refs = [ref] if ref is not None else [_ref_of(t) for t in self.buffer.tables()]
        for each in refs:
            table = self.find(each)
            if table is None:
                self.buffer.drop(_table_id(each))
                continue
            rows, oldest = self.buffer.summary(_table_id(each), flushed_mark(table))
            if rows >= FLUSH_ROWS or (oldest is not None and oldest < _now_ms() - FLUSH_SECONDS * 1000):
                self.flush(each)

    def _buffered_rows(self, table: IcebergTable, entries: list[Entry]) -> pa.Table:
        """The entries' rows as one Arrow table of the table's columns."""
        conn = connect(self.root, [])
        try:
            return conn.sql(buffer_sql(table, register_entries(conn, entries, "_buffer_"))).to_arrow_table()
        finally:
            conn.close()

    # ---- datasets -----------------------------------------------------------------------------

    def create_dataset(
        self,
        project: str,
        dataset: str,
        *,
        location: str | None = None,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> DatasetInfo:
        check_project(project)
        check_dataset(dataset)
        if dataset.casefold() == META:
            raise InvalidArgument(f"dataset id {META} is reserved by dicomlake")
        if any(name.casefold() == dataset.casefold() for name in self._dataset_names(project)):
            raise AlreadyExists(f"Already Exists: Dataset {project}:{dataset}")
        now = str(_now_ms())
        properties = {
            _CREATED: now,
            _MODIFIED: now,
            _LOCATION: location or DEFAULT_LOCATION,
            _LABELS: orjson.dumps(dict(labels or {})).decode(),
        }
        if description:
            properties[_DESCRIPTION] = description
        try:
            self.catalog.create_namespace((project, dataset), properties)
        except NamespaceAlreadyExistsError:
            raise AlreadyExists(f"Already Exists: Dataset {project}:{dataset}") from None
        return self.get_dataset(project, dataset)

    def get_dataset(self, project: str, dataset: str) -> DatasetInfo:
        return _dataset_info(project, dataset, self._properties(project, dataset))

    def list_datasets(self, project: str, *, include_hidden: bool = False) -> list[DatasetInfo]:
        check_project(project)
        return [
            self.get_dataset(project, name)
            for name in sorted(self._dataset_names(project))
            if include_hidden or not name.startswith("_")
        ]

    def delete_dataset(self, project: str, dataset: str, *, delete_contents: bool = False) -> None:
        properties = self._properties(project, dataset)
        tables = self.catalog.list_tables((project, dataset))
        views = [k for k in properties if k.startswith(_VIEW)]
        if (tables or views) and not delete_contents:
            raise DatasetInUse(f"Dataset {project}:{dataset} is still in use")
        for identifier in tables:
            self.catalog.purge_table(identifier)
            self.buffer.drop(".".join(identifier))
        self.catalog.drop_namespace((project, dataset))

    def _dataset_names(self, project: str) -> list[str]:
        try:
            namespaces = self.catalog.list_namespaces((project,))
        except NoSuchNamespaceError:
            return []
        return [ns[1] for ns in namespaces if len(ns) == 2]

    def _properties(self, project: str, dataset: str) -> dict[str, str]:
        check_project(project)
        check_dataset(dataset)
        try:
            return self.catalog.load_namespace_properties((project, dataset))
        except NoSuchNamespaceError:
            raise _dataset_missing(project, dataset) from None

    # ---- tables -------------------------------------------------------------------------------

    def create_table(
        self, ref: TableRef, fields: list[Field] | list[dict[str, Any]], *, description: str | None = None
    ) -> TableInfo:
        check_table(ref.table)
        wanted = normalize(fields)
        if not wanted:
            raise InvalidArgument(f"table {ref} needs at least one column")
        properties = self._properties(ref.project, ref.dataset)
        if self._kind(ref, properties, exact=False) is not None:
            raise AlreadyExists(f"Already Exists: Table {ref}")
        self._create(ref, wanted, description)
        return self.get_table(ref)

    def _create(self, ref: TableRef, fields: list[Field], description: str | None = None) -> IcebergTable:
        properties = {**TABLE_PROPERTIES, _CREATED: str(_now_ms())}
        if description:
            properties[_DESCRIPTION] = description
        try:
            return self.catalog.create_table(_ident(ref), schema=arrow_schema(fields), properties=properties)
        except TableAlreadyExistsError:
            return self.load(ref)  # made by another process meanwhile

    def load(self, ref: TableRef) -> IcebergTable:
        try:
            return self.catalog.load_table(_ident(ref))
        except NoSuchTableError:
            self._properties(ref.project, ref.dataset)
            raise _table_missing(ref) from None

    def find(self, ref: TableRef) -> IcebergTable | None:
        """The table, or None when it does not exist (its dataset must)."""
        try:
            return self.catalog.load_table(_ident(ref))
        except NoSuchTableError:
            self._properties(ref.project, ref.dataset)
            return None

    def get_table(self, ref: TableRef) -> TableInfo:
        properties = self._properties(ref.project, ref.dataset)
        view = _view(properties, ref.table)
        if view is not None:
            return TableInfo(
                ref,
                "VIEW",
                view["created"],
                view["modified"],
                self._view_fields(ref, view["query"]),
                None,
                view["query"],
            )
        table = self.load(ref)
        return _table_info(ref, table)

    def list_tables(self, project: str, dataset: str) -> list[TableInfo]:
        properties = self._properties(project, dataset)
        infos = [
            TableInfo(TableRef(project, dataset, identifier[-1]), "TABLE", 0, 0)
            for identifier in self.catalog.list_tables((project, dataset))
        ]
        for key, value in properties.items():
            if key.startswith(_VIEW):
                view = orjson.loads(value)
                infos.append(
                    TableInfo(TableRef(project, dataset, key[len(_VIEW) :]), "VIEW", view["created"], view["modified"])
                )
        return sorted(infos, key=lambda info: info.ref.table)

    def delete_table(self, ref: TableRef) -> None:
        properties = self._properties(ref.project, ref.dataset)
        if _view(properties, ref.table) is not None:
            self.catalog.update_namespace_properties((ref.project, ref.dataset), removals={_VIEW + ref.table})
            return
        try:
            self.catalog.purge_table(_ident(ref))
        except NoSuchTableError:
            raise _table_missing(ref) from None
        self.buffer.drop(_table_id(ref))

    def patch_table(
        self,
        ref: TableRef,
        *,
        fields: list[Field] | list[dict[str, Any]] | None = None,
        description: str | None = None,
        etag: str | None = None,
    ) -> TableInfo:
        """tables.patch of a table (see `embedded.patch_table`), as one commit that fails with PreconditionFailed
        when `etag` no longer names the table as it is."""
        wanted = normalize(fields) if fields is not None else None
        properties = self._properties(ref.project, ref.dataset)
        if _view(properties, ref.table) is not None:
            raise InvalidArgument(f"{ref} is a view: patch its view.query instead")

        def attempt() -> None:
            table = self.load(ref)
            info = _table_info(ref, table)
            if etag is not None and etag != info.etag:
                raise PreconditionFailed(f"Precondition check failed: {ref} changed since etag {etag} was read")
            with table.transaction() as tx:
                if wanted is not None:
                    given = {f["name"].casefold() for f in wanted}
                    missing = [f["name"] for f in info.fields if f["name"].casefold() not in given]
                    if missing:
                        raise InvalidArgument(
                            f"Provided Schema does not match Table {ref}. Field {missing[0]} is missing in new schema"
                        )
                    merged = merge(info.fields, wanted).strict().fields
                    if merged != info.fields:
                        with tx.update_schema() as update:
                            widen(update, info.fields, merged)
                if description is not None:
                    tx.set_properties({_DESCRIPTION: description})

        committing(attempt, f"table {ref}")
        return self.get_table(ref)

    def evolve(self, table: IcebergTable, fields: list[Field]) -> tuple[IcebergTable, list[Field]]:
        """Widen `table` to the union of its schema and `fields` (SchemaConflict for a changed type), as one
        commit when anything is added."""
        current = table_fields(table)
        merged = merge(current, fields).strict().fields
        if merged != current:
            with table.update_schema() as update:
                widen(update, current, merged)
        return table, merged

    def append(
        self, ref: TableRef, fields: list[Field] | list[dict[str, Any]], rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Add rows (see `embedded.append`), creating the table or widening it first, in one commit."""
        check_table(ref.table)
        wanted = normalize(fields)
        rows = list(rows)
        properties = self._properties(ref.project, ref.dataset)
        if _view(properties, ref.table) is not None:
            raise InvalidArgument(f"{ref} is a view; rows can only be added to tables")

        def attempt() -> None:
            table = self.find(ref) or self._create(ref, wanted)
            current = table_fields(table)
            merged = merge(current, wanted).strict().fields
            data = embedded._arrow_rows(merged, rows) if rows else None
            with table.transaction() as tx:
                if merged != current:
                    with tx.update_schema() as update:
                        widen(update, current, merged)
                if data is not None:
                    append_rows(tx, table, fit_to(data, tx.table_metadata.schema().as_arrow()))

        committing(attempt, f"table {ref}")
        return len(rows)

    def truncate(self, ref: TableRef) -> None:
        properties = self._properties(ref.project, ref.dataset)
        if _view(properties, ref.table) is not None:
            raise _table_missing(ref)
        self.flush(ref, wait=True)
        committing(lambda: self.load(ref).delete(AlwaysTrue()), f"table {ref}")

    def row_count(self, ref: TableRef) -> int:
        """The rows of the table's files and of its streaming buffer."""
        table, entries = self.read(ref)
        if table is None:
            raise _table_missing(ref)
        return _row_count(table) + sum(e.rows for e in entries)

    def read_rows(
        self, ref: TableRef, start: int, count: int, columns: list[str] | None = None
    ) -> tuple[list[Field], pa.Table, int]:
        """Rows `start` .. `start + count` of a table in file order (tabledata.list)."""
        properties = self._properties(ref.project, ref.dataset)
        if _view(properties, ref.table) is not None:
            raise InvalidArgument(f"Cannot list a table of type VIEW: {ref}")
        table, entries = self.read(ref)
        if table is None:
            raise _table_missing(ref)
        fields = table_fields(table)
        if columns:
            by_name = {f["name"].casefold(): f for f in fields}
            unknown = [c for c in columns if c.casefold() not in by_name]
            if unknown:
                raise InvalidArgument(f"selectedFields names unknown columns: {', '.join(unknown)}")
            fields = [by_name[c.casefold()] for c in columns]
        total = _row_count(table) + sum(e.rows for e in entries)
        conn = connect(self.root, _local_files(table))
        try:
            relation = conn.sql(_register_scan(conn, table, entries, [f["name"] for f in fields]))
            data = relation.limit(int(count), offset=int(start)).to_arrow_table()
        finally:
            conn.close()
        return fields, data, total

    # ---- views --------------------------------------------------------------------------------

    def create_or_replace_view(self, ref: TableRef, query: str) -> TableInfo:
        """Create or replace the view `ref`: BigQuery SQL over tables of its own project, kept as written."""
        check_table(ref.table)
        properties = self._properties(ref.project, ref.dataset)
        statement = bigquery_sql.parse(query, ref.project)
        if not statement.returns_rows:
            raise bigquery_sql.InvalidQuery("a view is defined by a query (SELECT ...)")
        others = sorted({t.project for t in statement.tables} - {ref.project})
        if others:
            raise bigquery_sql.InvalidQuery(
                f"a view can only read tables of its own project, not of {', '.join(others)}"
            )
        if self._kind(ref, properties, exact=False) == "TABLE":
            raise AlreadyExists(f"Already Exists: Table {ref} (a table, not a view)")
        self._view_fields(ref, query)  # it must run
        old = _view(properties, ref.table)
        now = _now_ms()
        record = {"query": query, "created": old["created"] if old else now, "modified": now}
        self.catalog.update_namespace_properties(
            (ref.project, ref.dataset), updates={_VIEW + ref.table: orjson.dumps(record).decode()}
        )
        return self.get_table(ref)

    def _view_fields(self, ref: TableRef, query: str) -> list[Field]:
        statement = bigquery_sql.parse(query, ref.project)
        with self.session(ref.project, statement) as (db, catalog_of):
            try:
                relation = db.conn.sql(statement.to_duckdb(catalog_of))
            except duckdb.Error as exc:
                raise bigquery_sql.InvalidQuery(str(exc).splitlines()[0]) from None
            return [from_duckdb(n, t) for n, t in zip(relation.columns, relation.types, strict=True)]

    def _kind(self, ref: TableRef, properties: dict[str, str], exact: bool = True) -> str | None:
        for key in properties:
            if key.startswith(_VIEW) and _same(key[len(_VIEW) :], ref.table, exact):
                return "VIEW"
        for identifier in self.catalog.list_tables((ref.project, ref.dataset)):
            if _same(identifier[-1], ref.table, exact):
                return "TABLE"
        return None

    # ---- upkeep -------------------------------------------------------------------------------

    def maintain(self, ref: TableRef) -> None:
        """Compact the table's small files, expire its old snapshots and unused schemas, delete orphan files
        (see MAX_SMALL_FILES). Each step is one commit against the table as read; one that meets another process's
        commit is left for the next time. Readers keep reading the snapshot they started on."""
        table = self.find(ref)
        if table is None:
            return
        try:
            table = self._compact(table)
            self._expire(table)
        except (CommitFailedException, ValidationException):
            return  # another process committed meanwhile (pyiceberg refuses a rewrite beside a new append)
        except Exception:  # upkeep must never fail the write it follows: the next one tries again
            log.exception("upkeep of table %s failed", ref)

    def _compact(self, table: IcebergTable) -> IcebergTable:
        small = [t for t in _tasks(table) if t.file.file_size_in_bytes < SMALL_FILE_BYTES]
        if len(small) <= MAX_SMALL_FILES:
            return table
        from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files  # no public rewrite of files yet

        # pyiceberg's own reader: the files' columns by field id, in the table's schema as it is now, in Arrow's
        # memory (a DuckDB instance's 256 MB does not hold a few thousand columns of many files at once).
        data = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(small)
        data = fit_to(data, table.schema().as_arrow())
        with table.transaction() as tx:
            properties = {"dicomlake.compacted": str(len(small))}
            with tx.update_snapshot(snapshot_properties=properties).overwrite() as rewrite:
                for task in small:
                    rewrite.delete_data_file(task.file)
                for data_file in _dataframe_to_data_files(
                    table_metadata=tx.table_metadata, df=data, io=table.io, write_uuid=rewrite.commit_uuid
                ):
                    rewrite.append_data_file(data_file)
        return table.refresh()

    def _expire(self, table: IcebergTable) -> None:
        from pyiceberg.table.update import RemoveSchemasUpdate

        snapshots = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
        cutoff = _now_ms() - KEEP_SECONDS * 1000
        old = [s.snapshot_id for s in snapshots[:-KEEP_SNAPSHOTS] if s.timestamp_ms < cutoff]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
            table = table.refresh()
        used = {s.schema_id for s in table.metadata.snapshots} | {table.metadata.current_schema_id}
        unused = [s.schema_id for s in table.metadata.schemas if s.schema_id not in used]
        if unused:
            with table.transaction() as tx:
                # No public call for it in pyiceberg 0.12.
                tx._apply((RemoveSchemasUpdate.model_validate({"schema-ids": unused}),))
            table = table.refresh()
        if old:
            self._delete_orphans(table)

    def _delete_orphans(self, table: IcebergTable) -> None:
        """Delete the data files under a local table's folder that no snapshot names and that are older than
        ORPHAN_SECONDS (younger ones may belong to a commit in progress)."""
        parsed = urlparse(table.metadata.location)
        if parsed.scheme not in ("", "file"):
            return
        folder = Path(parsed.path) / "data"
        if not folder.is_dir():
            return
        named = set()
        for snapshot in table.metadata.snapshots:
            for manifest in snapshot.manifests(table.io):
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                    named.add(_local_path(entry.data_file.file_path))
        cutoff = time.time() - ORPHAN_SECONDS
        for path in folder.rglob("*.parquet"):
            if str(path) not in named and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    # ---- queries ------------------------------------------------------------------------------

    @contextmanager
    def session(
        self, project: str, statement: bigquery_sql.Statement, *, write: bool = True
    ) -> Iterator[tuple[Db, Callable[[str], str | None]]]:
        """A DuckDB connection in which every table and view the statement names is found where
        `statement.to_duckdb(catalog_of)` names it: tables as views over their current snapshot's files, a view as
        its query. A statement that changes data gets its target as a table of its own, written back as one commit
        when the block ends without an error (and run again by the caller if that commit meets another)."""
        projects = [project, *sorted({t.project for t in statement.tables} - {project})]
        aliases = {p: f"project_{i}" for i, p in enumerate(projects)}
        target = statement.target if write and not statement.returns_rows else None
        plan = _Plan(self, aliases)
        for name in statement.tables:
            plan.add(TableRef(name.project, name.dataset, name.table), materialize=name == target)
        if target is not None:
            plan.datasets.add((target.project, target.dataset))
        conn = connect(self.root, plan.files)
        try:
            for p in projects:
                conn.execute(f"ATTACH ':memory:' AS {quote(aliases[p])}")
            db = Db(conn, aliases[project])
            for p, dataset in sorted(plan.datasets):
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(aliases[p])}.{quote(dataset)}")
            if target is not None:  # a statement that changes data records what it changed there
                for p in projects:
                    embedded._ensure_meta(Db(conn, aliases[p]))
            scans = [
                _register_scan(conn, plan.tables[ref], entries, prefix=f"_buffer_{i}_")
                for i, (ref, entries) in enumerate(plan.buffered.items())
            ]
            for statement_sql in plan.statements:
                conn.execute(re.sub(r"\{scan:(\d+)\}", lambda m: scans[int(m.group(1))], statement_sql))
            yield db, aliases.get
            if target is not None:
                self._write_back(Db(conn, aliases[target.project]), plan, target, statement)
        finally:
            conn.close()

    def _write_back(self, db: Db, plan: _Plan, target: bigquery_sql.TableName, statement: Any) -> None:
        ref = TableRef(target.project, target.dataset, target.table)
        kind = embedded._catalog_kind(db, ref)
        before = plan.tables.get(ref)
        had_view = plan.views.get(ref)
        if kind == "TABLE":
            name = db.name(ref.dataset, ref.table)
            data = db.conn.sql(f"FROM {name}").to_arrow_table()
            fields = embedded._fields(db, ref)
            if had_view is not None:
                self.catalog.update_namespace_properties((ref.project, ref.dataset), removals={_VIEW + ref.table})
            if before is None:
                if self.find(ref) is not None:
                    raise AlreadyExists(f"Already Exists: Table {ref}")
                table = self._create(ref, fields)
                if data.num_rows:
                    table.append(fit_to(data, table.schema().as_arrow()))
                return
            _, merged = self.evolve(before, fields)
            table = before.refresh() if merged != table_fields(before) else before
            if table.metadata.current_snapshot_id != before.metadata.current_snapshot_id:
                raise CommitFailedException(f"{ref} changed while the statement ran")
            table.overwrite(fit_to(data, table.schema().as_arrow()))
        elif kind == "VIEW":
            tree = statement.tree.expression if hasattr(statement, "tree") else None
            if tree is None:
                raise InvalidArgument("CREATE VIEW needs AS SELECT ...")
            self.create_or_replace_view(ref, tree.sql(dialect="bigquery"))
        elif before is not None:
            self.catalog.purge_table(_ident(ref))
        elif had_view is not None:
            self.catalog.update_namespace_properties((ref.project, ref.dataset), removals={_VIEW + ref.table})

    def run(self, attempt: Callable[[], Any], what: str) -> Any:
        return committing(attempt, what)


class _Plan:
    """What a query session sets up: the schemas, the tables' views (or tables) and the views' definitions, in an
    order that lets each view find what it reads."""

    def __init__(self, wh: IcebergWarehouse, aliases: dict[str, str]) -> None:
        self.wh, self.aliases = wh, aliases
        self.datasets: set[tuple[str, str]] = set()
        self.tables: dict[TableRef, IcebergTable] = {}
        self.views: dict[TableRef, str] = {}
        self.files: list[str] = []
        self.statements: list[str] = []
        self.buffered: dict[TableRef, list[Entry]] = {}
        self._properties: dict[tuple[str, str], dict[str, str]] = {}
        self._seen: set[TableRef] = set()

    def add(self, ref: TableRef, *, materialize: bool = False, depth: int = 0) -> None:
        if ref in self._seen:
            return
        self._seen.add(ref)
        if ref.project not in self.aliases:
            raise bigquery_sql.InvalidQuery(f"a view can only read tables of its own project, not of {ref.project}")
        key = (ref.project, ref.dataset)
        if key not in self._properties:
            try:
                self._properties[key] = self.wh._properties(ref.project, ref.dataset)
            except NotFound:
                if materialize:
                    raise NotFound(f"Not found: Dataset {ref.project}:{ref.dataset}") from None
                raise NotFound(f"Not found: Dataset {ref.project}:{ref.dataset} was not found in location US") from None
        self.datasets.add(key)
        name = ".".join(quote(p) for p in (self.aliases[ref.project], ref.dataset, ref.table))
        view = _view(self._properties[key], ref.table)
        if view is not None:
            if depth > 16:
                raise bigquery_sql.InvalidQuery(f"view {ref} reads itself")
            statement = bigquery_sql.parse(view["query"], ref.project)
            for inner in statement.tables:
                self.add(TableRef(inner.project, inner.dataset, inner.table), depth=depth + 1)
            self.views[ref] = view["query"]
            self.statements.append(f"CREATE VIEW {name} AS {statement.to_duckdb(self.aliases.get)}")
            return
        if materialize:
            self.wh.flush(ref, wait=True)  # the statement changes the table's files: its buffer goes there first
        table, entries = self.wh.read(ref)
        if table is None:
            if materialize:
                return  # CREATE TABLE makes it
            raise NotFound(f"Not found: Table {ref.project}:{ref.dataset}.{ref.table} was not found in location US")
        self.tables[ref] = table
        self.files += _local_files(table)
        kind = "TABLE" if materialize else "VIEW"
        self.buffered[ref] = entries
        self.statements.append(f"CREATE {kind} {name} AS {{scan:{len(self.buffered) - 1}}}")


# ---- helpers ----------------------------------------------------------------------------------


def committing(attempt: Callable[[], Any], what: str) -> Any:
    """Call `attempt()` until its commit does not meet another process's, for up to COMMIT_TIMEOUT seconds."""
    deadline = time.monotonic() + COMMIT_TIMEOUT
    delay = 0.01
    while True:
        try:
            return attempt()
        except CommitFailedException:
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"{what} kept changing under this commit for {COMMIT_TIMEOUT:g} s; try again"
                ) from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def _ident(ref: TableRef) -> tuple[str, str, str]:
    check_project(ref.project)
    check_dataset(ref.dataset)
    check_table(ref.table)
    return (ref.project, ref.dataset, ref.table)


def _same(a: str, b: str, exact: bool) -> bool:
    return a == b or (not exact and a.casefold() == b.casefold())


def _view(properties: Mapping[str, str], table: str) -> dict[str, Any] | None:
    value = properties.get(_VIEW + table)
    return orjson.loads(value) if value is not None else None


def _dataset_info(project: str, dataset: str, properties: Mapping[str, str]) -> DatasetInfo:
    return DatasetInfo(
        project,
        dataset,
        int(properties.get(_CREATED, 0)),
        int(properties.get(_MODIFIED, properties.get(_CREATED, 0))),
        properties.get(_LOCATION, DEFAULT_LOCATION),
        properties.get(_DESCRIPTION),
        orjson.loads(properties.get(_LABELS, "{}")),
    )


def _table_info(ref: TableRef, table: IcebergTable) -> TableInfo:
    properties = table.metadata.properties
    created = int(properties.get(_CREATED, table.metadata.last_updated_ms))
    return TableInfo(
        ref,
        "TABLE",
        created,
        table.metadata.last_updated_ms,
        table_fields(table),
        _row_count(table),
        description=properties.get(_DESCRIPTION),
    )


def _row_count(table: IcebergTable) -> int:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.get("total-records") or 0)


_types = threading.local()


# What a table's snapshot is read as, computed once per metadata file (which never changes): its files, its columns
# as BigQuery fields, the SELECT of its files. Queries ask for these every time.
_snapshots: OrderedDict[tuple[str, str], Any] = OrderedDict()
_snapshots_guard = threading.Lock()


def _per_snapshot(table: IcebergTable, what: str, make: Callable[[], Any]) -> Any:
    key = (table.metadata_location, what)
    with _snapshots_guard:
        if key in _snapshots:
            _snapshots.move_to_end(key)
            return _snapshots[key]
    value = make()
    with _snapshots_guard:
        _snapshots[key] = value
        while len(_snapshots) > 256:
            _snapshots.popitem(last=False)
    return value


def _tasks(table: IcebergTable) -> list[Any]:
    """The data files of the table's current snapshot."""
    return list(_per_snapshot(table, "tasks", lambda: tuple(table.scan().plan_files())))


def table_fields(table: IcebergTable) -> list[Field]:
    """The table's columns as BigQuery fields (REQUIRED where Iceberg's are), read back the way DuckDB sees them.
    The field dicts are shared by every caller (a deep copy of a wide table's took 20 ms): never mutate them."""
    return list(_per_snapshot(table, "fields", lambda: _table_fields(table)))


def _table_fields(table: IcebergTable) -> list[Field]:
    schema = table.schema()
    conn = getattr(_types, "conn", None)
    if conn is None:
        conn = _types.conn = duckdb.connect(config={"enable_external_access": False})
    relation = conn.from_arrow(schema.as_arrow().empty_table())
    required = {f.name for f in schema.fields if f.required}
    return [from_duckdb(n, t, n not in required) for n, t in zip(relation.columns, relation.types, strict=True)]


def arrow_schema(fields: list[Field]) -> pa.Schema:
    """The Arrow schema an Iceberg table of `fields` is made from: REQUIRED columns not nullable."""
    from dicomlake.warehouse.schema import arrow_type

    return pa.schema([pa.field(f["name"], arrow_type(f), nullable=f["mode"] != "REQUIRED") for f in fields])


def widen(update: Any, current: list[Field], merged: list[Field], parent: tuple[str, ...] = ()) -> None:
    """Add to the schema `update` the fields of `merged` that `current` lacks (by name, case-insensitively), nested
    ones included, all optional, and make optional those `merged` relaxes. `UpdateSchema.union_by_name` would
    convert and compare the whole schema: 1.3 s an evolution at 2,000 columns, for one new column."""
    have = {f["name"].casefold(): f for f in current}
    for f in merged:
        old = have.get(f["name"].casefold())
        if old is None:
            update.add_column((*parent, f["name"]), _iceberg_type(f), required=False)
            continue
        if old["mode"] == "REQUIRED" and f["mode"] != "REQUIRED":
            update.make_column_optional((*parent, old["name"]))
        if f["type"] == "RECORD" and f.get("fields") != old.get("fields"):
            inner = (*parent, old["name"], *(("element",) if old["mode"] == "REPEATED" else ()))
            widen(update, old["fields"], f["fields"], inner)


def _iceberg_type(f: Field) -> Any:
    """The Iceberg type of a BigQuery field (its nested field ids are placeholders: adding a column assigns them)."""
    from pyiceberg import types as t

    if f["type"] == "RECORD":
        # Optional inside, as the Arrow schemas of the tables' rows make them.
        kind: Any = t.StructType(
            *(t.NestedField(i + 1, g["name"], _iceberg_type(g), required=False) for i, g in enumerate(f["fields"]))
        )
    else:
        kind = _ICEBERG[f["type"]]()
    return t.ListType(1, kind, element_required=False) if f["mode"] == "REPEATED" else kind


def _iceberg_types() -> dict[str, Callable[[], Any]]:
    from pyiceberg import types as t

    return {
        "STRING": t.StringType,
        "JSON": t.StringType,
        "GEOGRAPHY": t.StringType,
        "BYTES": t.BinaryType,
        "INTEGER": t.LongType,
        "FLOAT": t.DoubleType,
        "NUMERIC": lambda: t.DecimalType(38, 9),
        "BIGNUMERIC": lambda: t.DecimalType(38, 9),
        "BOOLEAN": t.BooleanType,
        "TIMESTAMP": t.TimestamptzType,
        "DATE": t.DateType,
        "TIME": t.TimeType,
        "DATETIME": t.TimestampType,
    }


_ICEBERG = _iceberg_types()


def append_rows(tx: Any, table: IcebergTable, data: pa.Table, properties: dict[str, str] | None = None) -> None:
    """Append `data` (fitted with `fit_to` to the transaction's schema) in one snapshot of `tx`. What
    `Transaction.append` does, less its two walks of the whole schema per call (a check and a conversion by name,
    0.3 s of a 5,000-row shard of a wide DICOM table): the rows' columns take their field ids from the table's
    schema here, by name."""
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, write_file
    from pyiceberg.table import TableProperties, WriteTask

    metadata = tx.table_metadata
    with tx.update_snapshot(snapshot_properties=properties or {}).fast_append() as append:
        if not data.num_rows:
            return
        schema = _file_schema(data.schema, metadata.schema())
        target = int(
            metadata.properties.get(
                TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
            )
        )
        tasks = (
            WriteTask(write_uuid=append.commit_uuid, task_id=i, record_batches=batches, schema=schema)
            for i, batches in enumerate(bin_pack_arrow_table(data, target))
        )
        for data_file in write_file(io=table.io, table_metadata=metadata, tasks=tasks):
            append.append_data_file(data_file)


def _file_schema(arrow: pa.Schema, table_schema: Any) -> Any:
    """The Iceberg schema of Arrow data whose columns (and nested fields) are some of the table's, by name."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import ListType, NestedField, StructType

    def field_of(arrow_field: pa.Field, known: Any) -> Any:
        return NestedField(known.field_id, known.name, type_of(arrow_field.type, known.field_type), known.required)

    def type_of(arrow_type: pa.DataType, known: Any) -> Any:
        if pa.types.is_struct(arrow_type):
            by_name = {f.name: f for f in known.fields}
            return StructType(
                *(
                    field_of(arrow_type.field(i), by_name[arrow_type.field(i).name])
                    for i in range(arrow_type.num_fields)
                )
            )
        if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
            element = known.element_field
            return ListType(
                element.field_id, type_of(arrow_type.value_type, element.field_type), known.element_required
            )
        return known

    try:
        by_name = {f.name: f for f in table_schema.fields}
        return Schema(*(field_of(f, by_name[f.name]) for f in arrow), schema_id=table_schema.schema_id)
    except KeyError as exc:
        raise InvalidArgument(f"rows do not fit the table's schema: no column {exc}") from None


def fit_to(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """`data` with the nullability the table asks of each of its columns (pyiceberg refuses a nullable column for a
    required one): columns keep their own types, absent ones are filled by pyiceberg."""
    fields = []
    by_name = {f.name: f for f in schema}
    for f in data.schema:
        wanted = by_name.get(f.name)
        fields.append(f.with_nullable(wanted.nullable) if wanted is not None else f)
    target = pa.schema(fields)
    if target == data.schema:
        return data
    try:
        return data.cast(target)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise InvalidArgument(f"rows do not fit the table's schema: {exc}") from None


def _local_files(table: IcebergTable, tasks: list[Any] | None = None) -> list[str]:
    """The local paths of the table's files (none for a table in object storage), which a query may read."""
    found = _tasks(table) if tasks is None else tasks
    return [_local_path(task.file.file_path) for task in found if _is_local(task.file.file_path)]


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme else uri
    raise Unavailable(f"queries read local warehouse files only for now, not {parsed.scheme}:// ({uri})")


def scan_sql(table: IcebergTable, columns: list[str] | None = None, tasks: list[Any] | None = None) -> str:
    """A DuckDB SELECT of the table's current snapshot (or of the files of `tasks`), with exactly the table's
    columns and types: files written before a column was added hold none of it (NULL), and structs are cast to
    their widest form."""
    schema = table.schema()
    fields = {f["name"]: f for f in table_fields(table)}
    wanted = columns if columns is not None else [f.name for f in schema.fields]
    if tasks is None:
        tasks = _tasks(table)
    present: set[int] = set()
    shapes = set()
    for task in tasks:
        columns_of_file = frozenset(task.file.value_counts.keys()) | frozenset(task.file.null_value_counts.keys())
        shapes.add(columns_of_file)
        present.update(columns_of_file)
    paths = ", ".join("'" + _local_path(task.file.file_path).replace("'", "''") + "'" for task in tasks)
    if columns is None and len(shapes) == 1 and present >= _leaves(table):
        # Every file holds every column of the table as it is now: DuckDB reads them as they are (binding a cast
        # per column costs more than the scan of a small table).
        return f"SELECT * FROM read_parquet([{paths}], union_by_name = false)"
    selects = []
    for name in wanted:
        field = fields[name]
        iceberg_field = schema.find_field(name)
        ids = {iceberg_field.field_id, *_leaf_ids(iceberg_field.field_type)}
        kind = duckdb_type(field)
        if tasks and ids & present:
            selects.append(f"CAST({quote(name)} AS {kind}) AS {quote(name)}")
        else:
            selects.append(f"CAST(NULL AS {kind}) AS {quote(name)}")
    if not tasks:
        return f"SELECT {', '.join(selects)} WHERE false"
    # Files written under one schema have the same columns in the same order: DuckDB then reads them as one
    # (matching columns by name means reading every file's footer before planning: 4x slower at 20 files).
    by_name = "true" if len(shapes) > 1 else "false"
    return f"SELECT {', '.join(selects)} FROM read_parquet([{paths}], union_by_name = {by_name})"


def _register_scan(
    conn: duckdb.DuckDBPyConnection,
    table: IcebergTable,
    entries: list[Entry],
    columns: list[str] | None = None,
    prefix: str = "_buffer_",
) -> str:
    """The SELECT of the table's files and of its buffered `entries`. Local files are read by DuckDB itself;
    files in object storage, and the entries, through Arrow objects registered on `conn` (DuckDB reads only the
    columns and row groups a query needs from them)."""
    tasks = _tasks(table)
    sources: dict[str, pa.Schema] = {}
    if all(_is_local(task.file.file_path) for task in tasks):
        if columns is None:
            files = _per_snapshot(table, "scan", lambda: scan_sql(table, None, tasks))
        else:
            files = scan_sql(table, columns, tasks)
    else:
        import pyarrow.dataset

        for i, task in enumerate(tasks):
            uri = urlparse(task.file.file_path)
            filesystem = table.io.fs_by_scheme(uri.scheme, uri.netloc)  # type: ignore[attr-defined]
            dataset = pyarrow.dataset.dataset(uri.netloc + uri.path, filesystem=filesystem, format="parquet")
            conn.register(f"{prefix}file_{i}", dataset)
            sources[f"{prefix}file_{i}"] = dataset.schema
        files = buffer_sql(table, sources, columns) if sources else scan_sql(table, columns, [])
    if not entries:
        return files
    return f"{files} UNION ALL {buffer_sql(table, register_entries(conn, entries, prefix), columns)}"


def register_entries(conn: duckdb.DuckDBPyConnection, entries: list[Entry], prefix: str) -> dict[str, pa.Schema]:
    """Register the rows of buffered `entries` on `conn`, one Arrow table per schema among them (a buffer holds
    hundreds of one-row entries between flushes, nearly all of one schema); their names and schemas."""
    by_schema: dict[bytes, list[pa.Table]] = {}
    for entry in entries:
        by_schema.setdefault(entry.schema_key or str(entry.id).encode(), []).append(entry.data)
    sources = {}
    for i, tables in enumerate(by_schema.values()):
        conn.register(f"{prefix}{i}", pa.concat_tables(tables) if len(tables) > 1 else tables[0])
        sources[f"{prefix}{i}"] = tables[0].schema
    return sources


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def buffer_sql(table: IcebergTable, sources: dict[str, pa.Schema], columns: list[str] | None = None) -> str:
    """A SELECT of Arrow tables registered under the names of `sources`, with the table's columns and types."""
    fields = table_fields(table)
    wanted = columns if columns is not None else [f["name"] for f in fields]
    by_name = {f["name"]: f for f in fields}
    parts = []
    for source, schema in sources.items():
        present = set(schema.names)
        selects = [
            f"CAST({quote(n) if n in present else 'NULL'} AS {duckdb_type(by_name[n])}) AS {quote(n)}" for n in wanted
        ]
        parts.append(f"SELECT {', '.join(selects)} FROM {quote(source)}")
    return " UNION ALL ".join(parts)


def flushed_mark(table: IcebergTable) -> int:
    """The last streaming buffer entry whose rows the table holds."""
    return int(table.metadata.properties.get(FLUSHED, 0))


def _table_id(ref: TableRef) -> str:
    return ".".join(_ident(ref))


def _ref_of(table_id: str) -> TableRef:
    project, dataset, table = table_id.rsplit(".", 2)  # dataset and table ids hold no dot
    return TableRef(project, dataset, table)


def _leaves(table: IcebergTable) -> frozenset[int]:
    """The field ids of the table's primitive columns (those a data file counts values of)."""

    def make() -> frozenset[int]:
        schema = table.schema()
        ids: set[int] = set()
        for f in schema.fields:
            if f.field_type.is_primitive:
                ids.add(f.field_id)
            else:
                ids.update(i for i in _leaf_ids(f.field_type) if schema.find_type(i).is_primitive)
        return frozenset(ids)

    return frozenset(_per_snapshot(table, "leaves", make))


def _leaf_ids(kind: Any) -> list[int]:
    ids: list[int] = []
    for child in getattr(kind, "fields", ()) or ():
        ids.append(child.field_id)
        ids += _leaf_ids(child.field_type)
    element = getattr(kind, "element_field", None)
    if element is not None:
        ids.append(element.field_id)
        ids += _leaf_ids(element.field_type)
    return ids


def connect(root: Path, files: list[str]) -> duckdb.DuckDBPyConnection:
    """A query's DuckDB instance: the sandbox (nothing reachable but `files`, the Parquet files of the tables it
    reads, and that for good) and the memory limit of every DuckDB instance, spilling under this process's
    folder."""
    spill = root / "tmp"
    spill.mkdir(parents=True, exist_ok=True)
    allowed = list(dict.fromkeys(files))
    return embedded.locked(
        {**embedded.CONFIG, "temp_directory": str(spill)},
        lambda conn: conn.execute("SET allowed_paths = ?", [allowed]),
    )


def _io_properties() -> dict[str, str]:
    """pyiceberg's file IO settings for s3:// warehouses, from the variables the blob store reads too."""
    properties = {}
    for variable, key in (
        ("AWS_ENDPOINT_URL", "s3.endpoint"),
        ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
        ("AWS_REGION", "s3.region"),
        ("AWS_DEFAULT_REGION", "s3.region"),
    ):
        if os.environ.get(variable) and key not in properties:
            properties[key] = os.environ[variable]
    return properties


def written_by(table: IcebergTable, writer: str) -> bool:
    """Whether a snapshot of the table holds the rows of `writer` (an export shard)."""
    return any(
        snapshot.summary is not None and snapshot.summary.additional_properties.get(WRITER) == writer
        for snapshot in table.metadata.snapshots
    )


class IcebergTables:
    """`IcebergWarehouse` as the destination of exports and streams. An export shard is one commit, tried again
    on the table as it is now when another process committed meanwhile, and named in its snapshot's summary so
    that a repeated shard adds nothing; a stream's rows go to the streaming buffer, which knows its events."""

    def __init__(self, warehouse: IcebergWarehouse) -> None:
        self.warehouse = warehouse
        self._schemas: dict[TableRef, list[Field]] = {}
        self._views: set[TableRef] = set()  # the views of streamed tables known to exist
        self._commits: dict[TableRef, int] = {}

    def has_rows(self, ref: TableRef) -> bool | None:
        table = self._table(ref)
        return None if table is None else _row_count(table) > 0

    def ensure(self, ref: TableRef) -> None:
        if self._table(ref) is None:
            self.warehouse._create(ref, dicom_tables.BASE_FIELDS)

    def truncate(self, ref: TableRef) -> None:
        self.warehouse.truncate(ref)

    def known_schema(self, ref: TableRef) -> list[Field]:
        return self._schemas.get(ref, [])

    def append(
        self, ref: TableRef, parts: list[dicom_tables.Fitted], rows_of: Callable[[int], list[FlatRow]], writer: str
    ) -> None:
        # The shard, named by its export and its instances: repeated after a crash, it finds its own snapshot.
        digest = hashlib.sha256()
        for part in parts:
            for uid in part.data.column("SOPInstanceUID").to_pylist() if part.data.num_rows else ():
                digest.update(f"{uid}\n".encode())
        shard = f"{writer}:{digest.hexdigest()[:32]}"

        def attempt() -> None:
            table = self._table(ref) or self.warehouse._create(ref, dicom_tables.BASE_FIELDS)
            if written_by(table, shard):
                return
            fields = table_fields(table)
            fitted = [self._refit(fields, part, functools.partial(rows_of, i)) for i, part in enumerate(parts)]
            self._commit(table, fitted, {WRITER: shard})

        committing(attempt, f"table {ref}")
        self._after_commit(ref)

    def deliver(self, ref: TableRef, rows: list[FlatRow], store_pk: int, events: list[int]) -> None:
        """Put the rows of the events not seen yet in the streaming buffer, visible at once; new columns widen the
        table first (one commit, rare once a stream has seen its kinds of instances)."""
        table = self._table(ref) or self.warehouse._create(ref, dicom_tables.BASE_FIELDS)
        fields = table_fields(table)
        fitted = dicom_tables.fit(fields, rows)
        if dicom_tables.merge_fields(fields, fitted.fields).fields != fields:

            def widened() -> IcebergTable:
                current = self.warehouse.load(ref)
                wider = dicom_tables.merge_fields(table_fields(current), fitted.fields).fields
                return self.warehouse.evolve(current, wider)[0]

            table = committing(widened, f"table {ref}")
            table = table.refresh()
            fields = table_fields(table)
            if dicom_tables.merge_fields(fields, fitted.fields).conflicts:  # another process widened it another way
                fitted = dicom_tables.fit(fields, rows)
        view = TableRef(ref.project, ref.dataset, ref.table + dicom_tables.VIEW_SUFFIX)
        if view not in self._views:  # before the rows: whoever sees a row can query the view
            if self.warehouse._kind(view, self.warehouse._properties(view.project, view.dataset)) is None:
                self.warehouse.create_or_replace_view(view, dicom_tables.view_query(ref))
            self._views.add(view)
        data = fit_to(fitted.data, table.schema().as_arrow())
        self.warehouse.buffer.add(_table_id(ref), data, store_pk, events)

    def flush_due(self) -> None:
        self.warehouse.flush_due()

    # Every this many commits of a process to a table, the process looks after the table (`maintain`).
    MAINTAIN_EVERY = 8

    def _after_commit(self, ref: TableRef) -> None:
        count = self._commits[ref] = self._commits.get(ref, 0) + 1
        if count % self.MAINTAIN_EVERY == 0:
            self.warehouse.maintain(ref)

    def _table(self, ref: TableRef) -> IcebergTable | None:
        table = self.warehouse.find(ref)
        if table is not None and table.metadata is not None:
            self._schemas[ref] = table_fields(table)
        return table

    @staticmethod
    def _refit(
        fields: list[Field], part: dicom_tables.Fitted, rows: Callable[[], list[FlatRow]]
    ) -> dicom_tables.Fitted:
        """`part` as it is when its columns fit the table's, else its rows fitted again to the table."""
        if dicom_tables.merge_fields(fields, part.fields).conflicts:
            return dicom_tables.fit(fields, rows())
        return part

    def _commit(self, table: IcebergTable, parts: list[dicom_tables.Fitted], mark: dict[str, str]) -> None:
        """Widen the table to the parts' columns and append their rows, in one commit."""
        current = fields = table_fields(table)
        for part in parts:
            fields = dicom_tables.merge_fields(fields, part.fields).fields
        data = [part.data for part in parts if part.data.num_rows]
        with table.transaction() as tx:
            if fields != current:
                with tx.update_schema() as update:
                    widen(update, current, fields)
            if data:
                whole = pa.concat_tables(data, promote_options="permissive")
                append_rows(tx, table, fit_to(whole, tx.table_metadata.schema().as_arrow()), mark)
