"""Import from and export to a bucket folder, against the ceilings they are held to, measured in one run:
import next to the rate at which the same files' headers are merely parsed (our parser, one process, and
all cores), export as `.dcm` next to a plain file copy of the same bytes, export as PNG; peak RSS of the
server's process tree throughout."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

from bench import corpus, servers
from bench.measure import save
from dicomlake.dicom.parse import parse


def _parse_files(paths: list[str]) -> int:
    for path in paths:
        with open(path, "rb") as f:
            parse(f.read())
    return len(paths)


def parse_rate(paths: list[str], processes: int = 1) -> float:
    """Files per second for read + header parse, warm page cache."""
    _parse_files(paths[:200])
    if processes == 1:
        start = time.perf_counter()
        _parse_files(paths)
        return len(paths) / (time.perf_counter() - start)
    chunks = [paths[i : i + 200] for i in range(0, len(paths), 200)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_parse_files, chunks[:processes]))
        start = time.perf_counter()
        done = sum(pool.map(_parse_files, chunks))
        return done / (time.perf_counter() - start)


def copy_rate(paths: list[str], source: Path, into: Path) -> float:
    """Files per second for a plain copy of the same files into the same kind of nested folders (one per
    series) in a fresh place: the pace of the disk for this layout."""
    start = time.perf_counter()
    for path in paths:
        target = into / Path(path).relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(paths) / (time.perf_counter() - start)


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """Samples the memory of a process and its children; set on exit: `peak_mb`, the peak of their summed
    resident sizes (shared library pages counted once per process), and `peak_pss_mb`, the peak of their summed
    proportional sizes (shared pages split between the processes that map them: what the machine spends)."""
    out = {"peak_mb": 0.0, "peak_pss_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(pid)
        while not stop.is_set():
            rss = pss = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    memory = process.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + memory.rss, pss + memory.pss
            out["peak_mb"] = max(out["peak_mb"], rss / 2**20)
            out["peak_pss_mb"] = max(out["peak_pss_mb"], pss / 2**20)
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def run_operation(store_url: str, verb: str, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    response = requests.post(f"{store_url}:{verb}", json=body, timeout=60)
    response.raise_for_status()
    operation = response.json()
    api = store_url.split("/projects/")[0]
    while not operation.get("done"):
        time.sleep(0.05)
        operation = requests.get(f"{api}/{operation['name']}", timeout=60).json()
    return time.perf_counter() - start, operation


def run(instances: int = 2000, workers: int = 1, name: str = "bucket_io", png_instances: int = 500) -> dict:
    result: dict = {"instances": instances, "server_workers": workers, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), workers=workers) as target:
        data_dir = Path(tmp) / "dicomlake-data"
        bucket = data_dir / "buckets" / "bench"
        manifest = corpus.generate(instances, bucket / "corpus", seed=7, broken=False)
        paths = sorted(str(p) for p in (bucket / "corpus").rglob("*.dcm"))
        result["corpus_mb"] = round(manifest.bytes / 2**20, 1)
        store_url = target.dicomweb.removesuffix("/dicomWeb")
        pid = target.pid

        parse_one = parse_rate(paths)
        parse_all = parse_rate(paths, processes=os.cpu_count() or 1)
        with peak_rss(pid) as memory:
            seconds, operation = run_operation(store_url, "import", {"gcsSource": {"uri": "gs://bench/corpus/**.dcm"}})
        assert operation["metadata"]["counter"] == {"success": str(instances)}, operation
        imported = instances / seconds
        result["runs"]["import"] = {
            "files_per_s": round(imported, 1),
            "parse_only_one_process_files_per_s": round(parse_one, 1),
            "parse_only_all_cores_files_per_s": round(parse_all, 1),
            "ratio_to_parse_one_process": round(imported / parse_one, 2),
            "ratio_to_parse_all_cores": round(imported / parse_all, 2),
            "peak_rss_mb": round(memory["peak_mb"], 1),
            "peak_pss_mb": round(memory["peak_pss_mb"], 1),
        }

        copied = copy_rate(paths, bucket / "corpus", Path(tmp) / "copy")
        with peak_rss(pid) as memory:
            seconds, operation = run_operation(store_url, "export", {"gcsDestination": {"uriPrefix": "gs://bench/dcm"}})
        assert operation["metadata"]["counter"] == {"success": str(instances)}, operation
        exported = instances / seconds
        result["runs"]["export_dcm"] = {
            "files_per_s": round(exported, 1),
            "plain_copy_files_per_s": round(copied, 1),
            "ratio_to_copy": round(exported / copied, 2),
            "peak_rss_mb": round(memory["peak_mb"], 1),
            "peak_pss_mb": round(memory["peak_pss_mb"], 1),
        }

        filter_file = bucket / "png-filter.txt"
        studies = sorted({Path(p).parts[-3] for p in paths})
        chosen, count = [], 0
        by_study: dict[str, int] = {}
        for p in paths:
            by_study[Path(p).parts[-3]] = by_study.get(Path(p).parts[-3], 0) + 1
        for study in studies:
            if count >= png_instances:
                break
            chosen.append(study)
            count += by_study[study]
        filter_file.write_text("".join(f"/studies/{s}\n" for s in chosen))
        body = {
            "gcsDestination": {"uriPrefix": "gs://bench/png", "mimeType": "image/png"},
            "filterConfig": {"resourcePathsGcsUri": "gs://bench/png-filter.txt"},
        }
        with peak_rss(pid) as memory:
            seconds, operation = run_operation(store_url, "export", body)
        counter = operation["metadata"]["counter"]
        done = int(counter.get("success", 0)) + int(counter.get("failure", 0))
        frames = sum(1 for _ in (bucket / "png").rglob("*.png"))
        result["runs"]["export_png"] = {
            "instances": done,
            "frames": frames,
            "instances_per_s": round(done / seconds, 1),
            "frames_per_s": round(frames / seconds, 1),
            "peak_rss_mb": round(memory["peak_mb"], 1),
            "peak_pss_mb": round(memory["peak_pss_mb"], 1),
        }
    save(name, result)
    return result
