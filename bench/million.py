"""A million instances: the realistic corpus (metadata only, so that the index is what grows) stored by 4
clients in batches of 50, on SQLite and on PostgreSQL; STOW's rate for each chunk as the store fills, then
QIDO-RS searches and a 500-instance series' /metadata on the full store.

Orthanc is left out: at its rate (~700 instances/s here with 4 clients) filling it would take longer than
both dicomlake runs together; the 100,000-study QIDO table has it."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import corpus, servers
from bench.measure import save, store_all
from bench.qido import _latency
from bench.stow import _stow

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHUNK = 50_000
SEED = 13


@contextlib.contextmanager
def _postgres_database() -> Iterator[str | None]:
    """A new database on the local PostgreSQL, dropped afterwards; None when none answers."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_million WITH (FORCE)")
            conn.execute("CREATE DATABASE bench_million")
    except Exception as exc:  # no PostgreSQL here: the SQLite row only
        print(f"million: PostgreSQL skipped ({str(exc).splitlines()[0]})")
        yield None
        return
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/bench_million"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_million WITH (FORCE)")


def _searches(plan: list[corpus.Series]) -> dict[str, tuple[str, dict[str, str] | None]]:
    """What a worklist or a viewer asks of a full archive, with values that match a few studies each."""
    middle = plan[len(plan) // 2].study
    name = middle.patient.PatientName.split("^")[0]
    month = middle.StudyDate[:6]
    half = len({s.study.StudyInstanceUID for s in plan}) // 2
    return {
        "all studies (limit 100)": ("studies", {"limit": "100"}),
        f"all studies, the page at offset {half:,} (half of them, limit 25)": (
            "studies",
            {"limit": "25", "offset": str(half)},
        ),
        "PatientID exact": ("studies", {"PatientID": middle.patient.PatientID}),
        "PatientName prefix wildcard": ("studies", {"PatientName": f"{name[:3]}*", "limit": "100"}),
        "StudyDate one month + ModalitiesInStudy": (
            "studies",
            {"StudyDate": f"{month}01-{month}28", "ModalitiesInStudy": plan[len(plan) // 2].Modality, "limit": "100"},
        ),
        "AccessionNumber exact": ("studies", {"AccessionNumber": middle.AccessionNumber}),
        "series of one study": (f"studies/{middle.StudyInstanceUID}/series", None),
    }


def _one(label: str, database_url: str, total: int, plan: list[corpus.Series]) -> dict[str, Any]:
    big_study = 10_000_000  # its own UID space (corpus.make), apart from the realistic corpus'
    result: dict[str, Any] = {"database": label, "chunks": [], "searches": {}}
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), database_url=database_url) as target:
        stream = itertools.chain.from_iterable(corpus.series_instances(s, metadata_only=True) for s in plan)
        stored = 0
        while stored < total:
            chunk = list(itertools.islice(stream, CHUNK))
            if not chunk:
                break
            run = _stow(target, chunk, 4, 50)
            result["chunks"].append(
                {"stored_before": stored, "instances_per_s": run["instances_per_s"], "p99_ms": run["p99_ms"]}
            )
            stored += len(chunk)
            print(f"million [{label}]: {stored:,} stored, {run['instances_per_s']:,.0f}/s for the last chunk")
        store_all(target.dicomweb, corpus.make(corpus.series(big_study, 500)), batch=100)
        result["instances"] = stored + 500
        if database_url:
            # What autovacuum does on its own a minute after a bulk load; this machine's PostgreSQL runs with
            # autovacuum off, and planning on statistics of an empty table chooses scans that sort every study.
            import psycopg

            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            result["vacuum_analyze_before_searches"] = True
        for name, (path, params) in _searches(plan).items():
            result["searches"][name] = _latency(f"{target.dicomweb}/{path}", params)
        series = f"{target.dicomweb}/studies/{corpus.uid(1, big_study)}/series/{corpus.uid(2, big_study, 0)}"
        result["metadata_of_500_instance_series"] = _latency(f"{series}/metadata")
    rates = [c["instances_per_s"] for c in result["chunks"]]
    result["last_chunk_to_first"] = round(rates[-1] / rates[0], 2) if rates else None
    return result


def run(total: int = 1_000_000, name: str = "million", sqlite: bool = True) -> dict[str, Any]:
    plan = corpus.plan(total, seed=SEED)
    results: dict[str, Any] = {"instances": total, "chunk": CHUNK, "clients": 4, "batch": 50, "runs": []}
    if sqlite:
        results["runs"].append(_one("SQLite", "", total, plan))
        save(name, results)
    with _postgres_database() as url:
        if url:
            results["runs"].append(_one("PostgreSQL", url, total, plan))
    save(name, results)
    return results
