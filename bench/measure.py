"""Client side of every benchmark: concurrent HTTP requests, latencies, and result files."""

from __future__ import annotations

import json
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

RESULTS = Path(__file__).parent / "results"
_local = threading.local()


def session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def multipart(datas: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + d + b"\r\n" for d in datas
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def store_all(dicomweb: str, items: Sequence[bytes], batch: int = 50, clients: int = 4) -> None:
    """Fill a server with STOW-RS requests of `batch` instances from `clients` threads; any failure stops it."""

    def send(datas: Sequence[bytes]) -> None:
        body, content_type = multipart(datas)
        response = session().post(
            f"{dicomweb}/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=120,
        )
        if response.status_code != 200:
            raise RuntimeError(f"STOW to {dicomweb} answered {response.status_code}: {response.text[:300]}")

    run_concurrently([items[i : i + batch] for i in range(0, len(items), batch)], send, clients)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_concurrently(tasks: Sequence[Any], worker: Callable[[Any], None], clients: int) -> tuple[float, list[float]]:
    """Run worker(task) for every task on `clients` threads; returns (wall seconds, per-task latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def timed(task: Any) -> None:
        start = time.perf_counter()
        worker(task)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(timed, tasks))
    return time.perf_counter() - start, latencies


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
