"""DIMSE C-STORE throughput and C-FIND latency, dicomlake's listener next to Orthanc's DICOM server, with
DCMTK's storescu, findscu and echoscu as the client of both.

Every store run sends instances no target has seen (a duplicate is answered success without being stored),
then the target's instance count must have grown by exactly the run's size: a run that lost an instance, or
whose storescu exited non-zero, is recorded as an error, not as a number. C-FIND answers are counted and held
to the number of matches the stored corpus has; a failure status is recorded as a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests

from bench import corpus, servers
from bench.measure import latency_summary, save

STORESCU, FINDSCU, ECHOSCU = "storescu", "findscu", "echoscu"
SMALL, LARGE = "MR_small.dcm", "693_UNCI.dcm"
SERIES_PER_STUDY, INSTANCES_PER_SERIES = 5, 10
# DCMTK leaves Nagle's algorithm on unless this variable is set to a non-zero number.
NODELAY = {"TCP_NODELAY": "1"}
ECHO_LABEL = "C-ECHO (baseline: process start, association, release)"
CLIENT_TIMEOUT = 600  # seconds; a hung association fails the run instead of the benchmark
# One line per C-FIND response in findscu's verbose output, e.g. "I: Find Response: 3 (Pending)"
# and "I: Received Final Find Response (Success)".
_PENDING = re.compile(r"Find Response: \d+ \(Pending")
_FINAL = re.compile(r"Received Final Find Response \(([^)]*)\)")


@dataclass(frozen=True)
class StoreConfig:
    """One way of sending: `instances` copies of `source` per run over `associations` parallel storescu
    processes, with Nagle's algorithm off in the client (`nodelay`) or DCMTK's defaults."""

    source: str
    instances: int
    associations: int
    nodelay: bool

    @property
    def key(self) -> str:
        size = "small" if self.source == SMALL else "large"
        return f"{size} associations={self.associations} nagle={'off' if self.nodelay else 'on'}"


@dataclass(frozen=True)
class StoreRun:
    """The instances of one run, written as `parts` folders (one per association), and the specs behind them."""

    config: StoreConfig
    parts: list[Path]
    specs: list[corpus.Spec]
    bytes: int


@dataclass(frozen=True)
class Query:
    label: str
    keys: list[str]  # findscu -k arguments
    expected: int


def _studies(first: int, instances: int, source: str) -> list[corpus.Spec]:
    per_study = SERIES_PER_STUDY * INSTANCES_PER_SERIES
    return [
        corpus.Spec(first + n // per_study, n % per_study // INSTANCES_PER_SERIES, n % INSTANCES_PER_SERIES, source)
        for n in range(instances)
    ]


def _write(folder: Path, specs: list[corpus.Spec], associations: int) -> tuple[list[Path], int]:
    """The instances of `specs` in `associations` folders of (nearly) equal counts; returns them and the bytes."""
    parts = [folder / f"part{k}" for k in range(associations)]
    size = 0
    for part in parts:
        part.mkdir(parents=True)
    for n, data in enumerate(corpus.make(specs)):
        (parts[n % associations] / f"{n:05d}.dcm").write_bytes(data)
        size += len(data)
    return parts, size


def _corpus(root: Path, configs: Sequence[StoreConfig], repeats: int, warmup: int) -> tuple[StoreRun, list[StoreRun]]:
    """The warm-up and every run's instances, each study in one run only, so every UID is new to a target."""
    study = 0
    runs = []
    for index, config in enumerate(
        [StoreConfig(SMALL, warmup, 1, True), *[c for c in configs for _ in range(repeats)]]
    ):
        specs = _studies(study, config.instances, config.source)
        study = specs[-1].study + 1
        parts, size = _write(root / f"run{index:03d}", specs, config.associations)
        runs.append(StoreRun(config, parts, specs, size))
    return runs[0], runs[1:]


def _storescu(target: servers.Target, part: Path) -> list[str]:
    return [STORESCU, "-aec", target.called_aet, "+sd", "+r", "127.0.0.1", str(target.dimse_port), str(part)]


def _env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return {**env, **NODELAY} if nodelay else env


def stored_instances(target: servers.Target) -> int:
    """How many instances the target holds: Orthanc's /statistics, dicomlake's QIDO study counts summed."""
    if target.name == "orthanc":
        rest = target.dicomweb.removesuffix("/dicom-web")
        return requests.get(f"{rest}/statistics", timeout=60).json()["CountInstances"]
    response = requests.get(
        f"{target.dicomweb}/studies",
        params={"includefield": "NumberOfStudyRelatedInstances", "limit": 5000},
        timeout=60,
    )
    response.raise_for_status()
    return sum(int(study["00201208"]["Value"][0]) for study in (response.json() if response.content else []))


def _store(target: servers.Target, run: StoreRun, before: int) -> dict[str, Any]:
    """Send one run and check that all of it was stored; raises RuntimeError if not."""
    env = _env(run.config.nodelay)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            _storescu(target, part),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        for part in run.parts
    ]
    try:
        outputs = [p.communicate(timeout=CLIENT_TIMEOUT) for p in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        raise RuntimeError(f"storescu did not finish within {CLIENT_TIMEOUT} s") from None
    wall = time.perf_counter() - start
    for process, (out, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu exited with {process.returncode}: {_tail(out + err, 500)}")
    after = stored_instances(target)
    if after - before != len(run.specs):
        raise RuntimeError(f"{len(run.specs)} instances sent, {after - before} stored")
    return {
        "instances_per_s": round(len(run.specs) / wall, 1),
        "mb_per_s": round(run.bytes / wall / 2**20, 2),
        # Each association sends its share one instance after another: the time an instance takes on one.
        "ms_per_instance_per_association": round(wall * run.config.associations / len(run.specs) * 1000, 2),
        "seconds": round(wall, 2),
    }


def _tail(output: str, size: int) -> str:
    """The end of a tool's output as one line of printable text, fit for a table cell of the report."""
    return " ".join("".join(c if c.isprintable() else " " for c in output).split())[-size:]


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["instances_per_s"])
    median = dict(runs[len(runs) // 2])
    median["spread_instances_per_s"] = [runs[0]["instances_per_s"], runs[-1]["instances_per_s"]]
    return median


def _find_once(target: servers.Target, keys: list[str]) -> tuple[float, int, str]:
    """One findscu call (process start, association, C-FIND, release): seconds, matches, final status."""
    command = [FINDSCU, "-v", "-S", "-aec", target.called_aet, *keys, "127.0.0.1", str(target.dimse_port)]
    start = time.perf_counter()
    done = subprocess.run(
        command, env=_env(True), capture_output=True, text=True, errors="replace", timeout=CLIENT_TIMEOUT
    )
    elapsed = time.perf_counter() - start
    output = done.stdout + done.stderr
    final = _FINAL.search(output)
    status = final.group(1) if final else f"no final response (exit code {done.returncode}): {_tail(output, 300)}"
    return elapsed, len(_PENDING.findall(output)), status


def _echo_once(target: servers.Target) -> float:
    command = [ECHOSCU, "-aec", target.called_aet, "127.0.0.1", str(target.dimse_port)]
    start = time.perf_counter()
    done = subprocess.run(
        command, env=_env(True), capture_output=True, text=True, errors="replace", timeout=CLIENT_TIMEOUT
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"echoscu exited with {done.returncode}: {_tail(done.stdout + done.stderr, 300)}")
    return elapsed


def _find(target: servers.Target, query: Query, calls: int, warmup: int = 5) -> dict[str, Any]:
    """p50/p99 of `calls` findscu calls after `warmup`, or the first wrong answer as a failure."""
    latencies = []
    for n in range(warmup + calls):
        try:
            elapsed, matches, status = _find_once(target, query.keys)
        except subprocess.TimeoutExpired:
            return {"failed": f"no answer within {CLIENT_TIMEOUT} s"}
        if status != "Success" or matches != query.expected:
            return {"failed": f"final status {status}, {matches} matches of {query.expected} expected"}
        if n >= warmup:
            latencies.append(elapsed)
    return {"calls": calls, **latency_summary(latencies)}


def _patient_names(runs: list[StoreRun]) -> dict[int, str]:
    """PatientName of every study sent, read from the study's first file."""
    names: dict[int, str] = {}
    for run in runs:
        for n, spec in enumerate(run.specs):
            if spec.study not in names:
                path = run.parts[n % len(run.parts)] / f"{n:05d}.dcm"
                names[spec.study] = str(pydicom.dcmread(path, stop_before_pixels=True).PatientName)
    return names


def _queries(runs: list[StoreRun]) -> list[Query]:
    """Queries whose answers follow from what every target was sent: one patient's studies by name, one
    study's series, and every study."""
    names = _patient_names(runs)
    study = next(s for s, n in names.items() if n.isascii())
    name = names[study]
    series = {(s.study, s.series) for run in runs for s in run.specs if s.study == study}
    return [
        Query(
            "STUDY level, PatientName exact",
            _keys("QueryRetrieveLevel=STUDY", "StudyInstanceUID=", f"PatientName={name}"),
            # PN matching is case-insensitive in both servers.
            sum(1 for n in names.values() if n.lower() == name.lower()),
        ),
        Query(
            "SERIES level, one StudyInstanceUID",
            _keys(
                "QueryRetrieveLevel=SERIES",
                f"StudyInstanceUID={corpus.uid(1, study)}",
                "SeriesInstanceUID=",
                "Modality=",
            ),
            len(series),
        ),
        Query(
            f"STUDY level, all {len(names)} studies",
            _keys("QueryRetrieveLevel=STUDY", "StudyInstanceUID=", "PatientName="),
            len(names),
        ),
    ]


def _keys(*keys: str) -> list[str]:
    return [argument for key in keys for argument in ("-k", key)]


def _measure_stores(
    targets: list[servers.Target], warm: StoreRun, runs: list[StoreRun], configs: Sequence[StoreConfig]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every store run on every target, the targets taking turns run by run (in alternating order), so that a
    change in what else the machine is doing falls on all alike. A configuration with an error in any run is
    that error. Returns the results by target and configuration."""
    stored = {t.name: stored_instances(t) for t in targets}
    for target in targets:
        _store(target, warm, stored[target.name])
        stored[target.name] += len(warm.specs)
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {c.key: [] for c in configs} for t in targets}
    errors: dict[str, dict[str, str]] = {t.name: {} for t in targets}
    for index, one in enumerate(runs):
        for target in targets if index % 2 == 0 else targets[::-1]:
            try:
                measured[target.name][one.config.key].append(_store(target, one, stored[target.name]))
            except RuntimeError as error:
                errors[target.name].setdefault(one.config.key, str(error))
            stored[target.name] = stored_instances(target)
    return {
        t.name: {
            c.key: {"error": errors[t.name][c.key]} if c.key in errors[t.name] else _median(measured[t.name][c.key])
            for c in configs
        }
        for t in targets
    }


def _measure_find(target: servers.Target, queries: list[Query], find_calls: int) -> dict[str, dict[str, Any]]:
    """C-ECHO and the C-FIND queries, in the store that holds everything the runs stored."""
    echo = [_echo_once(target) for _ in range(find_calls + 5)][5:]
    find = {ECHO_LABEL: {"calls": find_calls, **latency_summary(echo)}}
    for query in queries:
        find[query.label] = {"expected_matches": query.expected, **_find(target, query, find_calls)}
    return find


def _starts() -> list[tuple[str, Callable[[Path], AbstractContextManager[servers.Target]]]]:
    starts: list[tuple[str, Callable[[Path], AbstractContextManager[servers.Target]]]] = [
        ("dicomlake", lambda tmp: servers.dicomlake(tmp, dimse=True))
    ]
    if servers.orthanc_available():
        starts.append(("orthanc", lambda tmp: servers.orthanc(tmp, dimse=True)))
    return starts


def _dcmtk_version() -> str:
    out = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v(\d+\.\d+\.\d+)", out)
    return found.group(1) if found else "unknown"


def _dicomlake_source() -> str:
    """The commit measured, and whether the listener's source differed from it (it is under active work)."""
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src/dicomlake"], cwd=root, capture_output=True, text=True
    )
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" with uncommitted changes in src/dicomlake" if changed.stdout.strip() else "")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run(
    small: int = 1000,
    large: int = 100,
    small_nagle_on: int = 200,
    repeats: int = 3,
    find_calls: int = 50,
    warmup: int = 50,
    name: str = "dimse",
) -> dict[str, Any]:
    """Each store configuration `repeats` times on every target (median and spread reported), then C-FIND
    and C-ECHO latency in the store that holds all of it. `small_nagle_on` is smaller than `small` because
    Orthanc takes tens of ms per instance when the client leaves Nagle's algorithm on."""
    if not all(shutil.which(tool) for tool in (STORESCU, FINDSCU, ECHOSCU)):
        print("dimse: skipped, DCMTK is not installed (scripts/install-debian-tools.sh installs it)")
        return {}
    configs = [
        StoreConfig(SMALL, small, 1, True),
        StoreConfig(SMALL, small, 4, True),
        StoreConfig(SMALL, small_nagle_on, 1, False),
        StoreConfig(LARGE, large, 1, True),
        StoreConfig(LARGE, large, 4, True),
    ]
    results: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "client": f"DCMTK {_dcmtk_version()}",
        "dicomlake_source": _dicomlake_source(),
        "repeats": repeats,
        "commands": {
            "store": "[TCP_NODELAY=1] storescu -aec {called AE} +sd +r 127.0.0.1 {port} {folder} "
            "(one process per association, each sending its folder's share)",
            "find": "TCP_NODELAY=1 findscu -v -S -aec {called AE} -k QueryRetrieveLevel=... -k ... 127.0.0.1 {port}",
            "echo": "TCP_NODELAY=1 echoscu -aec {called AE} 127.0.0.1 {port}",
            "verify": "dicomlake: QIDO /studies?includefield=NumberOfStudyRelatedInstances summed; "
            "Orthanc: REST /statistics CountInstances",
        },
        "server_settings": {
            "dicomlake": f"dicomlake serve --workers 2 --dimse-port PORT, store labelled aetitle="
            f"{servers.DIMSE_AET.lower()}, called {servers.DIMSE_AET}",
            "orthanc": "DicomServerEnabled true, DicomAet ORTHANC, DicomCheckCalledAet false, DicomAlwaysAllowFind "
            "true, TCP_NODELAY=1 in its environment, otherwise as shipped (MaximumPduLength 16384, "
            "DicomThreadsCount 4, StorageAccessOnFind Always)",
        },
        "configs": {
            c.key: {
                "source": c.source,
                "instances_per_run": c.instances,
                "associations": c.associations,
                "client_nagle": "off (TCP_NODELAY=1)" if c.nodelay else "on (DCMTK defaults)",
            }
            for c in configs
        },
        "runs": {},
        "find": {},
    }
    if not servers.orthanc_available():
        results["note"] = f"Orthanc not installed ({servers.ORTHANC_BINARY}): dicomlake alone"
    with tempfile.TemporaryDirectory() as tmp:
        warm, runs = _corpus(Path(tmp), configs, repeats, warmup)
        for config in configs:
            sizes = {r.bytes // len(r.specs) for r in runs if r.config == config}
            results["configs"][config.key]["instance_bytes"] = min(sizes)
        queries = _queries([warm, *runs])
        with ExitStack() as running:
            # Every target runs at once (the one not measured sits idle), so that their runs can alternate.
            targets = []
            for target_name, start in _starts():
                targets.append(running.enter_context(start(Path(tmp))))
                results.setdefault("versions", {})[target_name] = servers.version(target_name)
                results.setdefault("durability", {})[target_name] = servers.DURABILITY[target_name]
            for target_name, by_config in _measure_stores(targets, warm, runs, configs).items():
                results["runs"].update({f"{target_name} {key}": run for key, run in by_config.items()})
            for target in targets:
                results["find"][target.name] = _measure_find(target, queries, find_calls)
                results.setdefault("stored_at_find", {})[target.name] = stored_instances(target)
    for config in configs:
        ours, theirs = results["runs"].get(f"dicomlake {config.key}"), results["runs"].get(f"orthanc {config.key}")
        if ours and theirs and "error" not in ours and "error" not in theirs:
            ours["ratio_to_orthanc"] = round(ours["instances_per_s"] / theirs["instances_per_s"], 2)
    save(name, results)
    return results


if __name__ == "__main__":
    run()
