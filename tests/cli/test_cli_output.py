"""The CLI's pure parts: the progress line (done/total, rate, ETA), gcloud's table and YAML/JSON layouts,
and how resource names are made from flags."""

from __future__ import annotations

import json

import pytest
import yaml

from dicomlake.cli.healthcare import parse_labels, parse_stream_configs, resource_name
from dicomlake.cli.output import duration, progress_line, render, render_list, table


def test_progress_line_shows_done_of_total_rate_and_eta() -> None:
    line = progress_line(done=120, total=500, elapsed=10.0, unit="files", width=60)

    assert line.endswith("]  120/500 files  12.0/s  ETA 0:32")
    assert len(line) == 60
    bar = line[1 : line.index("]")]
    assert set(bar) == {"#", "."} and bar.count("#") == len(bar) * 120 // 500


def test_progress_line_before_anything_is_counted_has_no_total_and_no_eta() -> None:
    line = progress_line(done=0, total=0, elapsed=0.0, unit="instances", width=50)

    assert line.endswith("]  0/? instances  0.0/s  ETA --:--")
    assert "#" not in line


def test_progress_line_when_done_is_full_with_nothing_left() -> None:
    line = progress_line(done=7, total=7, elapsed=2.0, unit="files", width=40)

    assert line.endswith("]  7/7 files  3.5/s  ETA 0:00")
    assert "." not in line[1 : line.index("]")]


def test_progress_line_keeps_a_bar_on_a_narrow_terminal() -> None:
    line = progress_line(done=5, total=10, elapsed=1.0, unit="files", width=5)

    assert line.startswith("[#####.....]")


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (7.4, "0:07"), (725, "12:05"), (3723, "1:02:03")])
def test_duration_is_minutes_and_seconds_with_hours_when_needed(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_table_aligns_columns_two_spaces_apart_without_trailing_blanks() -> None:
    text = table(["ID", "LOCATION", "DONE"], [["1", "us-central1", "True"], ["12345", "eu", ""]])

    assert text == "ID     LOCATION     DONE\n1      us-central1  True\n12345  eu\n"


def test_list_of_nothing_is_an_empty_table_an_empty_array_and_no_yaml() -> None:
    assert render_list([], "table", [("ID", lambda r: r["name"])]) == ""
    assert render_list([], "json") == "[]\n"
    assert render_list([], "yaml") == ""


def test_yaml_has_sorted_keys_quoted_int64_strings_and_no_wrapped_lines() -> None:
    operation = {
        "name": "projects/p/locations/l/datasets/d/operations/7",
        "metadata": {"counter": {"success": "10"}, "@type": "T", "logsUrl": "/v1/" + "x" * 200},
        "done": True,
    }

    text = render(operation, "yaml")

    assert text.splitlines()[:4] == ["done: true", "metadata:", "  '@type': T", "  counter:"]
    assert "    success: '10'" in text
    assert f"  logsUrl: /v1/{'x' * 200}" in text.splitlines()
    assert yaml.safe_load(text) == operation


def test_yaml_list_is_documents_separated_by_dashes_and_json_is_an_array() -> None:
    items = [{"b": 1, "a": "x"}, {"c": [1, 2]}]

    assert render_list(items, "yaml") == "a: x\nb: 1\n---\nc:\n- 1\n- 2\n"
    assert json.loads(render_list(items, "json")) == items
    assert render_list(items, "json").startswith('[\n  {\n    "a": "x"')


def test_resource_name_joins_flags_outermost_first() -> None:
    name = resource_name(("projects", "p"), ("locations", "l"), ("datasets", "d"), ("dicomStores", "s"))

    assert name == "projects/p/locations/l/datasets/d/dicomStores/s"


def test_a_full_name_stands_for_the_flags_above_it() -> None:
    full_dataset = "projects/p/locations/l/datasets/d"
    from_dataset = resource_name(
        ("projects", None), ("locations", None), ("datasets", full_dataset), ("operations", "7")
    )
    full_store = full_dataset + "/dicomStores/s"
    from_store = resource_name(("projects", "x"), ("locations", None), ("datasets", None), ("dicomStores", full_store))

    assert from_dataset == full_dataset + "/operations/7"
    assert from_store == full_store


@pytest.mark.parametrize(
    "levels, message",
    [
        ((("projects", None), ("locations", "l")), "no project given: pass --project=PROJECT or set DICOMLAKE_PROJECT"),
        (
            (("projects", "p"), ("locations", "")),
            "no location given: pass --location=LOCATION or set DICOMLAKE_LOCATION",
        ),
        ((("projects", "p"), ("locations", "l"), ("datasets", None)), "no dataset given: pass --dataset=DATASET"),
        ((("projects", "p"), ("locations", "l"), ("datasets", "a/b")), "invalid dataset id 'a/b'"),
        (
            (("projects", "p"), ("locations", "l"), ("datasets", "projects/p/locations/l/dicomStores/s")),
            "is not a valid dataset name: expected projects/PROJECT/locations/LOCATION/datasets/DATASET",
        ),
    ],
)
def test_missing_or_malformed_names_fail_with_one_line_and_exit_code_2(levels, message, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        resource_name(*levels)

    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("dicomlake: error: ") and message in line


def test_labels_and_stream_configs_are_gcloud_comma_lists() -> None:
    assert parse_labels("site=north, tier=gold,flag") == {"site": "north", "tier": "gold", "flag": ""}
    assert parse_stream_configs("bq://p.d.t,bq://p.d.u") == [
        {"bigqueryDestination": {"tableUri": "bq://p.d.t"}},
        {"bigqueryDestination": {"tableUri": "bq://p.d.u"}},
    ]
    assert parse_stream_configs("") == []
