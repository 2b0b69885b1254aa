"""WADO-RS retrieve latency and throughput, dicomlake next to Orthanc on the same stored instances and
client code: whole instances, series, /metadata, rendered images and frames."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus, servers
from bench.measure import latency_summary, run_concurrently, save, session, store_all

AS_STORED = "transfer-syntax=*"
SINGLE_PART_DICOM = f"application/dicom; {AS_STORED}"
MULTIPART_DICOM = f'multipart/related; type="application/dicom"; {AS_STORED}'
MULTIPART_FRAMES = f'multipart/related; type="application/octet-stream"; {AS_STORED}'

# The corpus: MR series of MR_SIZE instances (one study each), one CT series and one series of
# multi-frame MR instances (pydicom's emri_small.dcm, 10 frames of 64×64).
MR_SIZE = 50
CT_STUDY, CT_INSTANCES = 1000, 5
MULTIFRAME_STUDY, MULTIFRAME_INSTANCES, MULTIFRAME_FRAMES = 1001, 10, 10


@dataclass(frozen=True)
class Operation:
    """One kind of WADO-RS request, sent round-robin over `paths` (relative to the DICOMweb root)."""

    label: str
    accept: str
    paths: list[str]
    instances_per_request: int
    # Share of the run's request count: a series request moves 50 instances, so it gets fewer requests.
    share: float = 1.0
    servers: tuple[str, ...] = ("dicomlake", "orthanc")
    note: str = ""


def _instance(study: int, instance: int) -> str:
    return f"{_series(study)}/instances/{corpus.uid(3, study, 0, instance)}"


def _series(study: int) -> str:
    return f"studies/{corpus.uid(1, study)}/series/{corpus.uid(2, study, 0)}"


def _specs(mr_series: int) -> list[corpus.Spec]:
    return (
        [corpus.Spec(s, 0, n) for s in range(mr_series) for n in range(MR_SIZE)]
        + [corpus.Spec(CT_STUDY, 0, n, "CT_small.dcm") for n in range(CT_INSTANCES)]
        + [corpus.Spec(MULTIFRAME_STUDY, 0, n, "emri_small.dcm") for n in range(MULTIFRAME_INSTANCES)]
    )


def operations(mr_series: int) -> list[Operation]:
    mr = [_instance(s, n) for n in range(MR_SIZE) for s in range(mr_series)]
    ct = [_instance(CT_STUDY, n) for n in range(CT_INSTANCES)]
    multiframe = [_instance(MULTIFRAME_STUDY, n) for n in range(MULTIFRAME_INSTANCES)]
    series = [_series(s) for s in range(mr_series)]
    all_frames = ",".join(str(n + 1) for n in range(MULTIFRAME_FRAMES))
    return [
        Operation(
            "instance, single part (MR)",
            SINGLE_PART_DICOM,
            mr,
            1,
            servers=("dicomlake",),
            note="Orthanc's DICOMweb plugin 1.7 answers 400 to a single-part Accept "
            "and sends instances only as multipart",
        ),
        Operation("instance, multipart (MR)", MULTIPART_DICOM, mr, 1),
        Operation("instance, multipart (CT)", MULTIPART_DICOM, ct, 1),
        Operation(f"series of {MR_SIZE}, multipart (MR)", MULTIPART_DICOM, series, MR_SIZE, share=0.1),
        Operation(
            f"series of {MR_SIZE}, /metadata (MR)",
            "application/dicom+json",
            [f"{p}/metadata" for p in series],
            MR_SIZE,
            share=0.2,
        ),
        Operation("rendered JPEG (MR 64×64)", "image/jpeg", [f"{p}/rendered" for p in mr], 1),
        Operation("rendered PNG (MR 64×64)", "image/png", [f"{p}/rendered" for p in mr], 1),
        Operation(
            "rendered JPEG (CT 128×128)",
            "image/jpeg",
            [f"{p}/rendered" for p in ct],
            1,
            note="five instances, so dicomlake answers nearly every request from its per-process cache of "
            f"rendered images; the MR rows cycle through {mr_series * MR_SIZE} instances: their 1-client runs never "
            "ask for one twice, their 4-client runs ask again for about a third",
        ),
        Operation("frame 1 (MR)", MULTIPART_FRAMES, [f"{p}/frames/1" for p in mr], 1),
        Operation(
            f"frames 1–{MULTIFRAME_FRAMES} of a multi-frame instance",
            MULTIPART_FRAMES,
            [f"{p}/frames/{all_frames}" for p in multiframe],
            1,
            share=0.5,
        ),
    ]


def _getter(target: servers.Target, op: Operation, sizes: list[int]) -> Callable[[int], None]:
    urls = [f"{target.dicomweb}/{p}" for p in op.paths]
    expected = op.accept.split(";")[0]

    def get(n: int) -> None:
        url = urls[n % len(urls)]
        response = session().get(url, headers={"Accept": op.accept}, timeout=60)
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith(expected):
            raise RuntimeError(
                f"{target.name} {op.label}: {url} answered {response.status_code} "
                f"{response.headers.get('content-type')}: {response.text[:200]}"
            )
        sizes.append(len(response.content))  # list.append is atomic: safe from the client threads

    return get


def _measure(
    targets: list[servers.Target], op: Operation, requests: int, clients: tuple[int, ...], repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Each server's runs of `op`, the servers taking turns run by run (in alternating order), so that a
    change in what else the machine is doing falls on both alike."""
    targets = [t for t in targets if t.name in op.servers]
    sizes: dict[str, list[int]] = {t.name: [] for t in targets}
    gets = {t.name: _getter(t, op, sizes[t.name]) for t in targets}
    count = max(10, round(requests * op.share))
    for get in gets.values():
        run_concurrently(range(warmup), get, 1)
    offset = warmup
    measured: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    for clients_ in clients:
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        latencies: dict[str, list[float]] = {t.name: [] for t in targets}
        for repeat in range(repeats):
            for target in targets if repeat % 2 == 0 else targets[::-1]:
                sizes[target.name].clear()
                wall, run_latencies = run_concurrently(range(offset, offset + count), gets[target.name], clients_)
                latencies[target.name] += run_latencies
                runs[target.name].append(
                    {
                        "requests_per_s": round(count / wall, 1),
                        "instances_per_s": round(count * op.instances_per_request / wall, 1),
                        "mb_per_s": round(sum(sizes[target.name]) / wall / 2**20, 2),
                        "bytes_per_request": round(sum(sizes[target.name]) / count),
                    }
                )
            offset += count  # every server gets the same requests in a repeat
        for name, server_runs in runs.items():
            server_runs.sort(key=lambda r: r["requests_per_s"])
            # Latencies pool every repeat: p99 of a few hundred requests rather than of one short run.
            measured[name][f"clients={clients_}"] = {
                **server_runs[len(server_runs) // 2],
                **latency_summary(latencies[name]),
                "spread_instances_per_s": [server_runs[0]["instances_per_s"], server_runs[-1]["instances_per_s"]],
            }
    return measured


def run(
    mr_series: int = 20,
    requests: int = 200,
    clients: tuple[int, ...] = (1, 4),
    repeats: int = 3,
    warmup: int = 20,
    name: str = "wado",
) -> dict[str, Any]:
    """Each operation runs `repeats` times per client count after a warm-up, on every server in turn; the
    median run is reported."""
    items = corpus.make(_specs(mr_series))
    ops = operations(mr_series)
    results: dict[str, Any] = {
        "corpus": {
            "MR_small.dcm": f"{mr_series} series × {MR_SIZE} instances",
            "CT_small.dcm": f"1 series × {CT_INSTANCES} instances",
            "emri_small.dcm": f"1 series × {MULTIFRAME_INSTANCES} instances of {MULTIFRAME_FRAMES} frames",
        },
        "requests_per_run": requests,
        "repeats": repeats,
        "clients": list(clients),
        "interleaved": True,
        "operations": {
            op.label: {
                "accept": op.accept,
                "instances_per_request": op.instances_per_request,
                "requests_per_run": max(10, round(requests * op.share)),
                "note": op.note,
                "servers": {},
            }
            for op in ops
        },
    }
    starts: list[tuple[str, Callable[[Path], AbstractContextManager[servers.Target]]]] = [
        ("dicomlake", servers.dicomlake)
    ]
    if servers.orthanc_available():
        starts.append(("orthanc", servers.orthanc))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as running:
        # Both servers run at once (the one not measured sits idle), so that their runs can alternate.
        targets = []
        for server, start in starts:
            target = running.enter_context(start(Path(tmp)))
            results.setdefault("versions", {})[server] = servers.version(server)
            results.setdefault("durability", {})[server] = servers.DURABILITY[server]
            store_all(target.dicomweb, items, batch=50)
            targets.append(target)
        for op in ops:
            for server, measured in _measure(targets, op, requests, clients, repeats, warmup).items():
                results["operations"][op.label]["servers"][server] = measured
    for op in results["operations"].values():
        ours, theirs = op["servers"].get("dicomlake"), op["servers"].get("orthanc")
        if ours and theirs:
            for key, run_ in ours.items():
                run_["ratio_to_orthanc"] = round(run_["instances_per_s"] / theirs[key]["instances_per_s"], 2)
    save(name, results)
    return results


if __name__ == "__main__":
    run()
