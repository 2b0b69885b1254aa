"""Turn bench/results/*.json into the tables of docs/benchmarks.md (between the generated markers), each
kind of benchmark followed by the charts plots.py drew from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.measure import RESULTS
from bench.plots import IMAGES, PLOTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _stow(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: STOW-RS of {result['instance_bytes'] / 1024:.1f} KB instances "
        f"({result['instances_per_run']} per run, median of {result['repeats']})",
        "",
        "| server | durability | clients | batch | instances/s | MB/s | p50 ms | p99 ms | spread (instances/s) "
        "| dicomlake / Orthanc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    durability = result.get("durability", {})
    for key, run in result["runs"].items():
        server, clients, batch = key.split(" ")
        lines.append(
            f"| {server} | {durability.get(server, 'not recorded')} | {clients.split('=')[1]} | "
            f"{batch.split('=')[1]} | {run['instances_per_s']} | "
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


def _wado(result: dict) -> list[str]:
    most = max(result["clients"])
    corpus = "; ".join(f"{source}: {what}" for source, what in result["corpus"].items())
    lines = [
        f"### {result['benchmark']}: WADO-RS retrieve (median of {result['repeats']} runs per client count)",
        "",
        f"Stored: {corpus}. Every request asks for the stored transfer syntax (`transfer-syntax=*`).",
        "",
        f"| request | server | p50 ms | p99 ms | 1 client: instances/s | MB/s | {most} clients: instances/s | MB/s "
        f"| spread ({most} clients) | dicomlake / Orthanc (1 / {most} clients) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for label, op in result["operations"].items():
        for server, runs in op["servers"].items():
            one, many = runs["clients=1"], runs[f"clients={most}"]
            ratio = f"{one['ratio_to_orthanc']} / {many['ratio_to_orthanc']}" if "ratio_to_orthanc" in one else ""
            lines.append(
                f"| {label} | {server} | {one['p50_ms']} | {one['p99_ms']} | {one['instances_per_s']} | "
                f"{one['mb_per_s']} | {many['instances_per_s']} | {many['mb_per_s']} | "
                f"{many['spread_instances_per_s'][0]}–{many['spread_instances_per_s'][1]} | {ratio} |"
            )
        if op["note"]:
            notes.append(f"*{label}*: {op['note']}.")
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    return [
        *lines,
        "",
        "Latencies are of the 1-client runs, all repeats pooled; a ratio above 1 means dicomlake moved more "
        "instances per second. " + " ".join(notes),
        "",
        f"Versions: {versions}. Run {result['date']}.",
        "",
    ]


def _bucket_io(result: dict) -> list[str]:
    runs = result["runs"]
    imp, dcm, png = runs["import"], runs["export_dcm"], runs["export_png"]
    return [
        f"### {result['benchmark']}: import from and export to a local bucket, {result['instances']:,} instances "
        f"({result['corpus_mb']} MB), `--workers {result['server_workers']}`",
        "",
        "| operation | files/s | ceiling measured in the same run | files/s | ratio | peak RSS MB (server + pool) "
        "| peak PSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| import `gs://bench/corpus/**.dcm` | {imp['files_per_s']} | header parse only, one process | "
        f"{imp['parse_only_one_process_files_per_s']} | {imp['ratio_to_parse_one_process']} | {imp['peak_rss_mb']} | "
        f"{imp.get('peak_pss_mb', '')} |",
        f"| | | header parse only, all cores | {imp['parse_only_all_cores_files_per_s']} | "
        f"{imp['ratio_to_parse_all_cores']} | | |",
        f"| export as `.dcm` (as stored) | {dcm['files_per_s']} | `shutil.copyfile` into the same nested layout | "
        f"{dcm['plain_copy_files_per_s']} | {dcm['ratio_to_copy']} | {dcm['peak_rss_mb']} | "
        f"{dcm.get('peak_pss_mb', '')} |",
        f"| export as PNG ({png['instances']} instances, {png['frames']} frames) | {png['instances_per_s']} "
        f"({png['frames_per_s']} frames/s) | | | | {png['peak_rss_mb']} | {png.get('peak_pss_mb', '')} |",
        "",
        f"Run {result['date']}.",
        "",
    ]


def _ingest_scaling(result: dict) -> list[str]:
    servers = list(result["servers"])
    lines = [
        f"### {result['benchmark']}: STOW-RS as the store fills to {result['instances']:,} instances "
        f"(metadata-only realistic corpus, {result['clients']} clients, batches of {result['batch']})",
        "",
        "| instances stored | " + " | ".join(f"{s} instances/s | {s} p99 ms" for s in servers) + " |",
        "|---|" + "---|---|" * len(servers),
    ]
    for index, point in enumerate(result["servers"][servers[0]]):
        cells = []
        for server in servers:
            p = result["servers"][server][index]
            cells += [str(p["instances_per_s"]), str(p["p99_ms"])]
        lines.append(f"| {point['stored_before'] + result['chunk']:,} | " + " | ".join(cells) + " |")
    ratio = result.get("ratio_to_orthanc_first_last")
    note = f"dicomlake / Orthanc: {ratio[0]} on the first chunk, {ratio[1]} on the last. " if ratio else ""
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    durability = "; ".join(f"{k}: {v}" for k, v in result.get("durability", {}).items()) or "not recorded"
    return [*lines, "", f"{note}Durability: {durability}. Versions: {versions}. Run {result['date']}.", ""]


def _flatten(result: dict) -> list[str]:
    lines = [
        "### flatten: DICOM JSON to one BigQuery row, against pydicom's `Dataset.to_json_dict()` (one core)",
        "",
        "| headers | flatten from stored JSON /s | flatten from dict /s | pydicom to_json_dict (warm) /s "
        "| ratio (warm) | pydicom cold /s | ratio (cold) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("all_test_files", "all test files"), ("benchmark_corpus_sources", "corpus sources")):
        r = result[key]
        lines.append(
            f"| {label} ({r['files']}) | {r['flatten_from_stored_json']['median_per_s']:,} | "
            f"{r['flatten_from_dict']['median_per_s']:,} | {r['pydicom_to_json_dict_warm']['median_per_s']:,} | "
            f"{r['ratio_vs_warm']} | {r['pydicom_to_json_dict_cold']['median_per_s']:,} | {r['ratio_vs_cold']} |"
        )
    return [*lines, "", f"Run {result['date']}.", ""]


def _tables(result: dict) -> list[str]:
    if "checkpoints" in result:
        return _evolutions(result)
    # Results of one warehouse (before the Iceberg tables) or of each, side by side.
    kinds = {k: result[k] for k in ("iceberg", "duckdb") if k in result} or {"duckdb": result}
    if "instances" in result:
        lines = [
            f"### {result['benchmark']}: export of {result['instances']:,} stored instances to a table "
            "(`bigqueryDestination`), then queries of it through the BigQuery API",
            "",
            "| tables | instances/s | seconds | peak RSS MB (server + pool) | peak PSS MB (server + pool) | "
            "top-level columns | query p50 / p99 ms: " + " · ".join(_QUERY_LABELS) + " |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, r in kinds.items():
            run = r["runs"]["export_to_table"]
            queries = r.get("queries_through_bigquery_api", {})
            shown = " · ".join(
                f"{queries[q]['p50_ms']:.0f} / {queries[q]['p99_ms']:.0f}" if q in queries else "—"
                for q in _QUERY_LABELS
            )
            lines.append(
                f"| {kind} | {run['instances_per_s']} | {run['seconds']} | {run['peak_rss_mb']} | "
                f"{run.get('peak_pss_mb', '')} | {run['top_level_columns']} | {shown} |"
            )
        return [*lines, "", f"Run {result['date']}.", ""]
    lines = [
        f"### {result['benchmark']}: what streaming costs STOW-RS ({result['clients']} clients, batches of "
        f"{result['batch']}, {result['instances_per_run']} instances per run, median of {result['repeats']})",
        "",
        "| tables | STOW without streaming /s | with one stream destination /s | cost | visible in `_view` after the "
        "STOW answers: p50 ms | p99 ms | Iceberg table afterwards |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, r in kinds.items():
        stow_rates, seen = r["stow_instances_per_s"], r["visible_in_view_after_stow"]
        files = r.get("iceberg_table")
        after = (
            f"{files['rows_in_files']:,} rows in {files['data_files']} data files ({files['parquet_files_on_disk']} "
            f"on disk), {files['snapshots']} snapshots, {files['schemas']} schemas, metadata {files['metadata_kb']} KB"
            if files
            else ""
        )
        lines.append(
            f"| {kind} | {stow_rates['without_streaming']} | {stow_rates['with_streaming']} | "
            f"{stow_rates['cost_percent']} % | {seen['p50_ms']} | {seen['p99_ms']} | {after} |"
        )
    return [*lines, "", f"Run {result['date']}.", ""]


_QUERY_LABELS = ("DICOMweb paths of a patient (seed)", "latest studies (seed)", "GROUP BY Modality")


def _evolutions(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: an Iceberg table of {result['columns']:,} columns evolved "
        f"{result['evolutions']:,} times (one new column and 10 rows per commit, in-process)",
        "",
        "| evolutions | commit p50 s | p99 s | metadata KB | schemas kept | snapshots kept |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["checkpoints"]:
        commit = c["commit_s_last_50"]
        lines.append(
            f"| {c['evolutions']:,} | {commit['p50_ms'] / 1000:.2f} | {commit['p99_ms'] / 1000:.2f} | "
            f"{c['metadata_kb']} | {c['schemas']} | {c['snapshots']} |"
        )
    return [*lines, "", f"Run {result['date']}.", ""]


def _dimse(result: dict) -> list[str]:
    servers = list(result.get("versions", {}))
    lines = [
        f"### {result['benchmark']}: DIMSE C-STORE with storescu (median of {result['repeats']} runs)",
        "",
        "| instances | associations | client's Nagle | server | instances/s | MB/s | ms per instance on an association "
        "| spread (instances/s) | dicomlake / Orthanc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, config in result["configs"].items():
        what = f"{config['instances_per_run']:,} × {config['instance_bytes'] / 1024:.1f} KB ({config['source']})"
        for server in servers:
            run = result["runs"].get(f"{server} {key}")
            if run is None:
                continue
            if "error" in run:
                cells = f"error: {run['error']} | | | |"
            else:
                spread = run["spread_instances_per_s"]
                cells = (
                    f"{run['instances_per_s']} | {run['mb_per_s']} | {run['ms_per_instance_per_association']} | "
                    f"{spread[0]}–{spread[1]} | {run.get('ratio_to_orthanc', '')}"
                )
            lines.append(f"| {what} | {config['associations']} | {config['client_nagle']} | {server} | {cells} |")
    queries = list(next(iter(result["find"].values()), {}))
    lines += [
        "",
        f"### {result['benchmark']}: C-FIND and C-ECHO latency, one findscu or echoscu process per request "
        f"(stored: {', '.join(f'{k} {v:,}' for k, v in result.get('stored_at_find', {}).items())} instances)",
        "",
        "| request | matches | " + " | ".join(f"{s} p50 ms | {s} p99 ms" for s in servers) + " |",
        "|---|---|" + "---|---|" * len(servers),
    ]
    for query in queries:
        cells, expected = [], ""
        for server in servers:
            answer = result["find"].get(server, {}).get(query, {})
            expected = answer.get("expected_matches", expected)
            if "failed" in answer:
                cells += [f"failed: {answer['failed']}", ""]
            else:
                cells += [str(answer.get("p50_ms", "")), str(answer.get("p99_ms", ""))]
        lines.append(f"| {query} | {expected} | " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    durability = "; ".join(f"{k}: {v}" for k, v in result.get("durability", {}).items()) or "not recorded"
    settings = "; ".join(f"{k}: {v}" for k, v in result.get("server_settings", {}).items())
    note = f" {result['note']}." if "note" in result else ""
    return [
        *lines,
        "",
        f"Client: {result['client']}. Servers: {settings}. Durability: {durability}.{note}",
        "",
        f"Versions: {versions}; dicomlake at {result.get('dicomlake_source', 'an unrecorded commit')}. Machine: "
        f"{result['machine']['cpus']} × {result.get('cpu_model', 'unknown CPU')}, {result['machine']['memory_gb']} GB. "
        f"Run {result['date']}.",
        "",
    ]


def _ui(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: web UI pages with {result['studies']:,} studies stored",
        "",
        f"Every request of a page, at most 6 at once as a browser sends them, first request to last answer; "
        f"{result['repeats']} loads each, budget {result['budget_ms']} ms (`python -m bench ui`).",
        "",
        "| page | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for page, latency in result["pages"].items():
        lines.append(f"| {page} | {latency['p50_ms']} | {latency['p99_ms']} |")
    machine = result["machine"]
    return [*lines, "", f"Machine: {machine['cpus']} CPUs, {machine['memory_gb']} GB. Run {result['date']}.", ""]


def _million(result: dict) -> list[str]:
    lines = [
        f"### {result['benchmark']}: {result['instances']:,} instances (realistic corpus, metadata only), "
        f"{result['clients']} clients, batches of {result['batch']}",
        "",
        f"STOW-RS rate for each chunk of {result['chunk']:,} as the store fills, then searches on the full "
        "store (`python -m bench million`). Targets: QIDO p50 < 5 ms and p99 < 20 ms, a 500-instance series' "
        "/metadata p50 < 15 ms, the last chunk's STOW rate within 20 % of the first's.",
        "",
    ]
    runs = result["runs"]
    head = " | ".join(r["database"] for r in runs)
    lines += [f"| request (p50 / p99 ms) | {head} |", "|---|" + "---|" * len(runs)]
    for search in runs[0]["searches"]:
        cells = [f"{r['searches'][search]['p50_ms']} / {r['searches'][search]['p99_ms']}" for r in runs]
        lines.append(f"| {search} | " + " | ".join(cells) + " |")
    cells = [
        f"{r['metadata_of_500_instance_series']['p50_ms']} / {r['metadata_of_500_instance_series']['p99_ms']}"
        for r in runs
    ]
    lines.append("| series /metadata, 500 instances | " + " | ".join(cells) + " |")
    lines += ["", f"| STOW instances/s | {head} |", "|---|" + "---|" * len(runs)]
    chunks = max(len(r["chunks"]) for r in runs)
    for i in range(chunks):
        if i not in (0, chunks - 1) and i % max(1, chunks // 5):
            continue  # the first, the last and a few between
        row = [f"{r['chunks'][i]['instances_per_s']:,.0f}" if i < len(r["chunks"]) else "" for r in runs]
        stored = runs[0]["chunks"][i]["stored_before"] if i < len(runs[0]["chunks"]) else 0
        lines.append(f"| with {stored:,} stored | " + " | ".join(row) + " |")
    lines.append("| last chunk / first | " + " | ".join(str(r["last_chunk_to_first"]) for r in runs) + " |")
    machine = result["machine"]
    return [*lines, "", f"Machine: {machine['cpus']} CPUs, {machine['memory_gb']} GB. Run {result['date']}.", ""]


RENDERERS = {
    "qido": _qido,
    "stow": _stow,
    "wado": _wado,
    "ingest_scaling": _ingest_scaling,
    "bucket_io": _bucket_io,
    "tables": _tables,
    "dimse": _dimse,
    "flatten": _flatten,
    "ui": _ui,
    "million": _million,
}


def _charts(kind: str) -> list[str]:
    lines = []
    for plot in PLOTS:
        if plot.kind == kind and (IMAGES / plot.file).exists():
            lines += [f"![{plot.caption}]({IMAGES.relative_to(DOC.parent).as_posix()}/{plot.file})", ""]
    return lines


def render() -> str:
    sections: list[str] = []
    # Results without a "benchmark" name (fuzz.json, reported in docs/security.md) have no table here.
    results = [r for r in (json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))) if "benchmark" in r]
    for kind, renderer in RENDERERS.items():
        of_kind = [r for r in results if r["benchmark"].startswith(kind)]
        for result in of_kind:
            sections += renderer(result)
        if of_kind:
            sections += _charts(kind)
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
