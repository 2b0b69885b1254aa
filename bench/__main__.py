"""`python -m bench quick|full|stow|qido|metadata|wado|scaling|buckets|tables|dimse|ui|million|plots|report`: run
benchmarks, write bench/results/*.json, draw docs/img/*.png and regenerate the result tables of docs/benchmarks.md.
`python -m bench corpus --size small|medium|large|N --out DIR`: write a synthetic corpus folder.
`python -m bench flatten`: the BigQuery flattener against pydicom's to_json_dict (bench/results/flatten.json).
`python -m bench fuzz --requests N --seed S | --replay SEED:INDEX`: the seeded fuzzer (bench/results/fuzz.json)."""

from __future__ import annotations

import sys

from bench import bucket_io, corpus, dimse, flatten, fuzz, million, plots, qido, report, stow, tables, ui, wado

COMMANDS = (
    "quick",
    "full",
    "stow",
    "qido",
    "metadata",
    "wado",
    "scaling",
    "buckets",
    "tables",
    "dimse",
    "ui",
    "million",
    "plots",
    "report",
)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "quick"
    if what == "corpus":
        corpus.main(argv[1:])
        return
    if what == "fuzz":
        fuzz.main(argv[1:])
        return
    if what in ("flatten", "quick", "full"):
        flatten.main()
    if what == "flatten":
        return
    if what in ("quick", "stow"):
        stow.run(instances=1000, repeats=3)
        stow.run(instances=100, repeats=2, batch_sizes=(1, 10), source="693_UNCI.dcm", name="stow_large", warmup=50)
    if what in ("quick", "qido", "metadata"):
        qido.run(studies=10_000, series_instances=500)
    if what in ("quick", "wado"):
        wado.run(requests=200, repeats=3)
    if what in ("quick", "scaling"):
        stow.run_scaling(total=10_000, chunk=2_000)
    if what in ("quick", "buckets"):
        bucket_io.run(instances=1_000, name="bucket_io_1k", png_instances=200)
        bucket_io.run(instances=5_000, name="bucket_io_5k", png_instances=300)
    if what in ("quick", "tables"):
        tables.run_export(instances=10_000, name="tables_export_10k")
        tables.run_streaming(instances=2000, repeats=3, delays=100)
    if what in ("quick", "dimse"):
        dimse.run(small=1000, large=100, repeats=3)
    if what == "full":
        stow.run(instances=5000, repeats=5)
        stow.run(instances=500, repeats=3, batch_sizes=(1, 10), source="693_UNCI.dcm", name="stow_large", warmup=50)
        qido.run(studies=100_000, series_instances=500, name="qido_100k")
        wado.run(requests=600, repeats=5)
        stow.run_scaling(total=100_000, chunk=10_000)
        bucket_io.run(instances=1_000, name="bucket_io_1k", png_instances=200)
        bucket_io.run(instances=100_000, name="bucket_io_100k", png_instances=1000)
        tables.run_export(instances=100_000, name="tables_export_100k")
        tables.run_streaming(instances=5000, repeats=5, delays=500)
        dimse.run(small=3000, large=300, repeats=5, find_calls=200)
    if what in ("full", "million"):
        million.run(total=1_000_000)
    if what in ("full", "ui"):
        ui.run(studies=100_000)
    if what not in COMMANDS:
        sys.exit(f"usage: python -m bench [{'|'.join(COMMANDS)}|corpus|flatten|fuzz], not {what!r}")
    if what in ("quick", "full", "plots"):
        plots.main()
    report.main()


if __name__ == "__main__":
    main(sys.argv[1:])
