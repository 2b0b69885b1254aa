"""The tables side, measured over HTTP against a dicomlake server process: export to a table (instances/s,
peak RSS of the server and its pool), and streaming (STOW throughput with and without a stream
destination, and the delay from a STOW's answer to its row being visible in `<table>_view`)."""

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


def run_export(instances: int = 100_000, name: str = "tables_export") -> dict[str, Any]:
    """Import a metadata-only corpus, then export the store to a table, measured alone."""
    result: dict[str, Any] = {"instances": instances, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), workers=1) as target:
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
    save(name, result)
    return result


def _stow(dicomweb: str, items: list[bytes], clients: int, batch: int) -> float:
    def send(datas: list[bytes]) -> None:
        body, content_type = multipart(datas)
        response = session().post(f"{dicomweb}/studies", data=body, headers={"Content-Type": content_type})
        if response.status_code != 200:
            raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")

    wall, _ = run_concurrently(list(corpus.batches(items, batch)), send, clients)
    return len(items) / wall


def run_streaming(instances: int = 3000, repeats: int = 3, delays: int = 200, name: str = "tables_streaming") -> dict:
    """STOW throughput into a plain store and into a streaming one, alternately; then single STOWs whose
    rows are awaited in the view."""
    items = list(corpus.instances(200 + instances * repeats * 2 + delays, seed=9, metadata_only=False))
    result: dict[str, Any] = {"instances_per_run": instances, "repeats": repeats, "clients": 4, "batch": 50}
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), workers=1) as target:
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
