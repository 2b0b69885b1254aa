"""QIDO-RS search latency with many studies stored, and /metadata of a large series."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import corpus, servers
from bench.measure import latency_summary, run_concurrently, save, session, store_all

REPEATS = 300


def _latency(url: str, params: dict[str, str] | None = None) -> dict[str, float]:
    def get(_: int) -> None:
        response = session().get(url, params=params, headers={"Accept": "application/dicom+json"})
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")

    for n in range(20):
        get(n)
    _, latencies = run_concurrently(range(REPEATS), get, 1)
    return latency_summary(latencies)


def run(studies: int = 10_000, series_instances: int = 500, name: str = "qido") -> dict[str, Any]:
    big_study = studies + 1
    items = corpus.make(corpus.studies(studies) + corpus.series(big_study, series_instances))
    results: dict[str, Any] = {"studies": studies, "series_instances": series_instances, "searches": {}}
    searches = {
        "all studies (limit 100)": ("studies", None),
        "PatientID exact": ("studies", {"PatientID": "PID00042"}),
        "PatientName wildcard": ("studies", {"PatientName": "Smith*"}),
        "PatientName fuzzy": ("studies", {"PatientName": "yamad", "fuzzymatching": "true"}),
        "StudyDate range": ("studies", {"StudyDate": "20100101-20101231"}),
        "AccessionNumber exact": ("studies", {"AccessionNumber": f"ACC{studies // 2:08d}"}),
        "series of one study": (f"studies/{corpus.uid(1, 42)}/series", None),
        "instances of the large series": (f"studies/{corpus.uid(1, big_study)}/instances", {"limit": "1000"}),
    }
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp)) as target:
        store_all(target.dicomweb, items, batch=100)
        for label, (path, params) in searches.items():
            results["searches"][label] = _latency(f"{target.dicomweb}/{path}", params)
        series_url = f"{target.dicomweb}/studies/{corpus.uid(1, big_study)}/series/{corpus.uid(2, big_study, 0)}"
        results["metadata_of_large_series"] = _latency(f"{series_url}/metadata")
    save(name, results)
    return results
