"""`python -m bench flatten`: the BigQuery flattener against pydicom's `Dataset.to_json_dict()` on the same
headers, in one process. dicomlake's side starts from the DICOM JSON text as stored (orjson parse included);
pydicom's from datasets already read with `dcmread(stop_before_pixels=True)`, JSON production only. pydicom is
timed warm (values already decoded by an earlier call, its fastest case, used for the ratio) and cold (the
first call on a freshly read dataset, which also decodes the raw values)."""

from __future__ import annotations

import gc
import glob
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pydicom.data

from bench import corpus
from bench.measure import save
from dicomlake.dicom.flatten import ServiceColumns, flatten
from dicomlake.dicom.parse import parse

ROUNDS = 7
MIN_ROUND_SECONDS = 0.5


def test_files() -> list[Path]:
    """Every file shipped by pydicom and pydicom-data and every highdicom test file (as tests/conftest.py)."""
    base = Path(pydicom.data.__file__).parent
    names = glob.glob(str(base / "test_files" / "**" / "*"), recursive=True) + glob.glob(
        str(base / "charset_files" / "*")
    )
    spec = importlib.util.find_spec("data_store")
    if spec and spec.origin:
        names += glob.glob(str(Path(spec.origin).parent / "data" / "*"))
    names += glob.glob(str(corpus.HIGHDICOM / "*.dcm"))
    return sorted({Path(n) for n in names if Path(n).is_file()})


def _headers(paths: Sequence[Path]) -> list[tuple[str, bytes, Path]]:
    """(name, stored DICOM JSON text, path) of each file both dicomlake and pydicom can read."""
    out = []
    for path in paths:
        data = path.read_bytes()
        try:
            metadata = parse(data).metadata
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(path, stop_before_pixels=True, force=True).to_json_dict()
        except Exception:  # not DICOM, or a file one of the two refuses: not a fair comparison
            continue
        out.append((path.name, orjson.dumps(metadata), path))
    return out


def _read(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(p, stop_before_pixels=True, force=True) for p in paths]


def _to_json_dicts(datasets: Sequence[pydicom.Dataset]) -> int:
    for ds in datasets:
        ds.to_json_dict()
    return len(datasets)


def _rate(run: Callable[[], int]) -> float:
    """Instances per second of `run` (which returns how many it did), over at least MIN_ROUND_SECONDS."""
    done, start = 0, time.perf_counter()
    while True:
        done += run()
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_ROUND_SECONDS:
            return done / elapsed


def _summary(rates: Sequence[float]) -> dict[str, float]:
    return {"median_per_s": round(statistics.median(rates)), "best_per_s": round(max(rates))}


def compare(label: str, headers: list[tuple[str, bytes, Path]]) -> dict[str, Any]:
    """Rounds that alternate the two sides, so a neighbour's load on the machine hits both alike; each side is
    timed with only its own objects alive, as each would run in a real process."""
    service = ServiceColumns(datetime.now(UTC), blob_storage_size=1)
    texts = [text for _, text, _ in headers]
    paths = [path for _, _, path in headers]
    warm, cold, from_text, from_dict, ratios = [], [], [], [], []

    def flatten_texts() -> int:
        for text in texts:
            flatten(text, service)
        return len(texts)

    for _ in range(ROUNDS):
        datasets = _read(paths)
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            for ds in datasets:
                ds.to_json_dict()  # the first call also decodes every raw value
            cold.append(len(datasets) / (time.perf_counter() - start))
            warm.append(_rate(partial(_to_json_dicts, datasets)))
        datasets.clear()
        gc.collect()
        from_text.append(_rate(flatten_texts))
        ratios.append(from_text[-1] / warm[-1])
    dicts = [orjson.loads(text) for text in texts]

    def flatten_dicts() -> int:
        for metadata in dicts:
            flatten(metadata, service)
        return len(dicts)

    for _ in range(3):
        from_dict.append(_rate(flatten_dicts))
    dicts.clear()
    per_file = []
    for name, text, _ in headers:
        start = time.perf_counter()
        for _ in range(5):
            flatten(text, service)
        per_file.append(((time.perf_counter() - start) / 5 * 1e6, name))
    per_file.sort()
    result = {
        "files": len(headers),
        "mean_json_bytes": round(statistics.fmean(len(t) for t in texts)),
        "flatten_from_stored_json": _summary(from_text),
        "flatten_from_dict": _summary(from_dict),
        "pydicom_to_json_dict_warm": _summary(warm),
        "pydicom_to_json_dict_cold": _summary(cold),
        "ratio_vs_warm": round(statistics.median(ratios), 2),
        "ratio_vs_cold": round(statistics.median(from_text) / statistics.median(cold), 2),
        "flatten_median_us_per_instance": round(per_file[len(per_file) // 2][0], 1),
        "slowest": [{"file": name, "us": round(us)} for us, name in per_file[-3:]],
    }
    print(
        f"{label}: {len(headers)} headers; flatten {result['flatten_from_stored_json']['median_per_s']}/s from "
        f"stored JSON ({result['flatten_from_dict']['median_per_s']}/s from dicts); pydicom to_json_dict "
        f"{result['pydicom_to_json_dict_warm']['median_per_s']}/s warm, "
        f"{result['pydicom_to_json_dict_cold']['median_per_s']}/s cold; "
        f"ratio {result['ratio_vs_warm']}x (warm), {result['ratio_vs_cold']}x (cold)"
    )
    return result


def main() -> None:
    headers = _headers(test_files())
    # What every dicomlake process does once started (api/app.py, services.py): what is loaded by then lives as
    # long as the process and is moved out of the collector's sight. Both sides gain: pydicom's dictionaries
    # are no longer walked by full collections during either's rounds.
    gc.collect()
    gc.freeze()
    sources = {Path(s.name).name for s in corpus.SOURCES}
    clinical = [h for h in headers if h[0] in sources]
    save(
        "flatten",
        {
            "what": "instances/s turned into a BigQuery row + schema (dicomlake.dicom.flatten) vs pydicom "
            "Dataset.to_json_dict() on the same headers, one core",
            "all_test_files": compare("all test files", headers),
            "benchmark_corpus_sources": compare("bench corpus sources", clinical),
        },
    )


if __name__ == "__main__":
    main()
