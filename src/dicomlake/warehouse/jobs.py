"""Query jobs as BigQuery runs them (jobs.insert, jobs.query, jobs.get, jobs.getQueryResults) on the embedded
warehouse. A job is a JSON file and, once done, an Arrow file with its result under `<warehouse>/jobs/<project>/`,
so that any server process can answer for a job another one ran, and later pages read the very rows the first
one did. A thread of the process that accepted the job runs it; files older than a day are removed.

Each job runs under limits (`Limits`, set from the process's settings by `configure`): a wall-clock limit (the
job's own `jobTimeoutMs` when shorter), a memory limit per DuckDB instance, and a number of jobs run at once (the
others wait their turn). jobs.cancel leaves a `<job>.cancel` file that the running job's process sees within
`query.WATCH_INTERVAL`, whichever process that is."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dicomlake.errors import AlreadyExists, DicomlakeError, InvalidArgument, NotFound
from dicomlake.storage.journal import process_alive
from dicomlake.warehouse import embedded, query, results
from dicomlake.warehouse import sql as bigquery_sql
from dicomlake.warehouse.embedded import DEFAULT_LOCATION, AnyWarehouse, check_project
from dicomlake.warehouse.schema import Field

log = logging.getLogger("dicomlake.warehouse")

JOB_TTL_SECONDS = 24 * 3600
# BigQuery allows 1,024 characters; a file name allows 255 bytes.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


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


# The job files of this process's jobs that are not done.
_in_flight: set[Path] = set()
_in_flight_guard = threading.Lock()


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
    project: str
    job_id: str
    location: str
    query: str
    default_dataset: tuple[str, str] | None
    state: str = "RUNNING"
    created_ms: int = 0
    started_ms: int = 0
    ended_ms: int = 0
    error: dict[str, Any] | None = None
    fields: list[Field] = field(default_factory=list)
    total_rows: int = 0
    statement_type: str | None = None
    affected_rows: int | None = None
    pid: int = 0
    timeout_ms: int | None = None

    @property
    def done(self) -> bool:
        return self.state == "DONE"

    def reference(self) -> dict[str, str]:
        return {"projectId": self.project, "jobId": self.job_id, "location": self.location}

    def resource(self) -> dict[str, Any]:
        """The Job resource of jobs.get and jobs.insert."""
        config: dict[str, Any] = {"query": self.query, "useLegacySql": False, "priority": "INTERACTIVE"}
        jobconfig: dict[str, Any] = {"jobType": "QUERY", "query": config}
        if self.timeout_ms is not None:
            jobconfig["jobTimeoutMs"] = str(self.timeout_ms)
        if self.default_dataset:
            config["defaultDataset"] = {"projectId": self.default_dataset[0], "datasetId": self.default_dataset[1]}
        statistics: dict[str, Any] = {"creationTime": str(self.created_ms), "startTime": str(self.started_ms)}
        status: dict[str, Any] = {"state": self.state}
        if self.done:
            statistics["endTime"] = str(self.ended_ms)
            statistics["totalBytesProcessed"] = "0"
            statistics["query"] = {"totalBytesProcessed": "0", "totalBytesBilled": "0", "cacheHit": False}
            if self.statement_type:
                statistics["query"]["statementType"] = self.statement_type
            if self.affected_rows is not None:
                statistics["query"]["numDmlAffectedRows"] = str(self.affected_rows)
        if self.error:
            status["errorResult"] = _error_proto(self.error)
            status["errors"] = [_error_proto(self.error)]
        return {
            "kind": "bigquery#job",
            "etag": f'"{self.job_id}-{self.state}"',
            "id": f"{self.project}:{self.location}.{self.job_id}",
            "jobReference": self.reference(),
            "configuration": jobconfig,
            "statistics": statistics,
            "status": status,
        }


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
    folder = _folder(wh, project)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_expired(folder)
    now = time.time_ns() // 1_000_000
    job = Job(
        project,
        job_id,
        location or DEFAULT_LOCATION,
        sql,
        default_dataset,
        created_ms=now,
        started_ms=now,
        pid=os.getpid(),
        timeout_ms=timeout_ms,
    )
    path = _job_file(wh, project, job_id)
    duplicate = AlreadyExists(f"Already Exists: Job {project}:{job.location}.{job_id}")
    with _in_flight_guard:
        if path in _in_flight:
            raise duplicate
        if len(_in_flight) >= MAX_JOBS:
            raise TooManyJobs(
                f"Exceeded rate limits: {MAX_JOBS} query jobs are running or waiting in this server; retry later"
            )
        _in_flight.add(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(orjson.dumps(asdict(job)))
    try:
        # A hard link appears whole and fails if the name exists: the same job id twice is an error, even from
        # two processes at once, and no reader sees half a file.
        os.link(tmp, path)
    except BaseException as exc:
        with _in_flight_guard:
            _in_flight.discard(path)
        if isinstance(exc, FileExistsError):
            raise duplicate from None
        raise
    finally:
        tmp.unlink()
    threading.Thread(target=_run, args=(wh, job), name=f"bigquery-job-{job_id}", daemon=True).start()
    return job


def dry_run(wh: AnyWarehouse, project: str, sql: str, default_dataset: tuple[str, str] | None = None) -> list[Field]:
    """The schema a query would return, without running it."""
    return query.run(wh, project, sql, default_dataset=default_dataset, dry_run=True).fields


def get(wh: AnyWarehouse, project: str, job_id: str) -> Job:
    check_project(project)
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound(f"Not found: Job {project}:{job_id[:200]}")
    try:
        data = orjson.loads(_job_file(wh, project, job_id).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"Not found: Job {project}:{job_id}") from None
    data["default_dataset"] = tuple(data["default_dataset"]) if data.get("default_dataset") else None
    job = Job(**data)
    if not job.done and not process_alive(job.pid):
        job.state = "DONE"
        job.error = {
            "message": "the dicomlake process that ran this job stopped before it finished; run the query again",
            "reason": "backendError",
            "http": 503,
            "status": "UNAVAILABLE",
        }
    return job


def cancel(wh: AnyWarehouse, project: str, job_id: str) -> Job:
    """jobs.cancel: ask the job to stop (its process interrupts it within query.WATCH_INTERVAL); the job as it is
    now."""
    job = get(wh, project, job_id)
    if not job.done:
        _cancel_file(wh, project, job_id).touch()
    return job


def query_results(
    wh: AnyWarehouse,
    job: Job,
    *,
    start: int = 0,
    max_rows: int | None = None,
    timestamps: str = results.TimestampFormat.FLOAT_SECONDS,
    kind: str = "bigquery#getQueryResultsResponse",
) -> dict[str, Any]:
    """The QueryResponse / GetQueryResultsResponse for a page of a job's rows: `jobComplete: false` while it runs;
    the job's own error when it failed."""
    response: dict[str, Any] = {"kind": kind, "jobReference": job.reference(), "jobComplete": job.done}
    if not job.done:
        return response
    if job.error:
        raise JobFailed(job.error)
    response.update(totalBytesProcessed="0", cacheHit=False)
    if job.affected_rows is not None:
        response["numDmlAffectedRows"] = str(job.affected_rows)
    if not job.fields:
        response["totalRows"] = "0"
        return response
    response["schema"] = {"fields": job.fields}
    response["totalRows"] = str(job.total_rows)
    if max_rows == 0:
        return response
    fields, page, total = results.read(_results_file(wh, job.project, job.job_id), start, max_rows)
    if page.num_rows:
        response["rows"] = results.rows_json(page, fields, timestamps)
        following = start + page.num_rows
        if following < total:
            response["pageToken"] = str(following)
    return response


def _stop_check(wh: AnyWarehouse, job: Job) -> query.StopCheck:
    seconds = _limits.timeout_seconds
    if job.timeout_ms is not None:
        seconds = min(seconds, job.timeout_ms / 1000)
    deadline = job.created_ms / 1000 + seconds
    cancel_file = _cancel_file(wh, job.project, job.job_id)

    def check() -> query.Stopped | None:
        if cancel_file.exists():
            return query.Stopped("Job execution was cancelled: User requested cancellation", "stopped")
        if time.time() >= deadline:
            return query.Stopped(f"Query exceeded the time limit of {seconds:g} seconds", "timeout")
        return None

    return check


def _run(wh: AnyWarehouse, job: Job) -> None:
    path = _job_file(wh, job.project, job.job_id)
    stop = _stop_check(wh, job)
    try:
        # A statement that cannot run fails at once, not after its turn behind long queries.
        bigquery_sql.parse(job.query, job.project, job.default_dataset)
        with _running:
            stopped = stop()  # cancelled or out of time while it waited its turn
            if stopped is not None:
                raise stopped
            summary = query.run(
                wh,
                job.project,
                job.query,
                default_dataset=job.default_dataset,
                results_path=_results_file(wh, job.project, job.job_id),
                stop=stop,
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
        _results_file(wh, job.project, job.job_id).unlink(missing_ok=True)
    _cancel_file(wh, job.project, job.job_id).unlink(missing_ok=True)
    job.state = "DONE"
    job.ended_ms = time.time_ns() // 1_000_000
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(asdict(job)))
    os.replace(tmp, path)
    with _in_flight_guard:
        _in_flight.discard(path)


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


def _error_proto(error: dict[str, Any]) -> dict[str, str]:
    return {"reason": error["reason"], "message": error["message"]}


def _folder(wh: AnyWarehouse, project: str) -> Path:
    return wh.root / "jobs" / project


def _job_file(wh: AnyWarehouse, project: str, job_id: str) -> Path:
    return _folder(wh, project) / f"{job_id}.json"


def _results_file(wh: AnyWarehouse, project: str, job_id: str) -> Path:
    return _folder(wh, project) / f"{job_id}.arrow"


def _cancel_file(wh: AnyWarehouse, project: str, job_id: str) -> Path:
    return _folder(wh, project) / f"{job_id}.cancel"


def _remove_expired(folder: Path) -> None:
    oldest = time.time() - JOB_TTL_SECONDS
    with os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < oldest:
                    os.unlink(entry.path)
