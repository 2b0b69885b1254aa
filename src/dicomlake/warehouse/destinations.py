"""Where exports to tables and streams write DICOM rows (`bq://PROJECT.DATASET.TABLE`): the one seam between
them and the tables. `for_settings` picks the embedded tables (the default) or a BigQuery API
(`DICOMLAKE_BIGQUERY_URL`: Google's, an emulator, another dicomlake), and both offer the same few calls:

- `has_rows` / `ensure` / `truncate`: what an export's write disposition needs before the first row;
- `known_schema`: the table's columns as last seen, for pool processes to fit rows to (`dicom_tables.fit`);
- `append`: an export shard's rows, fitted in the pool, widening the table to their columns first;
- `deliver`: a stream's rows with the outbox events they came from, each event's row written once, and the
  table's `<table>_view` (spec §6.6) kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dicomlake.dicom.flatten import FlatRow
from dicomlake.warehouse import dicom_tables
from dicomlake.warehouse.embedded import TableRef, Warehouse, truncate

if TYPE_CHECKING:
    from dicomlake.warehouse.iceberg import IcebergWarehouse
from dicomlake.warehouse.schema import Field


class Destination(Protocol):
    def has_rows(self, ref: TableRef) -> bool | None:
        """None when the table does not exist, else whether it holds a row; NOT_FOUND without its dataset."""

    def ensure(self, ref: TableRef) -> None:
        """Create the table, if missing, with the columns every DICOM row has."""

    def truncate(self, ref: TableRef) -> None:
        """Remove every row of the table, keeping its columns."""

    def known_schema(self, ref: TableRef) -> list[Field]:
        """The table's columns as this process last saw them (empty if never): cheap, maybe stale."""

    def append(
        self, ref: TableRef, parts: list[dicom_tables.Fitted], rows_of: Callable[[int], list[FlatRow]], writer: str
    ) -> None:
        """Append an export shard: `parts` fitted to a schema the table may have outgrown; `rows_of(i)` makes
        part i's rows again, to fit to the table as it is now where a column changed type meanwhile. `writer`
        names the export: its rows are written once however often the shard is repeated, while another
        export's rows of the same instances are rows of their own."""

    def deliver(self, ref: TableRef, rows: list[FlatRow], store_pk: int, events: list[int]) -> None:
        """Append a stream's `rows` (one per outbox event in `events`) unless their event's row is there."""

    def flush_due(self) -> None:
        """Move rows that waited long enough in a streaming buffer into their tables (where there is one)."""


class EmbeddedTables:
    """The embedded warehouse (`warehouse/embedded.py`, DuckDB files in the data dir)."""

    # How long a table's warehouse file stays open after a delivery: the deliveries meanwhile skip the
    # checkpoint that closing the file costs (60% of streaming's CPU), and other processes wait at most this long.
    HOLD_SECONDS = 1.0

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    def has_rows(self, ref: TableRef) -> bool | None:
        return dicom_tables.has_rows(self.warehouse, ref)

    def ensure(self, ref: TableRef) -> None:
        dicom_tables.ensure(self.warehouse, ref)

    def truncate(self, ref: TableRef) -> None:
        truncate(self.warehouse, ref)

    def known_schema(self, ref: TableRef) -> list[Field]:
        return dicom_tables.known_schema(self.warehouse, ref)

    def append(
        self, ref: TableRef, parts: list[dicom_tables.Fitted], rows_of: Callable[[int], list[FlatRow]], writer: str
    ) -> None:
        # All parts go in one statement and one transaction: a shard repeated after a crash writes its rows once.
        with dicom_tables.open_table(self.warehouse, ref, bulk=True) as table:
            whole = dicom_tables.combine(parts)
            if whole is None or not table.append(whole):
                # A column came with two types (from two batches, or from another writer of the table): part
                # by part, fitting again what conflicts.
                for i, part in enumerate(parts):
                    if not table.append(part):
                        table.add(rows_of(i))

    def deliver(self, ref: TableRef, rows: list[FlatRow], store_pk: int, events: list[int]) -> None:
        dicom_tables.write(self.warehouse, ref, rows, stream=(store_pk, events), hold=self.HOLD_SECONDS)

    def flush_due(self) -> None:
        pass  # every delivery is written to the table itself


def for_settings(
    data_dir: Path, bigquery_url: str, warehouse: Warehouse | IcebergWarehouse | None = None
) -> Destination:
    """The warehouse's tables (the embedded ones of `data_dir` unless another is given), or the BigQuery API at
    `bigquery_url` when one is set."""
    if bigquery_url:
        # google-cloud-bigquery is loaded only by processes that write to a BigQuery API.
        from dicomlake.warehouse.bigquery_tables import BigQueryTables

        return BigQueryTables(bigquery_url)
    if warehouse is None or isinstance(warehouse, Warehouse):
        return EmbeddedTables(warehouse or Warehouse.in_data_dir(data_dir))
    from dicomlake.warehouse.iceberg import IcebergTables

    return IcebergTables(warehouse)
