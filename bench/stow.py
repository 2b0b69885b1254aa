"""STOW-RS ingest throughput, dicomlake next to Orthanc on the same instances and client code."""

from __future__ import annotations

from typing import Any

from bench import corpus, servers
from bench.measure import latency_summary, multipart, run_concurrently, save, session


def _stow(target: servers.Target, items: list[bytes], clients: int, batch: int) -> dict[str, Any]:
    url = f"{target.dicomweb}/studies"

    def send(datas: list[bytes]) -> None:
        body, content_type = multipart(datas)
        response = session().post(
            url, data=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}
        )
        if response.status_code != 200:
            raise RuntimeError(f"{target.name} STOW answered {response.status_code}: {response.text[:300]}")

    wall, latencies = run_concurrently(list(corpus.batches(items, batch)), send, clients)
    size = sum(len(d) for d in items)
    return {
        "instances_per_s": round(len(items) / wall, 1),
        "mb_per_s": round(size / wall / 2**20, 2),
        **latency_summary(latencies),
    }


def run(
    instances: int = 3000,
    clients: tuple[int, ...] = (1, 4),
    batch_sizes: tuple[int, ...] = (1, 50),
    repeats: int = 3,
    source: str = "MR_small.dcm",
    name: str = "stow_small",
    warmup: int = 200,
) -> dict[str, Any]:
    """Each configuration stores fresh instances `repeats` times; the median run is reported. dicomlake runs
    durable (its default) and relaxed, Orthanc as it ships (SyncStorageArea true)."""
    configs = [(c, b) for c in clients for b in batch_sizes]
    total = warmup + instances * repeats * len(configs)
    items = corpus.make([corpus.Spec(n // 10, 0, n % 10, source) for n in range(total)])
    results: dict[str, Any] = {
        "instance_bytes": len(items[0]),
        "instances_per_run": instances,
        "repeats": repeats,
        "runs": {},
    }
    for target in servers.each_target(results, relaxed_too=True):
        offset = warmup
        _stow(target, items[:warmup], 4, 10)
        for clients_, batch in configs:
            runs = []
            for _ in range(repeats):
                runs.append(_stow(target, items[offset : offset + instances], clients_, batch))
                offset += instances
            runs.sort(key=lambda r: r["instances_per_s"])
            median = dict(runs[len(runs) // 2])
            median["spread_instances_per_s"] = [runs[0]["instances_per_s"], runs[-1]["instances_per_s"]]
            results["runs"][f"{target.name} clients={clients_} batch={batch}"] = median
    for clients_, batch in configs:
        theirs = results["runs"].get(f"orthanc clients={clients_} batch={batch}")
        for server in ("dicomlake", "dicomlake-relaxed"):
            ours = results["runs"].get(f"{server} clients={clients_} batch={batch}")
            if ours and theirs:
                ours["ratio_to_orthanc"] = round(ours["instances_per_s"] / theirs["instances_per_s"], 2)
    save(name, results)
    return results


if __name__ == "__main__":
    run()


def run_scaling(total: int = 20_000, chunk: int = 2_000, name: str = "ingest_scaling") -> dict[str, Any]:
    """Throughput as the store fills: the realistic corpus (metadata only, so the index is what grows)
    stored in chunks by 4 clients in batches of 50, instances/s of each chunk against the number stored."""
    items = list(corpus.instances(total, seed=11, metadata_only=True))
    results: dict[str, Any] = {"instances": total, "chunk": chunk, "clients": 4, "batch": 50, "servers": {}}
    for target in servers.each_target(results):
        points = []
        for start in range(0, total, chunk):
            run = _stow(target, items[start : start + chunk], 4, 50)
            points.append({"stored_before": start, "instances_per_s": run["instances_per_s"], "p99_ms": run["p99_ms"]})
        results["servers"][target.name] = points
    ours, theirs = results["servers"].get("dicomlake"), results["servers"].get("orthanc")
    if ours and theirs:
        results["ratio_to_orthanc_first_last"] = [
            round(ours[0]["instances_per_s"] / theirs[0]["instances_per_s"], 2),
            round(ours[-1]["instances_per_s"] / theirs[-1]["instances_per_s"], 2),
        ]
    save(name, results)
    return results
