"""The query sandbox, wall by wall: the statement and function allow-list of the BigQuery parse, the engine's own
settings (no files, URLs or extensions, whatever a statement says), the check of the engine's own parse; and the
limits that stop a query (time, cancel, memory, result size) without leaving anything behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from dicomlake.errors import InvalidArgument, NotFound
from dicomlake.warehouse import embedded, jobs, query
from dicomlake.warehouse.embedded import TableRef, Warehouse
from dicomlake.warehouse.sql import DENIED_FUNCTIONS, InvalidQuery

SECRET = "/etc/passwd"
RUNAWAY = "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) AS c FROM r"


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    warehouse = Warehouse.in_data_dir(tmp_path_factory.mktemp("sandbox"))
    for project in ("p", "other"):
        embedded.create_dataset(warehouse, project, "d")
        embedded.append(
            warehouse, TableRef(project, "d", "t"), [{"name": "a", "type": "INTEGER", "mode": "NULLABLE"}], [{"a": 1}]
        )
    return warehouse


def run(wh: Warehouse, sql: str, project: str = "p", **options: object) -> query.Summary:
    return query.run(wh, project, sql, results_path=wh.root / "result.arrow", **options)  # type: ignore[arg-type]


def _table_functions() -> list[str]:
    with duckdb.connect() as conn:
        rows = conn.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro', 'pragma') AND function_name <> 'unnest' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


def test_the_engine_has_table_functions_to_refuse() -> None:
    names = _table_functions()
    assert {"read_csv", "read_text", "read_blob", "glob", "read_parquet", "duckdb_settings"} <= set(names)


@pytest.mark.parametrize("project", ["p", "nofile"], ids=["on-a-project-file", "in-memory"])
def test_every_table_function_of_the_engine_is_refused(wh: Warehouse, project: str) -> None:
    ran = []
    for name in _table_functions():
        for sql in (f"SELECT * FROM {name}('{SECRET}')", f"SELECT * FROM `{name}`()", f"SELECT * FROM {name}()"):
            try:
                run(wh, sql, project)
            except InvalidQuery:
                continue
            ran.append(sql)
    assert ran == []


# BigQuery's parse reads these two as its own: CURRENT_CATALOG (the name of the query's catalog) and GENERATE_SERIES
# (bounded as GENERATE_ARRAY is, below).
@pytest.mark.parametrize("name", sorted(DENIED_FUNCTIONS - {"current_catalog", "generate_series"}))
def test_denied_scalar_functions_are_refused(wh: Warehouse, name: str) -> None:
    for sql in (f"SELECT {name}() AS x", f"SELECT {name}('memory_limit') AS x", f"SELECT {name}(1, 10) AS x"):
        with pytest.raises(InvalidQuery):
            run(wh, sql)


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM '{SECRET}'",
        f"SELECT * FROM `{SECRET}`",
        "SELECT * FROM p.d.t, read_text('/proc/self/environ')",
        f"SELECT (SELECT COUNT(*) FROM read_csv('{SECRET}')) AS n",
        f"SELECT a FROM p.d.t WHERE a IN (SELECT 1 FROM glob('{SECRET}'))",
        f"SELECT * FROM other.d.t JOIN read_blob('{SECRET}') ON TRUE",
    ],
)
def test_files_are_out_of_reach_wherever_the_query_names_them(wh: Warehouse, sql: str) -> None:
    with pytest.raises(InvalidArgument):
        run(wh, sql)


@pytest.mark.parametrize(
    "sql",
    [
        f"COPY (SELECT 1 AS a) TO '{SECRET}.copy'",
        "LOAD '/tmp/x.duckdb_extension'",
        "INSTALL httpfs",
        "ATTACH '/tmp/dicomlake-attached.db' AS x",
        "DETACH p",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "PRAGMA version",
        "CALL pragma_version()",
        "EXPORT DATABASE '/tmp/dicomlake-export'",
        "IMPORT DATABASE '/tmp/dicomlake-export'",
        "USE other",
        "CHECKPOINT",
        "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
        "CREATE MACRO m(x) AS x",
        "CREATE SEQUENCE d.s",
    ],
)
def test_statements_beyond_tables_are_refused(wh: Warehouse, sql: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidQuery):
        run(wh, sql)
    assert not Path("/tmp/dicomlake-attached.db").exists()
    assert not Path("/tmp/dicomlake-export").exists()


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM read_csv('{SECRET}')",
        f"SELECT * FROM read_text('{SECRET}')",
        f"SELECT * FROM read_blob('{SECRET}')",
        f"SELECT * FROM glob('{SECRET}')",
        f"SELECT * FROM '{SECRET}'",
        "COPY (SELECT 1 AS a) TO '{tmp}/copied.csv'",
        "LOAD '/tmp/x.duckdb_extension'",
        "INSTALL httpfs",
        "ATTACH '{tmp}/attached.db' AS x",
        "SET enable_external_access = true",
    ],
)
def test_the_engine_itself_refuses_files_urls_and_extensions(sql: str, tmp_path: Path) -> None:
    """The second wall alone: a connection made as the warehouse makes them, given the raw statement."""
    with duckdb.connect(config=embedded.CONFIG) as conn, pytest.raises(duckdb.Error):
        conn.execute(sql.format(tmp=tmp_path)).fetchall()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM read_csv('{SECRET}')",
        "SELECT current_setting('memory_limit') AS x",
        "SELECT * FROM duckdb_settings()",
        "SELECT getvariable('x') AS x",
    ],
)
def test_the_engine_parse_check_alone_refuses_what_the_first_wall_would(sql: str) -> None:
    with duckdb.connect(config=embedded.CONFIG) as conn, pytest.raises(InvalidQuery):
        query.check_engine_parse(conn, sql)


def test_the_engine_parse_check_lets_ordinary_queries_through() -> None:
    with duckdb.connect(config=embedded.CONFIG) as conn:
        query.check_engine_parse(conn, "SELECT lower(x) AS y, count(*) FROM (SELECT unnest([1, 2]) AS x) GROUP BY 1")


def test_a_huge_generated_array_is_refused_before_it_is_built(wh: Warehouse) -> None:
    with pytest.raises(InvalidArgument, match="GENERATE_ARRAY"):
        run(wh, "SELECT COUNT(*) AS n FROM UNNEST(GENERATE_ARRAY(1, 1000000000)) AS x")
    with pytest.raises(InvalidArgument, match="GENERATE_ARRAY"):
        run(wh, "SELECT GENERATE_SERIES(1, 1000000000) AS x")
    with pytest.raises(InvalidArgument, match="GENERATE_TIMESTAMP_ARRAY"):
        run(wh, "SELECT GENERATE_TIMESTAMP_ARRAY('2020-01-01', '2021-01-01', INTERVAL 1 SECOND) AS x")
    assert run(wh, "SELECT GENERATE_DATE_ARRAY('2020-01-01', '2020-01-05') AS x").total_rows == 1
    assert run(wh, "SELECT COUNT(*) AS n FROM UNNEST(GENERATE_ARRAY(1, 1000)) AS x").total_rows == 1


@pytest.mark.parametrize("project", ["p", "nofile"], ids=["on-a-project-file", "in-memory"])
def test_a_runaway_query_stops_soon_after_it_is_told_to(wh: Warehouse, project: str) -> None:
    start = time.monotonic()

    def stop() -> query.Stopped | None:
        return query.Stopped("out of time", "timeout") if time.monotonic() - start > 0.5 else None

    with pytest.raises(query.Stopped) as raised:
        run(wh, RUNAWAY, project, stop=stop)
    assert raised.value.reason == "timeout"
    assert time.monotonic() - start < 2.5
    # The connection's file is usable at once by the next query.
    assert run(wh, "SELECT a FROM p.d.t").total_rows == 1


def test_a_query_past_its_memory_limit_fails_with_a_clear_error(wh: Warehouse) -> None:
    sql = (
        "SELECT LENGTH(STRING_AGG(REPEAT('x', 100), ',')) AS s "
        "FROM UNNEST(GENERATE_ARRAY(1, 1000000)) AS a, UNNEST(GENERATE_ARRAY(1, 5)) AS b"
    )
    with pytest.raises(InvalidQuery) as raised:
        run(wh, sql, "nofile")
    assert "\n" not in raised.value.message and "memory" in raised.value.message.lower()


def test_a_result_past_the_cap_fails_and_leaves_no_file(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query, "MAX_RESULT_BYTES", 1 << 20)
    path = wh.root / "too-large.arrow"
    with pytest.raises(query.Stopped) as raised:
        query.run(wh, "p", "SELECT x FROM UNNEST(GENERATE_ARRAY(1, 1000000)) AS x", results_path=path)
    assert raised.value.reason == "responseTooLarge"
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("too-large")] == []


def test_a_process_holds_a_bounded_number_of_jobs(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "MAX_JOBS", 3)
    held = [jobs.start(wh, "p", RUNAWAY, timeout_ms=20_000) for _ in range(3)]
    with pytest.raises(jobs.TooManyJobs) as raised:
        jobs.start(wh, "p", "SELECT 1 AS x")
    assert raised.value.http == 403 and jobs.reason_of(raised.value) == "rateLimitExceeded"
    for job in held:
        jobs.cancel(wh, "p", job.job_id)
    deadline = time.monotonic() + 5
    while not all(jobs.get(wh, "p", j.job_id).done for j in held):
        assert time.monotonic() < deadline, "cancelled jobs did not end"
        time.sleep(0.05)
    assert {jobs.get(wh, "p", j.job_id).error["reason"] for j in held} == {"stopped"}  # type: ignore[index]
    # Their places are free again.
    job = jobs.start(wh, "p", "SELECT 1 AS x")
    while not job.done:
        time.sleep(0.01)
        job = jobs.get(wh, "p", job.job_id)
    assert job.error is None and job.total_rows == 1


def test_a_statement_that_cannot_run_fails_without_waiting_its_turn(
    wh: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_running", threading.BoundedSemaphore(1))
    runaway = jobs.start(wh, "p", RUNAWAY, timeout_ms=20_000)
    try:
        refused = jobs.start(wh, "p", "INSTALL httpfs")
        deadline = time.monotonic() + 2
        while not refused.done:
            assert time.monotonic() < deadline, "the refused statement waited behind the running query"
            time.sleep(0.02)
            refused = jobs.get(wh, "p", refused.job_id)
        assert refused.error is not None and refused.error["reason"] == "invalidQuery"
        assert not jobs.get(wh, "p", runaway.job_id).done
    finally:
        jobs.cancel(wh, "p", runaway.job_id)
        while not jobs.get(wh, "p", runaway.job_id).done:
            time.sleep(0.05)


def test_a_query_told_to_stop_while_it_is_planned_still_stops(wh: Warehouse) -> None:
    """Planning this one builds two arrays of 1,000,000 elements: the stop comes before it runs."""
    sql = "SELECT COUNT(*) AS n FROM UNNEST(GENERATE_ARRAY(1, 1000000)) AS a, UNNEST(GENERATE_ARRAY(1, 1000000)) AS b"
    start = time.monotonic()
    with pytest.raises(query.Stopped):
        run(wh, sql, stop=lambda: query.Stopped("out of time", "timeout"))
    assert time.monotonic() - start < 20


def _keywords() -> list[str]:
    with duckdb.connect() as conn:
        return [name for (name,) in conn.execute("SELECT keyword_name FROM duckdb_keywords() ORDER BY 1").fetchall()]


def test_every_keyword_of_the_engine_starting_a_statement_is_refused_or_only_reads(
    wh: Warehouse, tmp_path: Path
) -> None:
    """Statements made from the engine's own keyword list, so that a new release's statement kind is covered: none
    runs but a SELECT, and none touches a file."""
    target = tmp_path / "touched"
    keywords = _keywords()
    assert {"copy", "attach", "load", "install", "pragma", "export"} <= set(keywords)
    ran = []
    for keyword in keywords:
        for sql in (f"{keyword} '{target}'", f"{keyword} DATABASE '{target}'", f"{keyword} x"):
            try:
                summary = run(wh, sql)
            except (InvalidArgument, NotFound):
                continue
            ran.append((sql, summary.statement_type))
    assert {kind for _, kind in ran} <= {"SELECT"}, ran
    assert not target.exists()
