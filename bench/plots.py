"""Charts of bench/results/*.json as docs/img/*.png, embedded by report.py in docs/benchmarks.md.

matplotlib is imported only when drawing, so report.py can read PLOTS without the `bench` extra."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import RESULTS

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "img"
COLOURS = {"dicomlake": "#1f77b4", "dicomlake-relaxed": "#aec7e8", "orthanc": "#ff7f0e"}


def _results(prefix: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{prefix}*.json"))]


def _figure(rows: int, columns: int, width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(width, height), squeeze=False, layout="constrained")


def _log_scale(ax: Any, which: str) -> None:
    """Log scale ticked at 1, 2, 5 × 10ⁿ in plain numbers: readable where a range spans a decade or two."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _latency_bars(ax: Any, ys: list[float], latencies: list[dict | None], height: float, **style: Any) -> None:
    """Horizontal bars at p50 with a whisker to p99, labelled "p50 / p99"; None leaves a gap."""
    p50 = [r["p50_ms"] if r else 0 for r in latencies]
    p99 = [r["p99_ms"] if r else 0 for r in latencies]
    whiskers = [[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]]
    bars = ax.barh(ys, p50, height, xerr=whiskers, capsize=2, **style)
    labels = [f"{a:g} / {b:g}" if r else "" for a, b, r in zip(p50, p99, latencies, strict=True)]
    ax.bar_label(bars, labels=labels, fontsize=7, padding=2)


def _save(figure: Any, file: str) -> Path:
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / file
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def stow() -> Path | None:
    results = _results("stow")
    if not results:
        return None
    figure, axes = _figure(1, len(results), 5.5 * len(results), 4.2)
    for ax, result in zip(axes[0], results, strict=True):
        servers = sorted({key.split(" ")[0] for key in result["runs"]})
        configs = list(dict.fromkeys(key.split(" ", 1)[1] for key in result["runs"]))
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            runs = [result["runs"].get(f"{server} {config}") for config in configs]
            xs = [n + (i - (len(servers) - 1) / 2) * width for n in range(len(configs))]
            values = [r["instances_per_s"] if r else 0 for r in runs]
            errors = [
                [v - r["spread_instances_per_s"][0] if r else 0 for v, r in zip(values, runs, strict=True)],
                [r["spread_instances_per_s"][1] - v if r else 0 for v, r in zip(values, runs, strict=True)],
            ]
            bars = ax.bar(xs, values, width, yerr=errors, capsize=3, label=server, color=COLOURS.get(server))
            ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(
            [c.replace("clients=", "").replace(" batch=", " client(s)\nbatch ") for c in configs], fontsize=9
        )
        ax.set_ylabel("instances/s (median run, bars show spread)")
        size = result["instance_bytes"]
        size_text = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 1024:.0f} KB"
        ax.set_title(f"{result['benchmark']}: {size_text} instances", fontsize=10)
        ax.legend(fontsize=9)
        ax.margins(y=0.15)
    return _save(figure, "stow.png")


def wado() -> Path | None:
    path = RESULTS / "wado.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    labels = list(result["operations"])
    servers = sorted({s for op in result["operations"].values() for s in op["servers"]})
    figure, axes = _figure(1, 2, 12, 0.45 * len(labels) + 1.6)
    height = 0.8 / len(servers)
    panels = [
        ("clients=1", "p50_ms", "ms, 1 client (bar p50, whisker to p99; labels p50 / p99)"),
        (f"clients={max(result['clients'])}", "instances_per_s", f"instances/s, {max(result['clients'])} clients"),
    ]
    for ax, (clients, field, title) in zip(axes[0], panels, strict=True):
        for i, server in enumerate(servers):
            ys = [n + (i - (len(servers) - 1) / 2) * height for n in range(len(labels))]
            runs = [result["operations"][label]["servers"].get(server, {}).get(clients) for label in labels]
            if field == "p50_ms":
                _latency_bars(ax, ys, runs, height, label=server, color=COLOURS.get(server))
            else:
                values = [r[field] if r else 0 for r in runs]
                bars = ax.barh(ys, values, height, label=server, color=COLOURS.get(server))
                ax.bar_label(bars, labels=[f"{v:g}" if v else "" for v in values], fontsize=7, padding=2)
        _log_scale(ax, "x")
        ax.set_title(title, fontsize=10)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if ax is axes[0][0] else [], fontsize=9)
        ax.invert_yaxis()
        ax.margins(x=0.15)
    axes[0][0].legend(fontsize=9, loc="lower right")
    figure.suptitle(f"WADO-RS retrieve ({result['date'][:10]})", fontsize=11)
    return _save(figure, "wado.png")


def _qido_rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    rows = {f"search: {label}": latency for label, latency in result["searches"].items()}
    rows[f"/metadata of {result['series_instances']} instances"] = result["metadata_of_large_series"]
    return rows


def qido() -> Path | None:
    results = sorted(_results("qido"), key=lambda r: r["studies"])
    if not results:
        return None
    labels = list(_qido_rows(results[0]))
    figure, axes = _figure(1, 1, 9, 0.45 * len(labels) + 1.4)
    ax = axes[0][0]
    height = 0.8 / len(results)
    for i, result in enumerate(results):
        rows = _qido_rows(result)
        ys = [n + (i - (len(results) - 1) / 2) * height for n in range(len(labels))]
        _latency_bars(ax, ys, [rows.get(label) for label in labels], height, label=f"{result['studies']:,} studies")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("ms (bar p50, whisker to p99; labels p50 / p99)")
    ax.set_title("dicomlake QIDO-RS latency, 1 client", fontsize=10)
    ax.legend(fontsize=9, loc="lower right")
    ax.margins(x=0.2)
    return _save(figure, "qido.png")


def qido_scaling() -> Path | None:
    results = sorted(_results("qido"), key=lambda r: r["studies"])
    if len({r["studies"] for r in results}) < 2:
        return None
    figure, axes = _figure(1, 1, 10, 5)
    ax = axes[0][0]
    sizes = [r["studies"] for r in results]
    for label in _qido_rows(results[0]):
        values = [_qido_rows(r).get(label, {}).get("p50_ms", float("nan")) for r in results]
        ax.plot(sizes, values, marker="o", label=label)
    ax.set_xscale("log")
    _log_scale(ax, "y")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.set_xlabel("studies stored")
    ax.set_ylabel("p50 ms, 1 client")
    ax.set_title("dicomlake QIDO-RS latency against corpus size", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(figure, "qido_scaling.png")


@dataclass(frozen=True)
class Plot:
    file: str
    kind: str  # the prefix of the results it is drawn from; report.py puts it after their tables
    caption: str
    draw: Callable[[], Path | None]  # writes IMAGES / file, or returns None when there are no results for it


def ingest_scaling() -> Path | None:
    results = _results("ingest_scaling")
    if not results:
        return None
    result = results[0]
    figure, axes = _figure(1, 1, 8, 4)
    ax = axes[0][0]
    for server, points in result["servers"].items():
        xs = [p["stored_before"] + result["chunk"] for p in points]
        ax.plot(xs, [p["instances_per_s"] for p in points], marker="o", label=server, color=COLOURS.get(server))
    ax.set_xlabel("instances stored")
    ax.set_ylabel("STOW-RS instances/s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"STOW-RS throughput as the store fills ({result['clients']} clients, batches of {result['batch']})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return _save(figure, "ingest_scaling.png")


def bucket_io_scaling() -> Path | None:
    results = sorted(_results("bucket_io"), key=lambda r: r["instances"])
    if len(results) < 2:
        return None
    figure, axes = _figure(1, 1, 8, 4)
    ax = axes[0][0]
    xs = [r["instances"] for r in results]
    ax.plot(xs, [r["runs"]["import"]["files_per_s"] for r in results], marker="o", label="import")
    parse_only = [r["runs"]["import"]["parse_only_one_process_files_per_s"] for r in results]
    ax.plot(xs, parse_only, ls="--", label="header parse only, one process")
    ax.plot(xs, [r["runs"]["export_dcm"]["files_per_s"] for r in results], marker="s", label="export as .dcm")
    _log_scale(ax, "x")
    ax.set_xlabel("instances in the bucket")
    ax.set_ylabel("files/s")
    ax.set_ylim(bottom=0)
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_title("dicomlake import from and export to a local bucket against corpus size", fontsize=10)
    ax.legend(fontsize=8)
    return _save(figure, "bucket_io.png")


PLOTS = [
    Plot("stow.png", "stow", "STOW-RS throughput by configuration, dicomlake next to Orthanc", stow),
    Plot("qido.png", "qido", "QIDO-RS and /metadata latency per request", qido),
    Plot("qido_scaling.png", "qido", "QIDO-RS latency against the number of studies stored", qido_scaling),
    Plot("wado.png", "wado", "WADO-RS latency and throughput, dicomlake next to Orthanc", wado),
    Plot(
        "ingest_scaling.png", "ingest_scaling", "STOW-RS throughput as the store fills, next to Orthanc", ingest_scaling
    ),
    Plot("bucket_io.png", "bucket_io", "Import and export throughput against corpus size", bucket_io_scaling),
]


def main() -> None:
    for plot in PLOTS:
        path = plot.draw()
        if path is None:
            # No results for it (any more): an old image would show numbers the tables no longer hold.
            (IMAGES / plot.file).unlink(missing_ok=True)
        else:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
