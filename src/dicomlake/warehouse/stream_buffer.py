"""The streaming buffer of the Iceberg tables: streamed rows are visible to queries the moment they are delivered,
and reach the table's Parquet files in bulk. An Iceberg commit costs a few hundred milliseconds and leaves a file
and a snapshot behind, so a stream that committed each delivery would be slow to show its rows and would fill the
table with small files; BigQuery answers the same problem with its own streaming buffer.

The buffer is two tables in the catalog's database (the index database, shared by every process and machine):
`dicomlake_stream_buffer` holds each delivery's rows as an Arrow IPC stream, and `dicomlake_stream_events` the stream
events they came from (a redelivered event adds nothing). A flush appends the buffered rows of a table to it in
one Iceberg commit that also sets the table property `dicomlake.flushed` to the last buffer entry it holds, then
deletes those entries: a reader takes the buffer, then the table, and counts only the entries above the table's
mark, so a row is read exactly once whichever moment a flush commits. Deliveries to one table take turns (an
advisory lock on PostgreSQL; SQLite writes one at a time anyway), so entry ids grow in commit order."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

FLUSHED = "dicomlake.flushed"
# Events stay known this long after their rows were flushed: a redelivery after a crash comes within a lease.
KEEP_EVENTS_SECONDS = 900
# On SQLite, how long a flush may take before another process of the machine may take over a table's flushes
# (at once when the flushing process is gone).
FLUSH_LEASE_SECONDS = 120

_metadata = sa.MetaData()
_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
buffer = sa.Table(
    "dicomlake_stream_buffer",
    _metadata,
    sa.Column("id", _id, primary_key=True, autoincrement=True),
    sa.Column("table_id", sa.String(3200), nullable=False, index=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    # Ids are never used again (SQLite would reuse them once the entries were flushed): a table's mark counts on it.
    sqlite_autoincrement=True,
)
events = sa.Table(
    "dicomlake_stream_events",
    _metadata,
    sa.Column("table_id", sa.String(3200), primary_key=True),
    sa.Column("store_pk", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_pk", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False, index=True),
)
flushes = sa.Table(
    "dicomlake_stream_flushes",
    _metadata,
    sa.Column("table_id", sa.String(3200), primary_key=True),
    sa.Column("until_ms", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String(300)),
)


@dataclass(frozen=True)
class Entry:
    id: int
    rows: int
    created_ms: int
    data: pa.Table
    # Entries of equal keys have equal schemas (hashing a wide Arrow schema takes a fraction of a millisecond).
    schema_key: bytes = b""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ipc(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


class StreamBuffer:
    def __init__(self, engine: sa.Engine, write_lock: Callable[[], AbstractContextManager[None]] | None = None) -> None:
        self.engine = engine
        # On SQLite, the file's writers take turns under the index database's lock, not SQLite's busy waits.
        self.write_lock = write_lock or nullcontext
        self.postgresql = engine.dialect.name == "postgresql"
        _metadata.create_all(engine)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[int, Entry]] = {}  # the rows of entries this process has read, by table

    def add(self, table_id: str, data: pa.Table, store_pk: int, event_pks: list[int]) -> int:
        """Buffer the rows of `data` (row i from event `event_pks[i]`) whose event is not known yet, in one
        transaction; how many were added."""
        with self.write_lock(), self.engine.begin() as conn:
            if self.postgresql:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(2, :key)"), {"key": _lock_key(table_id)})
            held = {
                pk
                for (pk,) in conn.execute(
                    sa.select(events.c.event_pk).where(
                        events.c.table_id == table_id,
                        events.c.store_pk == store_pk,
                        events.c.event_pk.between(min(event_pks), max(event_pks)),
                    )
                )
            }
            fresh = [pk not in held for pk in event_pks]
            if not any(fresh):
                return 0
            if not all(fresh):
                data = data.filter(pa.array(fresh))
            now = _now_ms()
            conn.execute(
                events.insert(),
                [
                    {"table_id": table_id, "store_pk": store_pk, "event_pk": pk, "created_ms": now}
                    for pk, new in zip(event_pks, fresh, strict=True)
                    if new
                ],
            )
            conn.execute(buffer.insert().values(table_id=table_id, rows=data.num_rows, created_ms=now, data=_ipc(data)))
            return data.num_rows

    def pending(self, table_id: str, above: int = 0) -> list[Entry]:
        """The buffered entries of a table above `above`, oldest first. An entry never changes once written, so
        a process reads its rows from the database once and keeps them until they are flushed."""
        with self.engine.connect() as conn:
            listed = conn.execute(
                sa.select(buffer.c.id, buffer.c.rows, buffer.c.created_ms)
                .where(buffer.c.table_id == table_id, buffer.c.id > above)
                .order_by(buffer.c.id)
            ).all()
            with self._lock:
                known = self._entries.setdefault(table_id, {})
                if above == 0:  # the entries no longer listed were flushed
                    for gone in known.keys() - {i for i, _, _ in listed}:
                        del known[gone]
                missing = [i for i, _, _ in listed if i not in known]
            read = {}
            if missing:
                read = dict(conn.execute(sa.select(buffer.c.id, buffer.c.data).where(buffer.c.id.in_(missing))).all())
        entries = []
        with self._lock:
            for i, rows, created in listed:
                entry = known.get(i)
                if entry is None:
                    if i not in read:  # flushed and forgotten since it was listed: the table holds its rows now
                        continue
                    data = pa.ipc.open_stream(read[i]).read_all()
                    key = hashlib.blake2b(data.schema.serialize()).digest()
                    entry = known[i] = Entry(i, rows, created, data, key)
                entries.append(entry)
        return entries

    def summary(self, table_id: str, above: int = 0) -> tuple[int, int | None]:
        """Rows buffered for a table above `above`, and when the oldest of them came (ms), without reading them."""
        with self.engine.connect() as conn:
            rows, oldest = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(buffer.c.rows), 0), sa.func.min(buffer.c.created_ms)).where(
                    buffer.c.table_id == table_id, buffer.c.id > above
                )
            ).one()
        return int(rows), oldest

    def tables(self) -> list[str]:
        with self.engine.connect() as conn:
            return [t for (t,) in conn.execute(sa.select(buffer.c.table_id).distinct())]

    def flushed(self, table_id: str, upto: int) -> None:
        """Forget the entries up to `upto` (the table holds their rows) and the events flushed long ago."""
        with self.write_lock(), self.engine.begin() as conn:
            conn.execute(buffer.delete().where(buffer.c.table_id == table_id, buffer.c.id <= upto))
            conn.execute(
                events.delete().where(
                    events.c.table_id == table_id, events.c.created_ms < _now_ms() - KEEP_EVENTS_SECONDS * 1000
                )
            )

    def drop(self, table_id: str) -> None:
        """Forget everything of a table that was truncated or deleted."""
        with self.write_lock(), self.engine.begin() as conn:
            for t in (buffer, events, flushes):
                conn.execute(t.delete().where(t.c.table_id == table_id))

    @contextmanager
    def flushing(self, table_id: str) -> Iterator[bool]:
        """Hold the table's flushes for the block (True), or say another process does (False). On PostgreSQL an
        advisory lock of the block's own connection, gone with the process that held it; on SQLite (one
        machine) a lease row naming the process, taken over at once when that process is gone, or after
        FLUSH_LEASE_SECONDS."""
        if self.postgresql:
            with self.engine.connect() as conn:
                key = _lock_key(table_id)
                taken = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(1, :key)"), {"key": key}).scalar())
                conn.commit()
                try:
                    yield taken
                finally:
                    if taken:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(1, :key)"), {"key": key})
                        conn.commit()
            return
        taken = self._lease(table_id)
        try:
            yield taken
        finally:
            if taken:
                with self.write_lock(), self.engine.begin() as conn:
                    conn.execute(flushes.update().where(flushes.c.table_id == table_id).values(until_ms=0))

    def _lease(self, table_id: str) -> bool:
        now = _now_ms()
        me = f"{socket.gethostname()}:{os.getpid()}"
        with self.write_lock(), self.engine.begin() as conn:
            row = conn.execute(
                sa.select(flushes.c.until_ms, flushes.c.holder).where(flushes.c.table_id == table_id)
            ).first()
            if row is not None and row.until_ms >= now and not _gone(row.holder):
                return False
            values = {"until_ms": now + FLUSH_LEASE_SECONDS * 1000, "holder": me}
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(flushes.insert().values(table_id=table_id, **values))
                except IntegrityError:
                    return False
                return True
            # Taken only if nobody took it since it was read.
            return bool(
                conn.execute(
                    flushes.update()
                    .where(flushes.c.table_id == table_id, flushes.c.until_ms == row.until_ms)
                    .values(**values)
                ).rowcount
            )


def _gone(holder: str | None) -> bool:
    """Whether the process named `host:pid` ran on this host and is no longer alive."""
    host, _, pid = (holder or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lock_key(table_id: str) -> int:
    return zlib.crc32(table_id.encode()) - (1 << 31)
