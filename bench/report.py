"""Turn bench/results/*.json into the tables of docs/benchmarks.md (between the generated markers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.measure import RESULTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _stow(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: STOW-RS of {result['instance_bytes'] / 1024:.1f} KB instances "
        f"({result['instances_per_run']} per run, median of {result['repeats']})",
        "",
        "| server | clients | batch | instances/s | MB/s | p50 ms | p99 ms | spread (instances/s) "
        "| dicomlake / Orthanc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, run in result["runs"].items():
        server, clients, batch = key.split(" ")
        lines.append(
            f"| {server} | {clients.split('=')[1]} | {batch.split('=')[1]} | {run['instances_per_s']} | "
            f"{run['mb_per_s']} | {run['p50_ms']} | {run['p99_ms']} | "
            f"{run['spread_instances_per_s'][0]}–{run['spread_instances_per_s'][1]} | "
            f"{run.get('ratio_to_orthanc', '')} |"
        )
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    return [*lines, "", f"Versions: {versions}. Run {result['date']}.", ""]


def _qido(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: QIDO-RS with {result['studies']:,} studies stored "
        f"(+ one series of {result['series_instances']} instances)",
        "",
        "| request | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for label, latency in result["searches"].items():
        lines.append(f"| search: {label} | {latency['p50_ms']} | {latency['p99_ms']} |")
    meta = result["metadata_of_large_series"]
    lines.append(
        f"| /metadata of the {result['series_instances']}-instance series | {meta['p50_ms']} | {meta['p99_ms']} |"
    )
    return [*lines, "", f"Run {result['date']}.", ""]


def render() -> str:
    sections: list[str] = []
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        if result["benchmark"].startswith("stow"):
            sections += _stow(result)
        elif result["benchmark"].startswith("qido"):
            sections += _qido(result)
    return "\n".join(sections)


def main() -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{DOC} has no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
