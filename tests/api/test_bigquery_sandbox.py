"""The BigQuery query engine behind `dicomlake serve` is sandboxed and bounded, seen from outside a real server
process on 127.0.0.1: queries cannot read files or run statements that reach beyond the tables, runaway jobs stop at
jobTimeoutMs, at the server's time limit and at jobs.cancel, and leave the process idle; runaway jobs at once stay
within the memory limit while the server answers; bad input is a 4xx in BigQuery's error shape, never a 5xx."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from conftest import Server, start_server

TOKEN = "s3cret-canary"
TIMEOUT_SECONDS = 3
MEMORY_MB = 128
LIMITS = {
    "DICOMLAKE_AUTH_TOKENS": TOKEN,
    "DICOMLAKE_QUERY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    "DICOMLAKE_QUERY_MEMORY_MB": str(MEMORY_MB),
    "DICOMLAKE_QUERY_CONCURRENCY": "2",
    # Queries only: without operations the server starts no pool processes, and its own process is all there is
    # to measure.
    "DICOMLAKE_OPERATION_THREADS": "0",
}
MB = 1 << 20
# Never ends on its own, and holds next to no memory: one row per step.
RUNAWAY = "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n+1 FROM r) SELECT COUNT(*) FROM r"
# Ends only after 10^10 rows, its hash table growing to the engine's memory limit and spilling on.
HEAVY = (
    "SELECT COUNT(DISTINCT a * 1000000 + b) FROM UNNEST(GENERATE_ARRAY(1, 100000)) AS a, "
    "UNNEST(GENERATE_ARRAY(1, 100000)) AS b"
)
STATUS_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}


@dataclass
class Api:
    """BigQuery's REST API of one server, as one project, with the bearer token on every request."""

    server: Server
    session: requests.Session
    project: str

    def url(self, path: str) -> str:
        return f"{self.server.url}/bigquery/v2/projects/{self.project}/{path}"

    def get(self, path: str, timeout: float = 30, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url(path), timeout=timeout, **kwargs)

    def post(self, path: str, timeout: float = 30, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url(path), timeout=timeout, **kwargs)

    def query(self, sql: str, **extra: Any) -> requests.Response:
        return self.post("queries", json={"query": sql, "useLegacySql": False, **extra})

    def insert(self, sql: str, job_timeout_ms: int | None = None) -> str:
        """jobs.insert of a query job; its id."""
        job_id = f"sandbox_{uuid.uuid4().hex}"
        configuration: dict[str, Any] = {"query": {"query": sql, "useLegacySql": False}}
        if job_timeout_ms is not None:
            configuration["jobTimeoutMs"] = str(job_timeout_ms)
        inserted = self.post("jobs", json={"jobReference": {"jobId": job_id}, "configuration": configuration})
        assert inserted.status_code == 200, inserted.text
        assert inserted.json()["jobReference"]["jobId"] == job_id
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        got = self.get(f"jobs/{job_id}")
        assert got.status_code == 200, got.text
        return got.json()

    def wait_done(self, job_id: str, deadline: float) -> dict[str, Any]:
        """The job once DONE; fails when it is not by `deadline` (time.monotonic())."""
        while True:
            job = self.job(job_id)
            if job["status"]["state"] == "DONE":
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not DONE in time: {job['status']}")
            time.sleep(0.05)


@contextmanager
def project_api(server: Server) -> Iterator[Api]:
    """The API of a new project of `server` that has a dataset `dicom`."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    api = Api(server, session, f"sandbox-{uuid.uuid4().hex[:10]}")
    try:
        # The project gets a file of its own: queries run on it, as a real project's do.
        created = api.post("datasets", json={"datasetReference": {"datasetId": "dicom"}})
        assert created.status_code == 200, created.text
        yield api
    finally:
        session.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = start_server(tmp_path_factory.mktemp("sandbox"), extra_env=LIMITS)
    try:
        with project_api(server) as client:
            yield client
    finally:
        server.stop()


def assert_error(response: requests.Response, code: int, reason: str) -> str:
    """The response is BigQuery's error envelope with this code and reason; its message."""
    assert response.status_code == code, response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert (error["code"], error["status"]) == (code, STATUS_NAMES[code]), error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["errors"] == [{"message": error["message"], "domain": "global", "reason": reason}], error
    return error["message"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def server_pid(api: Api) -> int:
    """The pid whose CPU and memory are the server's: `dicomlake serve` itself, no wrapper, no child processes."""
    process = psutil.Process(api.server.process.pid)
    assert process.cmdline()[1:4] == ["-m", "dicomlake", "serve"], process.cmdline()
    assert process.children(recursive=True) == []
    return process.pid


# ---- file access and statements ---------------------------------------------------------------


FILE_READS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/*')",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
]


@pytest.mark.parametrize("sql", FILE_READS)
def test_jobs_query_refuses_to_read_files(api: Api, sql: str) -> None:
    refused = api.query(sql)

    assert_error(refused, 400, "invalidQuery")
    assert "root:" not in refused.text and TOKEN not in refused.text


@pytest.mark.parametrize("sql", FILE_READS)
def test_a_query_job_that_reads_files_ends_with_invalid_query_and_no_file_content(api: Api, sql: str) -> None:
    job_id = api.insert(sql)

    job = api.wait_done(job_id, time.monotonic() + 5)

    assert job["status"]["errorResult"]["reason"] == "invalidQuery", job["status"]
    results = api.get(f"queries/{job_id}")
    assert_error(results, 400, "invalidQuery")
    for text in (str(job), results.text):
        assert "root:" not in text and TOKEN not in text


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 'x' AS a) TO '{tmp}/victim.txt' (HEADER false)",
        "LOAD '/tmp/x.duckdb_extension'",
        "INSTALL httpfs",
        "ATTACH '{tmp}/x.db' AS x",
        "SET enable_external_access = true",
        "PRAGMA version",
        "CALL pragma_version()",
        "EXPORT DATABASE '{tmp}/x'",
    ],
)
def test_statements_that_reach_beyond_the_tables_are_refused(api: Api, tmp_path: Path, sql: str) -> None:
    refused = api.query(sql.format(tmp=tmp_path))

    assert_error(refused, 400, "invalidQuery")
    assert list(tmp_path.iterdir()) == []  # no victim.txt, x.db or exported database


def test_a_generate_array_past_the_guard_is_refused(api: Api) -> None:
    refused = api.query("SELECT COUNT(*) FROM UNNEST(GENERATE_ARRAY(1, 1000000000))")

    message = assert_error(refused, 400, "invalidQuery")
    assert "GENERATE_ARRAY: the array would have more than 1,000,000 elements" in message


# ---- runaway jobs -----------------------------------------------------------------------------


def test_a_runaway_job_stops_at_its_job_timeout_ms(api: Api) -> None:
    inserted = time.monotonic()
    job_id = api.insert(RUNAWAY, job_timeout_ms=1000)

    job = api.wait_done(job_id, inserted + 4)

    assert job["configuration"]["jobTimeoutMs"] == "1000"
    assert job["status"]["errorResult"] == {
        "reason": "timeout",
        "message": "Query exceeded the time limit of 1 seconds",
    }
    assert_error(api.get(f"queries/{job_id}"), 400, "timeout")


def test_a_runaway_job_stops_at_the_servers_time_limit(api: Api) -> None:
    inserted = time.monotonic()
    job_id = api.insert(RUNAWAY)

    job = api.wait_done(job_id, inserted + 6)

    assert job["status"]["errorResult"] == {
        "reason": "timeout",
        "message": f"Query exceeded the time limit of {TIMEOUT_SECONDS} seconds",
    }


def cancel_running(api: Api, job_id: str) -> float:
    """jobs.cancel of a job once the engine runs it; when the cancel was sent."""
    time.sleep(0.3)  # the engine is past planning the query: it runs it
    cancelled_at = time.monotonic()
    cancelled = api.post(f"jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["kind"] == "bigquery#jobCancelResponse"
    assert cancelled.json()["job"]["jobReference"]["jobId"] == job_id
    return cancelled_at


def test_jobs_cancel_stops_a_running_job(api: Api) -> None:
    job_id = api.insert(RUNAWAY)
    assert api.job(job_id)["status"]["state"] == "RUNNING"
    cancelled_at = cancel_running(api, job_id)

    job = api.wait_done(job_id, cancelled_at + 2)

    assert job["status"]["errorResult"] == {
        "reason": "stopped",
        "message": "Job execution was cancelled: User requested cancellation",
    }


def test_the_server_is_idle_once_its_runaway_jobs_are_done(api: Api) -> None:
    pid = server_pid(api)
    timed_out, cancelled = api.insert(RUNAWAY, job_timeout_ms=500), api.insert(RUNAWAY)
    cancelled_at = cancel_running(api, cancelled)
    assert api.wait_done(cancelled, cancelled_at + 2)["status"]["errorResult"]["reason"] == "stopped"
    assert api.wait_done(timed_out, time.monotonic() + 4)["status"]["errorResult"]["reason"] == "timeout"

    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(1.5)
    per_second = (cpu_seconds(pid) - before) / (time.monotonic() - started)

    assert per_second < 0.3, f"the server used {per_second:.2f} s of CPU per second with no job running"


def run_at_once(api: Api, sql: str, jobs: int, within: float) -> tuple[int, int, float, list[dict[str, Any]]]:
    """`jobs` jobs of `sql` inserted at once, then, every 0.2 s until all are DONE: the server's RSS and the time
    datasets.list takes. The RSS before, the highest seen, the slowest datasets.list and the jobs once DONE."""
    pid = server_pid(api)
    baseline = rss_bytes(pid)
    started = time.monotonic()
    ids = [api.insert(sql) for _ in range(jobs)]
    peak, slowest, done = baseline, 0.0, {}
    while len(done) < jobs:
        assert time.monotonic() < started + within, f"not all DONE within {within} s: {done}"
        peak = max(peak, rss_bytes(pid))
        asked = time.monotonic()
        listed = api.get("datasets", timeout=5)
        slowest = max(slowest, time.monotonic() - asked)
        assert listed.status_code == 200, listed.text
        for job_id in ids:
            if job_id not in done and (job := api.job(job_id))["status"]["state"] == "DONE":
                done[job_id] = job
        time.sleep(0.2)
    return baseline, peak, slowest, [done[i] for i in ids]


def test_runaway_jobs_at_once_stay_within_the_memory_limit_while_the_server_answers(api: Api) -> None:
    baseline, peak, slowest, done = run_at_once(api, HEAVY, jobs=3, within=8)

    assert peak - baseline <= 3 * MEMORY_MB * MB + 300 * MB, f"RSS grew by {(peak - baseline) / MB:.0f} MB"
    assert slowest < 1, f"datasets.list took {slowest:.2f} s while the jobs ran"
    assert [j["status"]["errorResult"]["reason"] for j in done] == ["timeout"] * 3


def test_the_largest_generate_array_the_guard_allows_stays_within_the_memory_limit(api: Api) -> None:
    """The engine builds a generated array outside its memory limit: the guard's bound keeps it small."""
    sql = "SELECT COUNT(*) FROM UNNEST(GENERATE_ARRAY(1, 1000000)) AS a"

    baseline, peak, _, _ = run_at_once(api, sql, jobs=3, within=15)

    assert peak - baseline <= 3 * MEMORY_MB * MB + 300 * MB, f"RSS grew by {(peak - baseline) / MB:.0f} MB"


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "reason"),
    [
        ("GET", "queries/" + "a" * 300, None, 404, "notFound"),
        ("GET", "jobs/" + "a" * 300, None, 404, "notFound"),
        ("POST", "jobs", {"configuration": 5, "jobReference": 7}, 400, "invalid"),
        ("POST", "jobs", {"configuration": {"query": {"query": "SELECT 1"}}, "jobReference": 7}, 400, "invalid"),
        # 2^64 does not fit a 64-bit integer: the JSON parser makes it a float, which maxResults refuses.
        ("POST", "queries", {"query": "SELECT 1", "maxResults": 18446744073709551616}, 400, "invalid"),
        ("POST", "queries", {"query": "SELECT " + "(" * 3000 + "1" + ")" * 3000, "dryRun": True}, 400, "invalidQuery"),
        ("POST", "datasets", {"datasetReference": {"datasetId": "d1"}, "labels": True}, 400, "invalid"),
        ("POST", "datasets", {"datasetReference": {"datasetId": "d1"}, "labels": [1]}, 400, "invalid"),
        # Project `1` is a valid id with no dataset `2`.
        ("POST", "queries", {"query": "SELECT * FROM `1.2.3`", "useLegacySql": False}, 404, "notFound"),
    ],
    ids=[
        "long-query-results-id",
        "long-job-id",
        "non-object-configuration",
        "non-object-job-reference",
        "max-results-2**64",
        "3000-nested-parentheses",
        "labels-true",
        "labels-list",
        "table-1.2.3",
    ],
)
def test_bad_input_is_a_4xx_in_bigquerys_shape(
    api: Api, method: str, path: str, body: dict[str, Any] | None, code: int, reason: str
) -> None:
    answer = api.session.request(method, api.url(path), json=body, timeout=30)

    assert_error(answer, code, reason)


def test_the_server_still_answers_a_plain_query(api: Api) -> None:
    answer = api.query("SELECT 1 AS x")

    assert answer.status_code == 200, answer.text
    assert answer.json()["jobComplete"] is True
    assert answer.json()["rows"] == [{"f": [{"v": "1"}]}]
    assert api.get("datasets/d1").status_code == 404  # the bad dataset bodies above created nothing
