"""Streaming to tables (spec §1.11, §6.5, §6.6): every instance stored into or deleted from a store with
`streamConfigs` becomes a CREATE or DELETE row in each destination table, off the request path.

The store writes an event into the `stream_events` outbox in the transaction that stores or deletes the
instance, so a crash right after a STOW answers loses nothing. A Streamer thread in every server and worker
process takes the oldest events, flattens them, and writes each destination's rows in one warehouse
call that also records the events it holds (`warehouse/destinations.py`), then removes the events from the
outbox: an event may be delivered twice (after a crash in between, or by two processes at once), but its row
is written once.
A destination that cannot take rows (no such dataset, a view in the way) gets a `dicom_stream` log entry
per event and the events are dropped; a warehouse that is only busy is tried again."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dicomlake.dicom.flatten import FlatRow, ServiceColumns, delete_row, flatten
from dicomlake.errors import DicomlakeError, Unavailable
from dicomlake.services import Services
from dicomlake.storage.db import stream_events
from dicomlake.store import logs
from dicomlake.store.catalog import StoreRef, store_by_pk
from dicomlake.warehouse.embedded import TableRef

log = logging.getLogger("dicomlake.streaming")

LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.DicomStreamLogEntry"
BATCH = 1000
# How often a process looks for streamed rows that waited long enough in a streaming buffer (warehouse/iceberg.py).
FLUSH_INTERVAL = 1.0


class Streamer:
    """The stream threads of one process, bracketed by `start()` and `stop()`: delivery, woken at once when this
    process commits stream events and every `interval` for those of other processes, and the flushes of the
    warehouse's streaming buffer (a table commit, off the delivery path so that it never delays a row)."""

    def __init__(self, services: Services, interval: float = 0.25) -> None:
        self.services = services
        self.interval = interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._deliver_loop, "dicomlake-streamer"), (self._flush_loop, "dicomlake-flusher")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.services.db.stream_events.set()
        for thread in self._threads:
            thread.join()

    def _deliver_loop(self) -> None:
        woken = self.services.db.stream_events
        while not self._stop.is_set():
            woken.clear()
            try:
                delivered = self.deliver()
            except Exception:
                log.exception("stream delivery failed; retrying")
                delivered = 0
            if delivered < BATCH:
                woken.wait(self.interval)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.services.tables.flush_due()
            except Exception:
                log.exception("flushing the streaming buffer failed; retrying")

    def deliver(self) -> int:
        """Deliver the oldest events (up to BATCH); how many left the outbox."""
        db = self.services.db
        with db.read() as conn:
            events = conn.execute(sa.select(stream_events).order_by(stream_events.c.pk).limit(BATCH)).all()
        if not events:
            return 0
        by_store: dict[int, list[Any]] = {}
        for event in events:
            by_store.setdefault(event.store_pk, []).append(event)
        done: list[int] = []
        failures: list[dict[str, Any]] = []
        for store_pk, store_events in by_store.items():
            store = store_by_pk(db, store_pk)
            if store is not None and not self._deliver(store, store_events, failures):
                continue  # the warehouse is busy: these events stay for the next round
            done += [e.pk for e in store_events]
        with db.write() as conn:
            conn.execute(stream_events.delete().where(stream_events.c.pk.in_(done)))
            logs.write(conn, failures)
        return len(done)

    def _deliver(self, store: StoreRef, events: list[Any], failures: list[dict[str, Any]]) -> bool:
        rows, keys = [], []
        for event in events:
            try:
                rows.append(_row(event))
                keys.append(event.pk)
            except Exception as exc:  # a row the flattener cannot make must not block the stream behind it
                log.exception("cannot flatten stream event %d", event.pk)
                failures += [
                    _log_entry(store, event, uri, 13, f"cannot flatten the instance: {exc}") for uri in store.streams
                ]
        if not rows:
            return True
        for uri in store.streams:
            try:
                ref = TableRef.parse(uri)
                self.services.tables.deliver(ref, rows, store.pk, keys)
            except Unavailable:
                return False
            except DicomlakeError as exc:
                failures += [_log_entry(store, e, uri, exc.code, exc.message) for e in events if e.pk in keys]
        return True


def _row(event: Any) -> FlatRow:
    when = datetime.fromtimestamp(event.last_updated, UTC)
    if event.type == "DELETE":
        return delete_row(event.study_uid, event.series_uid, event.sop_uid, when)
    service = ServiceColumns(when, event.storage_class, event.blob_size)
    return flatten(event.metadata, service, file_meta=event.file_meta)


def _log_entry(store: StoreRef, event: Any, destination: str, code: int, message: str) -> dict[str, Any]:
    resource = f"{store.name}/dicomWeb/studies/{event.study_uid}/series/{event.series_uid}/instances/{event.sop_uid}"
    payload = {"@type": LOG_TYPE, "resourceName": resource, "destination": destination}
    return logs.store_entry(store, "dicom_stream", payload, code, message)
