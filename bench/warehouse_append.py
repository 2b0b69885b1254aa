"""`python -m bench.warehouse_append`: rows per second that `warehouse.embedded.append` writes into a DuckDB table,
for simple rows (seven scalar columns) and for rows shaped like the BigQuery DICOM export (person-name records,
repeated values, a sequence of records), by batch size; and the latency of a one-row append, which opens and
closes the project file as every call does."""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import save
from dicomlake.warehouse import embedded
from dicomlake.warehouse.embedded import TableRef, Warehouse

BATCHES = (1_000, 10_000, 50_000)
ROWS_PER_CASE = 100_000
NOW = dt.datetime.now(dt.UTC)

SIMPLE = [
    {"name": n, "type": "STRING"} for n in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Type")
] + [
    {"name": "StudyDate", "type": "DATE"},
    {"name": "LastUpdated", "type": "TIMESTAMP"},
    {"name": "Rows", "type": "INTEGER"},
]
_NAME = {
    "type": "RECORD",
    "fields": [
        {"name": g, "type": "RECORD", "fields": [{"name": p, "type": "STRING"} for p in ("FamilyName", "GivenName")]}
        for g in ("Alphabetic", "Ideographic", "Phonetic")
    ],
}
DICOM = [
    *SIMPLE,
    {"name": "PatientName", **_NAME},
    {"name": "ReferringPhysicianName", **_NAME},
    {"name": "PatientID", "type": "STRING"},
    {"name": "Modality", "type": "STRING"},
    {"name": "StudyTime", "type": "TIME"},
    {"name": "ImageType", "type": "STRING", "mode": "REPEATED"},
    {"name": "PixelSpacing", "type": "STRING", "mode": "REPEATED"},
    {"name": "Columns", "type": "INTEGER"},
    {"name": "SliceThickness", "type": "STRING"},
    {
        "name": "ReferencedSeriesSequence",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [{"name": "SeriesInstanceUID", "type": "STRING"}, {"name": "Count", "type": "INTEGER"}],
    },
]


def simple_row(i: int) -> dict[str, Any]:
    return {
        "StudyInstanceUID": f"1.2.{i // 100}",
        "SeriesInstanceUID": f"1.2.{i // 10}",
        "SOPInstanceUID": f"1.2.3.{i}",
        "Type": "CREATE",
        "StudyDate": dt.date(2020, 1, 1),
        "LastUpdated": NOW,
        "Rows": 512,
    }


def dicom_row(i: int) -> dict[str, Any]:
    return {
        **simple_row(i),
        "PatientName": {"Alphabetic": {"FamilyName": "Doe", "GivenName": "Jane"}},
        "ReferringPhysicianName": {"Alphabetic": {"FamilyName": "House"}},
        "PatientID": f"P{i % 500}",
        "Modality": "CT",
        "StudyTime": dt.time(12, 30, 15),
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "PixelSpacing": ["0.703125", "0.703125"],
        "Columns": 512,
        "SliceThickness": "1.25",
        "ReferencedSeriesSequence": [{"SeriesInstanceUID": f"1.2.{i}.9", "Count": 3}],
    }


def rate(wh: Warehouse, table: str, fields: list[dict[str, Any]], rows: list[dict[str, Any]], total: int) -> float:
    ref = TableRef("bench", "ds", table)
    started = time.perf_counter()
    for _ in range(total // len(rows)):
        embedded.append(wh, ref, fields, rows)
    return total / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        wh = Warehouse.in_data_dir(Path(folder))
        embedded.create_dataset(wh, "bench", "ds")
        rates: dict[str, dict[str, float]] = {"simple": {}, "dicom": {}}
        for batch in BATCHES:
            rates["simple"][str(batch)] = round(
                rate(wh, f"simple_{batch}", SIMPLE, [simple_row(i) for i in range(batch)], ROWS_PER_CASE)
            )
            rates["dicom"][str(batch)] = round(
                rate(wh, f"dicom_{batch}", DICOM, [dicom_row(i) for i in range(batch)], ROWS_PER_CASE)
            )
        latencies = []
        ref = TableRef("bench", "ds", "simple_1000")
        for i in range(50):
            started = time.perf_counter()
            embedded.append(wh, ref, SIMPLE, [simple_row(i)])
            latencies.append((time.perf_counter() - started) * 1000)
    save(
        "warehouse_append",
        {
            "rows_per_second_by_batch": rates,
            "one_row_append_ms": {"median": round(statistics.median(latencies), 1), "max": round(max(latencies), 1)},
        },
    )


if __name__ == "__main__":
    main()
