"""The parts one dicomlake process works with, opened from its settings: index database, blob store,
the buckets of imports and exports, a scratch directory for request bodies too large to keep in memory,
and a pool of processes for CPU-bound bulk work."""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dicomlake.config import Settings
from dicomlake.storage.blobs import BlobStore
from dicomlake.storage.buckets import Buckets
from dicomlake.storage.db import Database, sqlalchemy_url
from dicomlake.storage.journal import Journal
from dicomlake.warehouse import destinations, jobs
from dicomlake.warehouse.embedded import Warehouse

if TYPE_CHECKING:
    from dicomlake.warehouse.iceberg import IcebergWarehouse

# One process per core, and one more: storing a file waits on the disk about as long as parsing it takes,
# and the extra process parses while another waits.
POOL_PROCESSES = (os.cpu_count() or 1) + 1


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    buckets: Buckets
    scratch_dir: Path
    # Set when this process queues an operation or a shard, so that its idle workers start now rather
    # than at their next look (operations/runner.py).
    work_queued: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _tables: destinations.Destination | None = field(default=None, init=False, repr=False)
    _warehouse: Warehouse | IcebergWarehouse | None = field(default=None, init=False, repr=False)

    @property
    def cpu_pool(self) -> ProcessPoolExecutor:
        """Processes for CPU-bound bulk work (storing the files of an import), POOL_PROCESSES of them, started
        on first use; each opens its own services (`in_worker()`). Spawned, not forked: this process runs
        threads."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    POOL_PROCESSES,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_open_in_worker,
                    initargs=(self.settings,),
                )
            return self._pool

    @property
    def tables(self) -> destinations.Destination:
        """Where exports to tables and streams write their rows (`bq://` URIs)."""
        with self._pool_lock:
            if self._tables is None:
                self._tables = destinations.for_settings(
                    self.settings.data_dir, self.settings.bigquery_url, self.warehouse
                )
            return self._tables

    @property
    def warehouse(self) -> Warehouse | IcebergWarehouse:
        """The tables of the BigQuery API: Iceberg (`--warehouse-url`) or the data dir's DuckDB files."""
        if self._warehouse is None:
            self._warehouse = open_warehouse(self.settings, self.db)
        return self._warehouse

    def warm_pool(self) -> None:
        """Start every `cpu_pool` process now (they start one per task otherwise), e.g. while a listing runs."""
        pool = self.cpu_pool
        for _ in range(POOL_PROCESSES):
            pool.submit(os.getpid)

    def discard_pool(self) -> None:
        """Drop a pool whose process died (BrokenProcessPool); the next use starts a new one."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self.blobs.journal.close()
        self.db.dispose()


def open_warehouse(settings: Settings, db: Database | None = None) -> Warehouse | IcebergWarehouse:
    """The tables of `settings`; `db`, the index database the Iceberg catalog shares, whose writers take turns."""
    url = settings.resolved_warehouse_url
    if url == "duckdb":
        return Warehouse.in_data_dir(settings.data_dir)
    from dicomlake.warehouse.iceberg import IcebergWarehouse  # pyiceberg takes a second to import

    if db is None:
        return IcebergWarehouse(sqlalchemy_url(settings.resolved_database_url), url, settings.data_dir / "warehouse")
    return IcebergWarehouse(db.url, url, settings.data_dir / "warehouse", db.write_lock)


def open_services(settings: Settings, create_schema: bool = True) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    durable = settings.durability == "full"
    db = Database(settings.resolved_database_url, durable)
    if create_schema:
        db.create_schema()
    blobs = BlobStore(settings.resolved_blob_url, Journal(settings.data_dir / "journal"), durable)
    jobs.configure(jobs.Limits(settings.query_timeout_seconds, settings.query_memory_mb, settings.query_concurrency))
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        buckets=Buckets(settings.data_dir, file_roots=settings.file_roots),
        scratch_dir=scratch,
    )


_worker_services: Services | None = None


def _open_in_worker(settings: Settings) -> None:
    global _worker_services
    _worker_services = open_services(settings, create_schema=False)
    atexit.register(_worker_services.close)
    # The code of every operation kind, loaded now (the pool starts with the process) rather than by the first
    # task of an import or export, which would wait a third of a second for it in every process.
    from dicomlake.operations import runner  # noqa: F401

    # Parsing makes many short-lived containers and no cycles: collect young objects less often, and never
    # rescan the modules and dictionaries loaded so far.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def in_worker() -> Services:
    """The services of this `cpu_pool` process."""
    if _worker_services is None:
        raise RuntimeError("in_worker() is for functions run in Services.cpu_pool")
    return _worker_services
