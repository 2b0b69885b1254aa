"""The tables side, measured over HTTP against a dicomlake server process: export to a table (instances/s,
peak RSS of the server and its pool), queries over the exported table (the seeds' two queries and a GROUP BY),
and streaming (STOW throughput with and without a stream destination, the delay from a STOW's answer to its
row being visible in `<table>_view`, and the table's files afterwards). Each on the default Iceberg tables and
on the DuckDB files (`warehouse="duckdb"`), side by side. `run_evolutions` measures Iceberg metadata in-process."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import corpus, servers
from bench.bucket_io import peak_rss, run_operation
from bench.measure import latency_summary, multipart, run_concurrently, save, session


def _bigquery(target: servers.Target, project: str) -> str:
    base = target.dicomweb.split("/v1/")[0] + f"/bigquery/v2/projects/{project}"
    requests.post(f"{base}/datasets", json={"datasetReference": {"datasetId": "dicom"}}, timeout=30).raise_for_status()
    return base


def _count(base: str, sql: str) -> int:
    response = requests.post(f"{base}/queries", json={"query": sql, "useLegacySql": False}, timeout=60)
    response.raise_for_status()
    return int(response.json()["rows"][0]["f"][0]["v"])


WAREHOUSES = {"iceberg": "", "duckdb": "duckdb"}
QUERIES = {
    "DICOMweb paths of a patient (seed)": (
        "SELECT CONCAT('/dicomWeb/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, '/instances/', "
        "SOPInstanceUID) as DICOMwebPath FROM `bench.dicom.instances` WHERE PatientID = '{patient}'"
    ),
    "latest studies (seed)": (
        "SELECT MIN(CONCAT(StudyDate, ' ', StudyTime)) as StudyDateTime, MIN(PatientID) as PatientID, "
        "StudyInstanceUID, COUNT(*) as InstanceCount FROM `bench.dicom.instances` AS dicom "
        "GROUP BY StudyInstanceUID ORDER BY StudyDateTime DESC LIMIT 10"
    ),
    "GROUP BY Modality": "SELECT Modality, COUNT(*) AS n FROM `bench.dicom.instances` GROUP BY Modality",
}


def run_export(
    instances: int = 100_000, name: str = "tables_export", warehouses: tuple[str, ...] = ("iceberg", "duckdb")
) -> dict[str, Any]:
    """Import a metadata-only corpus, then export the store to a table, measured alone; then query it."""
    result: dict[str, Any] = {"instances": instances}
    for warehouse in warehouses:
        result[warehouse] = _export_and_query(instances, WAREHOUSES[warehouse])
    save(name, result)
    return result


def _export_and_query(instances: int, warehouse_url: str, rounds: int = 30) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": {}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        servers.dicomlake(Path(tmp), workers=1, warehouse_url=warehouse_url) as target,
    ):
        bucket = Path(tmp) / "dicomlake-data" / "buckets" / "bench"
        corpus.generate(instances, bucket / "corpus", seed=5, metadata_only=True, broken=False)
        store_url = target.dicomweb.removesuffix("/dicomWeb")
        _, operation = run_operation(store_url, "import", {"gcsSource": {"uri": "gs://bench/corpus/**.dcm"}})
        assert operation["metadata"]["counter"] == {"success": str(instances)}, operation
        base = _bigquery(target, "bench")
        with peak_rss(target.pid) as memory:
            seconds, operation = run_operation(
                store_url, "export", {"bigqueryDestination": {"tableUri": "bq://bench.dicom.instances"}}
            )
        assert operation["metadata"]["counter"] == {"success": str(instances)}, operation
        rows = _count(base, "SELECT COUNT(*) FROM dicom.instances")
        assert rows == instances, rows
        columns = requests.get(f"{base}/datasets/dicom/tables/instances", timeout=60).json()["schema"]["fields"]
        result["runs"]["export_to_table"] = {
            "instances_per_s": round(instances / seconds, 1),
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(memory["peak_mb"], 1),
            "peak_pss_mb": round(memory["peak_pss_mb"], 1),
            "top_level_columns": len(columns),
        }
        patient = _first(base, "SELECT PatientID FROM dicom.instances LIMIT 1")
        queries = {}
        for label, sql in QUERIES.items():
            text = sql.format(patient=patient)
            _query(base, text)  # the first run reads the files into the page cache
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                _query(base, text)
                times.append(time.perf_counter() - started)
            queries[label] = latency_summary(times)
        result["queries_through_bigquery_api"] = queries
    return result


def _query(base: str, sql: str) -> dict[str, Any]:
    response = session().post(f"{base}/queries", json={"query": sql, "useLegacySql": False}, timeout=120)
    response.raise_for_status()
    body = response.json()
    assert body.get("jobComplete"), body
    return body


def _first(base: str, sql: str) -> str:
    return str(_query(base, sql)["rows"][0]["f"][0]["v"])


def _stow(dicomweb: str, items: list[bytes], clients: int, batch: int) -> float:
    def send(datas: list[bytes]) -> None:
        body, content_type = multipart(datas)
        response = session().post(f"{dicomweb}/studies", data=body, headers={"Content-Type": content_type})
        if response.status_code != 200:
            raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")

    wall, _ = run_concurrently(list(corpus.batches(items, batch)), send, clients)
    return len(items) / wall


def run_streaming(
    instances: int = 3000,
    repeats: int = 3,
    delays: int = 200,
    name: str = "tables_streaming",
    warehouses: tuple[str, ...] = ("iceberg", "duckdb"),
) -> dict:
    """STOW throughput into a plain store and into a streaming one, alternately; then single STOWs whose
    rows are awaited in the view; then the table's files (Iceberg)."""
    items = list(corpus.instances(200 + instances * repeats * 2 + delays, seed=9, metadata_only=False))
    result: dict[str, Any] = {"instances_per_run": instances, "repeats": repeats, "clients": 4, "batch": 50}
    for warehouse in warehouses:
        result[warehouse] = _streaming(items, instances, repeats, delays, WAREHOUSES[warehouse])
    save(name, result)
    return result


def _streaming(items: list[bytes], instances: int, repeats: int, delays: int, warehouse_url: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        servers.dicomlake(Path(tmp), workers=1, warehouse_url=warehouse_url) as target,
    ):
        base = _bigquery(target, "bench")
        plain = target.dicomweb
        datasets = plain.split("/bench/dicomStores/")[0]
        config = {"streamConfigs": [{"bigqueryDestination": {"tableUri": "bq://bench.dicom.stream"}}]}
        requests.post(f"{datasets}/bench/dicomStores?dicomStoreId=streamed", json=config, timeout=30).raise_for_status()
        streamed = f"{datasets}/bench/dicomStores/streamed/dicomWeb"
        _stow(plain, items[:200], 4, 50)
        rates: dict[str, list[float]] = {"without streaming": [], "with streaming": []}
        offset = 200
        for _ in range(repeats):
            for label, url in (("without streaming", plain), ("with streaming", streamed)):
                rates[label].append(_stow(url, items[offset : offset + instances], 4, 50))
                offset += instances
        _wait_rows(base, "stream", repeats * instances)
        delays_ms = []
        for data in items[offset : offset + delays]:
            sop = _sop(data)
            response = session().post(
                f"{streamed}/studies", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
            )
            response.raise_for_status()
            answered = time.perf_counter()
            while not _count(base, f"SELECT COUNT(*) FROM dicom.stream_view WHERE SOPInstanceUID = '{sop}'"):
                time.sleep(0.005)
            delays_ms.append((time.perf_counter() - answered) * 1000)
        without = statistics.median(rates["without streaming"])
        with_ = statistics.median(rates["with streaming"])
        result["stow_instances_per_s"] = {
            "without_streaming": round(without, 1),
            "with_streaming": round(with_, 1),
            "cost_percent": round(100 * (without - with_) / without, 1),
            "spread": {k: [round(min(v), 1), round(max(v), 1)] for k, v in rates.items()},
        }
        result["visible_in_view_after_stow"] = latency_summary([d / 1000 for d in delays_ms])
        if not warehouse_url:
            time.sleep(12)  # the last rows leave the streaming buffer
            result["iceberg_table"] = _iceberg_files(Path(tmp) / "dicomlake-data", "stream")
    return result


def _iceberg_files(data_dir: Path, table: str) -> dict[str, Any]:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("dicomlake", uri=f"sqlite:///{data_dir / 'index.sqlite'}")
    loaded = catalog.load_table(f"bench.dicom.{table}")
    tasks = list(loaded.scan().plan_files())
    metadata = Path(loaded.metadata_location.removeprefix("file://"))
    return {
        "rows_in_files": sum(t.file.record_count for t in tasks),
        "data_files": len(tasks),
        "parquet_files_on_disk": len(list((metadata.parent.parent / "data").glob("*.parquet"))),
        "snapshots": len(loaded.metadata.snapshots),
        "schemas": len(loaded.metadata.schemas),
        "metadata_kb": round(metadata.stat().st_size / 1024, 1),
    }


def run_evolutions(columns: int = 2000, evolutions: int = 1000, name: str = "tables_evolutions") -> dict[str, Any]:
    """A table of `columns` string columns evolved `evolutions` times (one new column and a 10-row append per
    commit, as a stream meeting new private tags does): commit time and metadata size as it goes, in-process."""
    from dicomlake.warehouse.embedded import TableRef
    from dicomlake.warehouse.iceberg import IcebergWarehouse

    result: dict[str, Any] = {"columns": columns, "evolutions": evolutions, "checkpoints": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wh = IcebergWarehouse(f"sqlite:///{root / 'index.sqlite'}", (root / "tables").as_uri(), root / "local")
        wh.create_dataset("bench", "dicom")
        ref = TableRef("bench", "dicom", "wide")
        fields = [{"name": f"c{i:04d}", "type": "STRING", "mode": "NULLABLE"} for i in range(columns)]
        wh.create_table(ref, fields)
        times = []
        for i in range(evolutions):
            fields.append({"name": f"new{i:04d}", "type": "STRING", "mode": "NULLABLE"})
            rows = [{f"c{j:04d}": "x", f"new{i:04d}": "y"} for j in range(10)]
            started = time.perf_counter()
            wh.append(ref, fields, rows)
            times.append(time.perf_counter() - started)
            if (i + 1) % 50 == 0:
                wh.maintain(ref)
            if (i + 1) % 200 == 0:
                table = wh.load(ref)
                metadata = Path(table.metadata_location.removeprefix("file://"))
                result["checkpoints"].append(
                    {
                        "evolutions": i + 1,
                        "commit_s_last_50": latency_summary(times[-50:]),
                        "metadata_kb": round(metadata.stat().st_size / 1024, 1),
                        "schemas": len(table.metadata.schemas),
                        "snapshots": len(table.metadata.snapshots),
                    }
                )
                save(name, result)  # a run cut short keeps its checkpoints
    save(name, result)
    return result


def _wait_rows(base: str, table: str, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _count(base, f"SELECT COUNT(*) FROM dicom.{table}") < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{table} did not reach {expected} rows within {timeout} s")
        time.sleep(0.2)


def _sop(data: bytes) -> str:
    from dicomlake.dicom.parse import parse

    return parse(data).sop_uid
