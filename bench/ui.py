"""How fast the web UI's pages answer on a large store: every request a page makes, issued the way a
browser does (at most 6 at once), timed from the first request to the last answer.

The pages and their requests are those of `src/dicomlake/web/app.js`; keep the two in step."""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import corpus, servers
from bench.measure import latency_summary, save, session, store_all

BROWSER_CONNECTIONS = 6
PAGE_SIZE = 25  # the study list's page (web/views/studies.js)
INSTANCE_PAGE = 5000  # the image view's page of a series' instances (web/views/viewer.js)


def _get(url: str, accept: str = "application/json") -> None:
    response = session().get(url, headers={"Accept": accept}, timeout=60)
    if response.status_code not in (200, 204):
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")


def _pages(server: str, dicomweb: str, studies: int) -> dict[str, list[tuple[str, str]]]:
    """page -> the (url, Accept) of every request it makes."""
    json = "application/json"
    dicom_json = "application/dicom+json"
    api = f"{server}/v1/projects/bench/locations/local/datasets"
    store = f"{api}/bench/dicomStores/bench"
    fields = "includefield=00081030&includefield=00080061&includefield=00201206&includefield=00201208"
    study = corpus.uid(1, studies // 2)
    series = corpus.uid(2, studies // 2, 0)
    instance = f"{dicomweb}/studies/{study}/series/{series}/instances/{corpus.uid(3, studies // 2, 0, 0)}"
    return {
        "home (datasets, stores, counts and sizes)": [
            (f"{server}/", "text/html"),
            (api, json),
            (f"{api}/bench/dicomStores", json),
            (f"{store}:getDICOMStoreMetrics", json),
        ],
        "study list, first page (and the store's total)": [
            (f"{dicomweb}/studies?limit={PAGE_SIZE}&offset=0&{fields}", dicom_json),
            (f"{store}:getDICOMStoreMetrics", json),
        ],
        "study list, last page": [
            (f"{dicomweb}/studies?limit={PAGE_SIZE}&offset={studies - PAGE_SIZE}&{fields}", dicom_json)
        ],
        "study search, PatientName wildcard": [
            (f"{dicomweb}/studies?PatientName=Smith*&limit={PAGE_SIZE}&{fields}", dicom_json)
        ],
        "study search, date range and modality": [
            (
                f"{dicomweb}/studies?StudyDate=20100101-20101231&ModalitiesInStudy=MR&limit={PAGE_SIZE}&{fields}",
                dicom_json,
            )
        ],
        "study (series, a thumbnail each)": [
            (f"{dicomweb}/studies?StudyInstanceUID={study}&{fields}", dicom_json),
            (f"{dicomweb}/studies/{study}/series?includefield=0008103E&includefield=00200011", dicom_json),
            (f"{dicomweb}/studies/{study}/series/{series}/instances?limit=1&offset=0", dicom_json),
            (f"{instance}/rendered?viewport=128,128", "image/jpeg"),
        ],
        "image view (series, instances, metadata and the rendered frame)": [
            (f"{dicomweb}/studies/{study}/series?includefield=00200011", dicom_json),
            (f"{dicomweb}/studies?StudyInstanceUID={study}", dicom_json),
            (f"{dicomweb}/studies/{study}/series/{series}/instances?limit={INSTANCE_PAGE}&offset=0", dicom_json),
            (f"{instance}/metadata", dicom_json),
            (f"{instance}/frames/1/rendered", "image/jpeg"),
        ],
        "operations": [(f"{api}/bench/operations", json)],
        "tables (datasets)": [(f"{server}/bigquery/v2/projects/bench/datasets", json)],
    }


def _page_time(pool: ThreadPoolExecutor, requests: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    for future in [pool.submit(_get, url, accept) for url, accept in requests]:
        future.result()
    return time.perf_counter() - started


def _measure(pool: ThreadPoolExecutor, requests: list[tuple[str, str]], repeats: int) -> dict[str, float]:
    for _ in range(5):
        _page_time(pool, requests)
    return latency_summary([_page_time(pool, requests) for _ in range(repeats)])


def run(studies: int = 100_000, repeats: int = 100, name: str = "ui") -> dict[str, Any]:
    results: dict[str, Any] = {"studies": studies, "repeats": repeats, "budget_ms": 300, "pages": {}}
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp)) as target:
        started = time.perf_counter()
        store_all(target.dicomweb, corpus.make(corpus.studies(studies)), batch=100)
        results["fill_seconds"] = round(time.perf_counter() - started, 1)
        server = target.dicomweb.split("/v1/", 1)[0]
        with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            for page, requests in _pages(server, target.dicomweb, studies).items():
                results["pages"][page] = _measure(pool, requests, repeats)
    save(name, results)
    return results
