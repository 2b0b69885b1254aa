"""The operations runner: threads that plan long-running operations into shards and work the shards.

All coordination is in the index database, so any number of threads and processes (`dicomlake serve`,
`dicomlake worker`) share one operation. Planners and shards are leased: the holder renews a heartbeat,
and one whose heartbeat is older than the lease is taken over — that is how the work of a crashed
process resumes. A shard's counts and log entries are written in the transaction that marks it done,
and only by the worker still holding it, so each shard is counted exactly once."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dicomlake.errors import DicomlakeError
from dicomlake.operations import deleting, exporting, importing, table_export
from dicomlake.operations.model import Kind, LeaseLost, Operation
from dicomlake.services import Services
from dicomlake.storage.db import datasets, dicom_stores, operation_shards, operations
from dicomlake.store import logs
from dicomlake.store.catalog import DatasetRef, StoreRef, now_rfc3339

log = logging.getLogger("dicomlake.operations")

KINDS: dict[str, Kind] = {
    importing.IMPORT: importing.KIND,
    exporting.EXPORT: exporting.KIND,
    table_export.EXPORT_BQ: table_export.KIND,
    deleting.DELETE_STUDY: deleting.KIND,
    deleting.DELETE_SERIES: deleting.KIND,
}
CANCELLED = {"code": 1, "message": "the operation was cancelled"}

ops, shards = operations, operation_shards


class Runner:
    """Worker threads of one process; `start()` and `stop()` bracket the process's life."""

    def __init__(
        self, services: Services, threads: int = 2, lease_seconds: float = 60.0, idle_seconds: float = 0.2
    ) -> None:
        self.services = services
        self.db = services.db
        self.threads = threads
        self.lease = lease_seconds
        self.idle = idle_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(f"{self.worker_id}:{n}",), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop claiming and wait for the shards in hand; an unfinished one is taken over after the lease."""
        self._stop.set()
        self.services.work_queued.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _loop(self, me: str) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step(me)
            except Exception:
                log.exception("operations worker %s failed; retrying", me)
                worked = False
            if not worked and self.services.work_queued.wait(self.idle):
                self.services.work_queued.clear()

    def step(self, me: str) -> bool:
        """Do one unit of work (finish cancelled operations, plan, or work a shard); False when idle."""
        self._finish_cancelled()
        pk = self._claim_planner(me)
        if pk is not None:
            self._plan(pk, me)
            return True
        claim = self._claim_shard(me)
        if claim is not None:
            self._work(*claim, me)
            return True
        return False

    # ---- leases --------------------------------------------------------------------------------

    def _stale(self) -> float:
        return time.time() - self.lease

    def _claim_planner(self, me: str) -> int | None:
        where = (
            ops.c.planned.is_(False),
            ops.c.done.is_(False),
            ops.c.cancel_requested.is_(False),
            sa.or_(ops.c.heartbeat.is_(None), ops.c.heartbeat < self._stale()),
        )
        query = sa.select(ops.c.pk).where(*where).order_by(ops.c.pk).limit(1)
        # A plain read first: idle polling must not queue on the write lock.
        with self.db.read() as conn:
            if conn.execute(query).first() is None:
                return None
        with self.db.write() as conn:
            row = conn.execute(query.with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            conn.execute(ops.update().where(ops.c.pk == row.pk).values(claimed_by=me, heartbeat=time.time()))
        return row.pk

    def _claim_shard(self, me: str) -> tuple[int, int, Any, int] | None:
        claimable = sa.or_(
            shards.c.state == "pending", sa.and_(shards.c.state == "claimed", shards.c.heartbeat < self._stale())
        )
        query = (
            sa.select(shards.c.operation_pk, shards.c.shard, shards.c.payload, shards.c.size)
            .join(ops, ops.c.pk == shards.c.operation_pk)
            .where(shards.c.state != "done", claimable, ops.c.done.is_(False), ops.c.cancel_requested.is_(False))
            .order_by(shards.c.operation_pk, shards.c.shard)
            .limit(1)
        )
        with self.db.read() as conn:
            if conn.execute(query).first() is None:
                return None
        with self.db.write() as conn:
            # PostgreSQL: concurrent claimers skip each other's rows; SQLite's write transaction is exclusive.
            row = conn.execute(query.with_for_update(of=shards, skip_locked=True)).first()
            if row is None:
                return None
            conn.execute(
                shards.update()
                .where(shards.c.operation_pk == row.operation_pk, shards.c.shard == row.shard)
                .values(state="claimed", claimed_by=me, heartbeat=time.time())
            )
        return row.operation_pk, row.shard, orjson.loads(row.payload), row.size

    def _renew_planner(self, conn: Connection, pk: int, me: str) -> bool:
        held = ops.c.pk == pk, ops.c.claimed_by == me, ops.c.done.is_(False), ops.c.cancel_requested.is_(False)
        return conn.execute(ops.update().where(*held).values(heartbeat=time.time())).rowcount == 1

    def _shard_held(self, pk: int, shard: int, me: str) -> Any:
        return sa.and_(
            shards.c.operation_pk == pk, shards.c.shard == shard, shards.c.state == "claimed", shards.c.claimed_by == me
        )

    # ---- planning and working ------------------------------------------------------------------

    def _plan(self, pk: int, me: str) -> None:
        operation = self._load(pk)
        if operation is None:
            return
        try:
            for number, payload in enumerate(KINDS[operation.method].plan(self.services, operation)):
                size = len(payload)
                with self.db.write() as conn:
                    if not self._renew_planner(conn, pk, me):
                        return
                    # Shard numbers follow the listing, so a resumed planner's rewrites are no-ops.
                    new = conn.execute(
                        self.db.insert_ignore(shards).values(
                            operation_pk=pk, shard=number, payload=orjson.dumps(payload).decode(), size=size
                        )
                    ).rowcount
                    if new:
                        conn.execute(ops.update().where(ops.c.pk == pk).values(pending=ops.c.pending + size))
                self.services.work_queued.set()  # an idle worker takes the shard while this one plans on
        except DicomlakeError as exc:
            self._fail(pk, {"code": exc.code, "message": exc.message})
            return
        except Exception as exc:
            # A bug or a broken backend: end the operation with a clear error rather than retry forever.
            log.exception("planning operation %d failed", pk)
            self._fail(pk, {"code": 13, "message": f"internal error while planning the operation: {exc}"})
            return
        with self.db.write() as conn:
            if self._renew_planner(conn, pk, me):
                conn.execute(ops.update().where(ops.c.pk == pk).values(planned=True, claimed_by=None, heartbeat=None))
                self._finish_if_complete(conn, pk)

    def _work(self, pk: int, shard: int, payload: Any, size: int, me: str) -> None:
        operation = self._load(pk)
        if operation is None:
            return

        def heartbeat() -> None:
            with self.db.write() as conn:
                renewed = conn.execute(
                    shards.update().where(self._shard_held(pk, shard, me)).values(heartbeat=time.time())
                ).rowcount
            if renewed != 1:
                raise LeaseLost

        try:
            result = KINDS[operation.method].process(self.services, operation, payload, heartbeat)
        except LeaseLost:
            log.warning("operation %d shard %d was taken over by another worker", pk, shard)
            return
        except Exception as exc:
            log.exception("operation %d shard %d failed", pk, shard)
            self._fail(pk, {"code": 13, "message": f"internal error in shard {shard} of the operation: {exc}"})
            return
        with self.db.write() as conn:
            done = conn.execute(
                shards.update()
                .where(self._shard_held(pk, shard, me))
                .values(state="done", success=result.success, failure=result.failure, heartbeat=time.time())
            ).rowcount
            if done != 1:
                return
            conn.execute(
                ops.update()
                .where(ops.c.pk == pk)
                .values(
                    success=ops.c.success + result.success,
                    failure=ops.c.failure + result.failure,
                    pending=ops.c.pending - size,
                )
            )
            logs.write(conn, result.logs)
            self._finish_if_complete(conn, pk)

    # ---- ending --------------------------------------------------------------------------------

    def _finish_if_complete(self, conn: Connection, pk: int) -> None:
        row = conn.execute(sa.select(ops.c.method, ops.c.planned, ops.c.cancel_requested).where(ops.c.pk == pk)).one()
        if not row.planned or row.cancel_requested:
            return
        open_shards = conn.execute(
            sa.select(sa.func.count()).where(shards.c.operation_pk == pk, shards.c.state != "done")
        ).scalar_one()
        if open_shards == 0:
            conn.execute(
                ops.update()
                .where(ops.c.pk == pk, ops.c.done.is_(False))
                .values(
                    done=True,
                    end_time=now_rfc3339(),
                    pending=0,
                    response=orjson.dumps(KINDS[row.method].response).decode(),
                )
            )

    def _finish_cancelled(self) -> None:
        with self.db.read() as conn:
            pks = (
                conn.execute(sa.select(ops.c.pk).where(ops.c.cancel_requested.is_(True), ops.c.done.is_(False)))
                .scalars()
                .all()
            )
        for pk in pks:
            with self.db.write() as conn:
                # Shards in hand are finished and counted first; dead holders are not waited for.
                busy = conn.execute(
                    sa.select(sa.func.count()).where(
                        shards.c.operation_pk == pk, shards.c.state == "claimed", shards.c.heartbeat >= self._stale()
                    )
                ).scalar_one()
                if not busy:
                    self._end_with_error(conn, pk, CANCELLED)

    def _fail(self, pk: int, error: dict[str, Any]) -> None:
        with self.db.write() as conn:
            self._end_with_error(conn, pk, error)

    def _end_with_error(self, conn: Connection, pk: int, error: dict[str, Any]) -> None:
        conn.execute(
            ops.update()
            .where(ops.c.pk == pk, ops.c.done.is_(False))
            .values(done=True, end_time=now_rfc3339(), error=orjson.dumps(error).decode(), claimed_by=None)
        )

    def _load(self, pk: int) -> Operation | None:
        """The operation with its store; one whose store was deleted meanwhile ends with NOT_FOUND."""
        query = (
            sa.select(
                ops.c.method,
                ops.c.request,
                dicom_stores.c.pk.label("store_pk"),
                dicom_stores.c.store_id,
                dicom_stores.c.config,
                datasets.c.pk.label("dataset_pk"),
                datasets.c.project,
                datasets.c.location,
                datasets.c.dataset_id,
            )
            .join(dicom_stores, dicom_stores.c.pk == ops.c.store_pk)
            .join(datasets, datasets.c.pk == dicom_stores.c.dataset_pk)
            .where(ops.c.pk == pk)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            self._fail(pk, {"code": 5, "message": "the DICOM store of this operation was deleted"})
            return None
        dataset = DatasetRef(row.dataset_pk, row.project, row.location, row.dataset_id)
        store = StoreRef(row.store_pk, dataset, row.store_id, orjson.loads(row.config))
        return Operation(pk, row.method, store, orjson.loads(row.request))
