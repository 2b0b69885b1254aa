"""Query jobs as BigQuery runs them (jobs.insert, jobs.query, jobs.get, jobs.getQueryResults, jobs.cancel). A job is
a row of `dicomlake_query_jobs` in the index database (the Iceberg catalog's, shared by every machine; the embedded
DuckDB warehouse, one machine's by nature, keeps its own SQLite file), and once done an Arrow file with its result
under the warehouse URL (`<warehouse>/_jobs/<project>/<job>.arrow`, on the object store of the tables' files), so
that any machine answers for a job another one ran, and later pages read the very rows the first one did. A thread
of the process that accepted the job runs it; jobs and results not seen for a day are removed.

Each job runs under limits (`Limits`, set from the process's settings by `configure`): a wall-clock limit (the
job's own `jobTimeoutMs` when shorter), a memory limit per DuckDB instance, and a number of jobs run at once (the
others wait their turn). jobs.cancel marks the job's row; the running job's process looks at it every
`query.WATCH_INTERVAL`, whichever machine that is. The process also marks its jobs' rows as seen every
HEARTBEAT_SECONDS: a job whose process is gone (on this host) or that nobody has seen for STALE_SECONDS (on
another) ends with an error rather than run for ever."""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from dicomlake.errors import AlreadyExists, DicomlakeError, InvalidArgument, NotFound, Unavailable
from dicomlake.storage.journal import process_alive
from dicomlake.warehouse import embedded, query, results
from dicomlake.warehouse import sql as bigquery_sql
from dicomlake.warehouse.embedded import DEFAULT_LOCATION, AnyWarehouse, Warehouse, check_project
from dicomlake.warehouse.schema import Field

log = logging.getLogger("dicomlake.warehouse")

JOB_TTL_SECONDS = 24 * 3600
# BigQuery allows 1,024 characters; a file name allows 255 bytes.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
# How often a process marks the rows of its jobs that are not done as seen, and how long after the last time a
# job of another host is taken to have lost its process.
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0
# How often a process looks for expired jobs (when it accepts one).
_EXPIRY_SECONDS = 60.0

_metadata = sa.MetaData()
records = sa.Table(
    "dicomlake_query_jobs",
    _metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("job_id", sa.String(200), primary_key=True),
    sa.Column("done", sa.Boolean, nullable=False),
    # `host:pid` of the process that runs the job.
    sa.Column("owner", sa.String(300), nullable=False),
    # When the job's process last said it runs it, or when it ended (ms).
    sa.Column("seen_ms", sa.BigInteger, nullable=False, index=True),
    # jobs.cancel asked the job to stop.
    sa.Column("cancel", sa.Boolean, nullable=False),
    # The Job, as JSON.
    sa.Column("record", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = 300.0
    memory_mb: int = 256
    # Queries a process runs at once; each one uses every core DuckDB is given.
    concurrency: int = 2


# Jobs a process holds at once, running or waiting their turn: past this, jobs.insert and jobs.query answer
# BigQuery's "rateLimitExceeded" (403; clients retry with backoff) rather than queue without end.
MAX_JOBS = 100

_limits = Limits()
_running = threading.BoundedSemaphore(_limits.concurrency)


def configure(limits: Limits) -> None:
    """The limits of this process's query jobs (at start-up, before any job runs)."""
    global _limits, _running
    _limits = limits
    _running = threading.BoundedSemaphore(limits.concurrency)
    embedded.set_memory_limit(limits.memory_mb)


# This process's jobs that are not done, (database, project, job id), with the engine of their rows.
_in_flight: dict[tuple[str, str, str], sa.Engine] = {}
_in_flight_guard = threading.Lock()
# What to call when one of those ends (`when_done`), by the same key.
_waiters: dict[tuple[str, str, str], list[Callable[[], None]]] = {}
_heartbeat: threading.Thread | None = None
# The engines whose table exists, and when each was last cleared of expired jobs.
_engines: dict[str, sa.Engine] = {}
_expired_at: dict[str, float] = {}
_engines_guard = threading.Lock()


class TooManyJobs(DicomlakeError):
    status, http, code = "RESOURCE_EXHAUSTED", 403, 8
    reason = "rateLimitExceeded"


class JobFailed(DicomlakeError):
    """The error a job ended with, raised again for whoever asks for its results."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.http = error.get("http", 400)
        self.status = error.get("status", "INVALID_ARGUMENT")
        self.reason = error.get("reason", "invalidQuery")


@dataclass
class Job:
    """A query job (its REST shape is the BigQuery API's, `api/bigquery.py`)."""

    project: str
    job_id: str
    location: str
    query: str
    default_dataset: tuple[str, str] | None
    state: str = "RUNNING"
    created_ms: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    # {"message", "reason", "http", "status"}
    error: dict[str, Any] | None = None
    fields: list[Field] = field(default_factory=list)
    total_rows: int = 0
    statement_type: str | None = None
    affected_rows: int | None = None
    owner: str = ""
    timeout_ms: int | None = None

    @property
    def done(self) -> bool:
        return self.state == "DONE"


def start(
    wh: AnyWarehouse,
    project: str,
    sql: str,
    *,
    job_id: str | None = None,
    location: str | None = None,
    default_dataset: tuple[str, str] | None = None,
    timeout_ms: int | None = None,
) -> Job:
    """Accept a query job and start it on a thread of this process; `timeout_ms` (jobTimeoutMs) shortens the
    process's time limit for it."""
    check_project(project)
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidArgument("a query job needs a query")
    job_id = job_id or f"job_{secrets.token_urlsafe(18).replace('-', '_')}"
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument(
            f"invalid job id {str(job_id)[:80]!r}: at most 200 letters, numbers, dashes and underscores"
        )
    engine = _engine(wh)
    try:
        _remove_expired(wh, engine)
    except (sa.exc.SQLAlchemyError, OSError) as exc:  # again at the next look
        log.warning("query jobs: cannot remove the expired ones: %s", exc)
    now = _now_ms()
    job = Job(
        project,
        job_id,
        location or DEFAULT_LOCATION,
        sql,
        default_dataset,
        created_ms=now,
        started_ms=now,
        owner=_owner(),
        timeout_ms=timeout_ms,
    )
    key = (str(engine.url), project, job_id)
    duplicate = AlreadyExists(f"Already Exists: Job {project}:{job.location}.{job_id}")
    with _in_flight_guard:
        if key in _in_flight:
            raise duplicate
        if len(_in_flight) >= MAX_JOBS:
            raise TooManyJobs(
                f"Exceeded rate limits: {MAX_JOBS} query jobs are running or waiting in this server; retry later"
            )
        _in_flight[key] = engine
    try:
        # The primary key makes the same job id twice an error, even from two machines at once.
        with _database(), engine.begin() as conn:
            conn.execute(
                records.insert().values(
                    project=project,
                    job_id=job_id,
                    done=False,
                    owner=job.owner,
                    seen_ms=now,
                    cancel=False,
                    record=_dumps(job),
                )
            )
    except BaseException as exc:
        with _in_flight_guard:
            _in_flight.pop(key, None)
        if isinstance(exc, IntegrityError):
            raise duplicate from None
        raise
    _start_heartbeat()
    threading.Thread(target=_run, args=(wh, engine, job, key), name=f"bigquery-job-{job_id}", daemon=True).start()
    return job


def dry_run(wh: AnyWarehouse, project: str, sql: str, default_dataset: tuple[str, str] | None = None) -> list[Field]:
    """The schema a query would return, without running it."""
    return query.run(wh, project, sql, default_dataset=default_dataset, dry_run=True).fields


def get(wh: AnyWarehouse, project: str, job_id: str) -> Job:
    check_project(project)
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound(f"Not found: Job {project}:{job_id[:200]}")
    with _database(), _engine(wh).connect() as conn:
        row = conn.execute(
            sa.select(records.c.record, records.c.seen_ms).where(
                records.c.project == project, records.c.job_id == job_id
            )
        ).first()
    if row is None:
        raise NotFound(f"Not found: Job {project}:{job_id}")
    data = orjson.loads(row.record)
    data["default_dataset"] = tuple(data["default_dataset"]) if data.get("default_dataset") else None
    job = Job(**data)
    if not job.done and _gone(job.owner, row.seen_ms):
        job.state = "DONE"
        job.error = {
            "message": "the dicomlake process that ran this job stopped before it finished; run the query again",
            "reason": "backendError",
            "http": 503,
            "status": "UNAVAILABLE",
        }
    return job


def cancel(wh: AnyWarehouse, project: str, job_id: str) -> Job:
    """jobs.cancel: ask the job to stop (its process, on whichever machine, interrupts it within
    query.WATCH_INTERVAL); the job as it is now."""
    job = get(wh, project, job_id)
    if not job.done:
        with _database(), _engine(wh).begin() as conn:
            conn.execute(
                records.update()
                .where(records.c.project == project, records.c.job_id == job_id, records.c.done.is_(False))
                .values(cancel=True)
            )
    return job


def page(wh: AnyWarehouse, job: Job, start: int = 0, max_rows: int | None = None) -> tuple[list[Field], pa.Table, int]:
    """Rows `start` .. `start + max_rows` of a done job's result (about results.PAGE_BYTES of them when max_rows is
    None), their schema and the result's number of rows."""
    try:
        return results.read(_results(wh, job.project, job.job_id), start, max_rows, job.total_rows)
    except FileNotFoundError:
        raise NotFound(f"Not found: the results of job {job.project}:{job.job_id} are gone (expired)") from None
    except OSError as exc:
        raise Unavailable(f"the results of job {job.project}:{job.job_id} could not be read: {exc}") from None


@contextmanager
def _database() -> Iterator[None]:
    """A database that cannot answer now (busy, unreachable) is BigQuery's backendError, which clients retry."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"the database of the query jobs did not answer: {exc.orig}") from None


def _stop_check(engine: sa.Engine, job: Job) -> query.StopCheck:
    seconds = _limits.timeout_seconds
    if job.timeout_ms is not None:
        seconds = min(seconds, job.timeout_ms / 1000)
    deadline = job.created_ms / 1000 + seconds
    asked = sa.select(records.c.cancel).where(records.c.project == job.project, records.c.job_id == job.job_id)

    def check() -> query.Stopped | None:
        if time.time() >= deadline:
            return query.Stopped(f"Query exceeded the time limit of {seconds:g} seconds", "timeout")
        try:
            with engine.connect() as conn:
                cancelled = bool(conn.execute(asked).scalar())
        except sa.exc.SQLAlchemyError as exc:  # looked at again a moment later
            log.warning("query job %s: cannot look whether it was cancelled: %s", job.job_id, exc)
            return None
        if cancelled:
            return query.Stopped("Job execution was cancelled: User requested cancellation", "stopped")
        return None

    return check


def _run(wh: AnyWarehouse, engine: sa.Engine, job: Job, key: tuple[str, str, str]) -> None:
    place = _results(wh, job.project, job.job_id)
    stop = _stop_check(engine, job)
    try:
        try:
            # A statement that cannot run fails at once, not after its turn behind long queries.
            bigquery_sql.parse(job.query, job.project, job.default_dataset)
            with _running:
                stopped = stop()  # cancelled or out of time while it waited its turn
                if stopped is not None:
                    raise stopped
                summary = query.run(
                    wh, job.project, job.query, default_dataset=job.default_dataset, results_path=place, stop=stop
                )
            job.fields = summary.fields
            job.total_rows = summary.total_rows
            job.statement_type = summary.statement_type
            job.affected_rows = summary.affected_rows
        except DicomlakeError as exc:
            job.error = _error(exc)
        except Exception as exc:
            # Still the end of the job, with a message; and not a 500, which clients would retry for minutes.
            log.exception("query job %s failed", job.job_id)
            job.error = {
                "message": f"the query failed: {type(exc).__name__}: {exc}",
                "reason": "invalidQuery",
                "http": 400,
                "status": "INVALID_ARGUMENT",
            }
        if job.error:
            results.delete(place)
        job.state = "DONE"
        job.ended_ms = _now_ms()
        with engine.begin() as conn:
            conn.execute(
                records.update()
                .where(records.c.project == job.project, records.c.job_id == job.job_id)
                .values(done=True, cancel=False, seen_ms=job.ended_ms, record=_dumps(job))
            )
    except Exception:
        # Its row says running until nobody has seen it for STALE_SECONDS: then it ended with an error.
        log.exception("query job %s: its end could not be recorded", job.job_id)
    finally:
        with _in_flight_guard:
            _in_flight.pop(key, None)
            waiters = _waiters.pop(key, [])
        for callback in waiters:
            try:
                callback()
            except Exception:  # a waiter gone with its event loop
                log.debug("query job %s: a waiter could not be woken", job.job_id, exc_info=True)


def when_done(wh: AnyWarehouse, project: str, job_id: str, callback: Callable[[], None]) -> bool:
    """Have `callback()` called (from the job's thread) when this process's job ends, and say so; False when the
    job is not running here (done, or run by another process: then only its row tells)."""
    key = (str(_engine(wh).url), project, job_id)
    with _in_flight_guard:
        if key not in _in_flight:
            return False
        _waiters.setdefault(key, []).append(callback)
        return True


def _error(exc: DicomlakeError) -> dict[str, Any]:
    reason = getattr(exc, "reason", None) or _REASONS.get(exc.status, "invalid")
    return {"message": exc.message, "reason": reason, "http": exc.http, "status": exc.status}


_REASONS = {
    "NOT_FOUND": "notFound",
    "ALREADY_EXISTS": "duplicate",
    "INVALID_ARGUMENT": "invalid",
    "FAILED_PRECONDITION": "invalid",
    "UNAVAILABLE": "backendError",
    "INTERNAL": "internalError",
}


def reason_of(exc: DicomlakeError) -> str:
    """BigQuery's `errors[].reason` for an error (`notFound`, `invalidQuery`, `duplicate`, ...)."""
    return _error(exc)["reason"]


# ---- where jobs are kept ------------------------------------------------------------------------


def _engine(wh: AnyWarehouse) -> sa.Engine:
    """The database of the warehouse's job rows: the Iceberg catalog's (the index database); for the embedded
    DuckDB warehouse, a SQLite file in its folder. The table is made once per process."""
    key = str(wh.root / "jobs.sqlite") if isinstance(wh, Warehouse) else wh.uri
    with _engines_guard:
        engine = _engines.get(key)
    if engine is not None:
        return engine
    if isinstance(wh, Warehouse):
        wh.root.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(f"sqlite:///{key}", connect_args={"timeout": 60})
    else:
        engine = wh.catalog.engine
    with _database():
        try:
            _metadata.create_all(engine)
        except sa.exc.DBAPIError:  # made by another process at the same moment: there now
            _metadata.create_all(engine)
    with _engines_guard:
        return _engines.setdefault(key, engine)


def _results(wh: AnyWarehouse, project: str, job_id: str) -> results.Place:
    """Where a job's result is: under the warehouse URL (every machine reads it), or in the embedded warehouse's
    folder."""
    if isinstance(wh, Warehouse):
        return results.Place.local(wh.root / "jobs" / project / f"{job_id}.arrow")
    fs, base = wh.results
    return results.Place(fs, f"{base}/{project}/{job_id}.arrow")


def _remove_expired(wh: AnyWarehouse, engine: sa.Engine) -> None:
    """Forget the jobs not seen for JOB_TTL_SECONDS, and delete their results (at most every _EXPIRY_SECONDS)."""
    key = str(engine.url)
    now = time.monotonic()
    with _engines_guard:
        if now < _expired_at.get(key, 0) + _EXPIRY_SECONDS:
            return
        _expired_at[key] = now
    cutoff = _now_ms() - JOB_TTL_SECONDS * 1000
    with engine.connect() as conn:
        expired = conn.execute(
            sa.select(records.c.project, records.c.job_id).where(records.c.seen_ms < cutoff).limit(1000)
        ).all()
    for project, job_id in expired:
        results.delete(_results(wh, project, job_id))
    if expired:
        with engine.begin() as conn:
            for project, job_id in expired:
                conn.execute(
                    records.delete().where(
                        records.c.project == project, records.c.job_id == job_id, records.c.seen_ms < cutoff
                    )
                )


def _start_heartbeat() -> None:
    global _heartbeat
    with _in_flight_guard:
        if _heartbeat is not None and _heartbeat.is_alive():
            return
        _heartbeat = threading.Thread(target=_beat, name="bigquery-jobs-heartbeat", daemon=True)
        _heartbeat.start()


def _beat() -> None:
    """Mark the rows of this process's jobs that are not done as seen, every HEARTBEAT_SECONDS."""
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        with _in_flight_guard:
            engines = {str(e.url): e for e in _in_flight.values()}
        for engine in engines.values():
            try:
                with engine.begin() as conn:
                    conn.execute(
                        records.update()
                        .where(records.c.owner == _owner(), records.c.done.is_(False))
                        .values(seen_ms=_now_ms())
                    )
            except Exception as exc:
                log.warning("query jobs: cannot mark this process's jobs as running: %s", exc)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(owner: str, seen_ms: int) -> bool:
    """Whether the process that runs a job is gone: it ran on this host and is no longer alive, or nobody has
    seen it for STALE_SECONDS."""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return True
    return seen_ms < _now_ms() - STALE_SECONDS * 1000


def _dumps(job: Job) -> str:
    return orjson.dumps(asdict(job)).decode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
