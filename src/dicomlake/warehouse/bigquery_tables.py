"""DICOM tables in a BigQuery API, through google-cloud-bigquery: Google's BigQuery, an emulator, or another
dicomlake (`DICOMLAKE_BIGQUERY_URL`). Exports and streams write here instead of the embedded tables.

- Tables are created with the columns every DICOM row has and widened by adding fields (`tables.patch`, the
  only schema change BigQuery allows); a value whose column has another type moves into OtherElements as in
  the embedded tables, so no instance is lost. A patch answered without a column it asked for fails the write
  (insertAll would drop that column's values and report success).
- Rows go with `tabledata.insertAll`, at most 500 rows or ~8 MB to a request, each request all or nothing.
  Every row carries an insertId made of what identifies it (the export and the instance's UIDs; for a
  stream, its outbox event), so a batch sent again after a crash is dropped by BigQuery's de-duplication. That
  de-duplication is best effort (about a minute on Google's service): a row can be written twice when a
  process dies between BigQuery's answer and the outbox's commit and its events are delivered much later.
- A streamed table gets its `<table>_view` (spec §6.6) before this process first writes rows to it: a BigQuery view
  reads the table's columns when queried, so it never needs replacing as the table widens.
- Credentials: Application Default Credentials for Google's endpoint (`*.googleapis.com`); none for any
  other, unless GOOGLE_APPLICATION_CREDENTIALS names a key file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import urlparse

import orjson
from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery

from dicomlake.dicom.flatten import FlatRow
from dicomlake.errors import DicomlakeError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from dicomlake.warehouse import dicom_tables
from dicomlake.warehouse.embedded import TableRef
from dicomlake.warehouse.schema import Field, count_columns

MAX_ROWS_PER_REQUEST = 500
MAX_BYTES_PER_REQUEST = 8 << 20  # BigQuery refuses requests over 10 MB
# Schema changes another writer made between our read and our patch: read again and retry this often.
PATCH_ATTEMPTS = 5
# How long one call retries a BigQuery that does not answer (the client's own default is 10 minutes): a stream
# gives up sooner and delivers on its next round, an export shard fails and is taken up again.
RETRY = bigquery.DEFAULT_RETRY.with_timeout(15.0)


class BigQueryTables:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._clients: dict[str, bigquery.Client] = {}
        self._schemas: dict[TableRef, list[Field]] = {}
        self._tables: dict[TableRef, bigquery.Table] = {}  # as last read, with its etag, for the next patch
        self._viewed: set[TableRef] = set()
        self._lock = threading.Lock()

    # ---- the calls of warehouse/destinations.py ---------------------------------------------------

    def has_rows(self, ref: TableRef) -> bool | None:
        table = self._table(ref)
        if table is None:
            return None
        buffered = table.streaming_buffer is not None and bool(table.streaming_buffer.estimated_rows)
        return bool(table.num_rows) or buffered

    def ensure(self, ref: TableRef) -> None:
        if self._table(ref) is None:
            self._create(ref, dicom_tables.BASE_FIELDS)

    def truncate(self, ref: TableRef) -> None:
        with _translated(f"emptying {ref}"):
            job = self._client(ref.project).query(f"TRUNCATE TABLE `{_table_id(ref)}`", retry=RETRY, job_retry=RETRY)
            job.result(retry=RETRY)

    def known_schema(self, ref: TableRef) -> list[Field]:
        return self._schemas.get(ref, [])

    def append(
        self, ref: TableRef, parts: list[dicom_tables.Fitted], rows_of: Callable[[int], list[FlatRow]], writer: str
    ) -> None:
        whole = dicom_tables.combine(parts)
        if whole is not None and self._insert(ref, whole, _row_ids(writer, whole)):
            return
        # A column came with two types (from two batches, or from another writer): part by part, fitting
        # again what conflicts with the table as it is now.
        for i, part in enumerate(parts):
            if not self._insert(ref, part, _row_ids(writer, part)):
                self._refit_and_insert(ref, rows_of(i), lambda fitted: _row_ids(writer, fitted))

    def deliver(self, ref: TableRef, rows: list[FlatRow], store_pk: int, events: list[int]) -> None:
        if ref not in self._viewed:  # before the rows: whoever sees a row can query the view
            self.ensure(ref)
            view = bigquery.Table(_table_id(TableRef(ref.project, ref.dataset, ref.table + dicom_tables.VIEW_SUFFIX)))
            view.view_query = dicom_tables.view_query(ref)
            with _translated(f"creating the view of {ref}"):
                self._client(ref.project).create_table(view, exists_ok=True, retry=RETRY)
            self._viewed.add(ref)
        ids = [_insert_id(f"stream/{store_pk}/{event}") for event in events]
        self._refit_and_insert(ref, rows, lambda _: ids, create=True)

    # ---- tables ------------------------------------------------------------------------------------

    def flush_due(self) -> None:
        pass  # BigQuery's own streaming buffer

    def _client(self, project: str) -> bigquery.Client:
        with self._lock:
            client = self._clients.get(project)
            if client is None:
                client = bigquery.Client(
                    project=project,
                    credentials=_credentials(self.url),
                    client_options=ClientOptions(api_endpoint=self.url),
                )
                self._clients[project] = client
            return client

    def _table(self, ref: TableRef) -> bigquery.Table | None:
        """The table as it is now (its schema remembered), None if missing; NOT_FOUND without its dataset."""
        client = self._client(ref.project)
        try:
            table = client.get_table(_table_id(ref), retry=RETRY)
        except api.NotFound:
            with _translated(f"looking up dataset {ref.project}.{ref.dataset}"):
                client.get_dataset(f"{ref.project}.{ref.dataset}", retry=RETRY)
            return None
        except (api.GoogleAPIError, OSError) as exc:
            _translate(exc, f"looking up {ref}")
        if table.table_type == "VIEW":
            raise FailedPrecondition(f"{ref} is a view; DICOM rows go to tables")
        self._schemas[ref] = [_field(f.to_api_repr()) for f in table.schema]
        self._tables[ref] = table
        return table

    def _create(self, ref: TableRef, fields: list[Field]) -> None:
        table = bigquery.Table(_table_id(ref), schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in fields])
        with _translated(f"creating {ref}"):
            self._client(ref.project).create_table(table, exists_ok=True, retry=RETRY)

    def _fields(self, ref: TableRef, create: bool = False) -> list[Field]:
        table = self._table(ref)
        if table is None:
            if not create:
                raise NotFound(f"table {ref} not found")
            self._create(ref, dicom_tables.BASE_FIELDS)
            table = self._table(ref)
            assert table is not None
        return self._schemas[ref]

    def _refit_and_insert(
        self,
        ref: TableRef,
        rows: list[FlatRow],
        ids_of: Callable[[dicom_tables.Fitted], list[str]],
        create: bool = False,
    ) -> None:
        """Fit `rows` to the table as it is now and insert them; fitted again if another writer changed a column's
        type in between."""
        for _ in range(PATCH_ATTEMPTS):
            fitted = dicom_tables.fit(self._fields(ref, create=create), rows)
            if self._insert(ref, fitted, ids_of(fitted)):
                return
        raise Unavailable(f"the columns of {ref} kept changing type while dicomlake wrote to it; will retry")

    def _widen(self, ref: TableRef, wanted: list[Field]) -> list[Field]:
        """Add the fields of `wanted` the table lacks; the table's schema afterwards (_Conflict if one has another
        type there)."""
        # The table as last read (by the caller, just before): read again only when a patch finds it changed.
        table = self._tables.get(ref)
        for _ in range(PATCH_ATTEMPTS):
            if table is None:
                table = self._table(ref)
                if table is None:
                    self._create(ref, dicom_tables.BASE_FIELDS)
                    continue
            merged = dicom_tables.merge_fields(self._schemas[ref], wanted)
            if merged.conflicts:
                raise _Conflict
            if count_columns(merged.fields) == count_columns(self._schemas[ref]):
                return self._schemas[ref]
            table.schema = [bigquery.SchemaField.from_api_repr(dict(f)) for f in merged.fields]
            try:
                # The table's etag goes with the patch: a schema another writer changed meanwhile is a 412.
                updated = self._client(ref.project).update_table(table, ["schema"], retry=RETRY)
            except api.PreconditionFailed:
                table = None
                continue
            except (api.GoogleAPIError, OSError) as exc:
                _translate(exc, f"adding columns to {ref}")
            # The schema BigQuery answers with, not the one asked for: a BigQuery API that leaves out a field it
            # was asked to add (an emulator that adds no nested fields) would drop that field's values from
            # every row sent to it, and still answer that all were written.
            schema = [_field(f.to_api_repr()) for f in updated.schema]
            self._schemas[ref] = schema
            self._tables[ref] = updated
            asked, answered = _paths(merged.fields), _paths(schema)
            missing = sorted(path for key, path in asked.items() if key not in answered)
            if missing:
                raise FailedPrecondition(
                    f"BigQuery did not add the columns {', '.join(missing)} to {ref} (it answered the "
                    "schema change without them); no rows were written"
                )
            return schema
        raise Unavailable(f"the schema of {ref} kept changing while dicomlake widened it; will retry")

    def _insert(self, ref: TableRef, fitted: dicom_tables.Fitted, row_ids: list[str]) -> bool:
        """Widen the table to the rows' columns and insert them; False (nothing written) when a column of theirs
        has another type in the table: fit them again."""
        if not fitted.data.num_rows:
            return True
        try:
            self._widen(ref, fitted.fields)
        except _Conflict:
            return False
        schema = [bigquery.SchemaField.from_api_repr(dict(f)) for f in fitted.fields]
        client = self._client(ref.project)
        rows = fitted.data.to_pylist()
        for start, end in _chunks(rows):
            with _translated(f"writing rows to {ref}"):
                errors = client.insert_rows(
                    _table_id(ref), rows[start:end], selected_fields=schema, row_ids=row_ids[start:end], retry=RETRY
                )
            if errors:
                first = errors[0]
                raise InvalidArgument(f"BigQuery refused rows of {ref}: {first.get('errors', first)}")
        return True


class _Conflict(Exception):
    """The rows bring a column whose type the table has otherwise."""


def _chunks(rows: list[dict[str, Any]]) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for i, row in enumerate(rows):
        length = len(orjson.dumps(row, default=str))
        if i > start and (i - start >= MAX_ROWS_PER_REQUEST or size + length > MAX_BYTES_PER_REQUEST):
            yield start, i
            start, size = i, 0
        size += length
    if start < len(rows):
        yield start, len(rows)


def _row_ids(writer: str, fitted: dicom_tables.Fitted) -> list[str]:
    """Export rows' insertIds: the export and the instance, the same however often a shard is repeated."""
    columns = [fitted.data.column(name).to_pylist() for name in dicom_tables.UID_COLUMNS]
    return [_insert_id("/".join([writer, *(str(c[i]) for c in columns)])) for i in range(fitted.data.num_rows)]


def _insert_id(text: str) -> str:
    # UIDs run to 64 characters each: a digest keeps the insertId short whatever they are.
    return "dicomlake-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _field(raw: dict[str, Any]) -> Field:
    field: Field = {"name": raw["name"], "type": raw["type"], "mode": raw.get("mode") or "NULLABLE"}
    if raw.get("fields"):
        field["fields"] = [_field(f) for f in raw["fields"]]
    return field


def _paths(fields: list[Field], prefix: str = "") -> dict[str, str]:
    """Every column's dotted path, nested ones included, by that path as BigQuery compares it (without case)."""
    out: dict[str, str] = {}
    for f in fields:
        path = prefix + f["name"]
        out[path.lower()] = path
        out |= _paths(f.get("fields", []), path + ".")
    return out


def _table_id(ref: TableRef) -> str:
    return f"{ref.project}.{ref.dataset}.{ref.table}"


def _credentials(url: str) -> Credentials:
    host = urlparse(url).hostname or ""
    if host == "googleapis.com" or host.endswith(".googleapis.com") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        import google.auth

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/bigquery"])
        return credentials
    return AnonymousCredentials()


class _translated:
    """BigQuery's errors as dicomlake's, in the block (see `_translate`)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, api.GoogleAPIError | OSError) and not isinstance(exc, DicomlakeError):
            _translate(exc, self.what)


def _translate(exc: api.GoogleAPIError | OSError, what: str) -> NoReturn:
    """A destination that is down or busy is Unavailable (a stream tries again); what BigQuery refused says why."""
    if isinstance(exc, api.RetryError):  # what the client retried until RETRY's time ran out
        raise Unavailable(f"BigQuery did not answer while {what}: {exc.cause or exc}") from exc
    if not isinstance(exc, api.GoogleAPICallError):
        raise Unavailable(f"BigQuery did not answer while {what}: {exc}") from exc
    message = f"BigQuery answered {exc.code} while {what}: {exc.message}"
    if isinstance(exc, api.NotFound):
        raise NotFound(message) from exc
    if isinstance(exc, api.BadRequest | api.Conflict):
        raise InvalidArgument(message) from exc
    if isinstance(exc, api.Forbidden | api.Unauthorized):
        raise FailedPrecondition(message) from exc
    raise Unavailable(message) from exc
