"""Bucket URIs: the wildcard rules of ImportDicomData, the object-name rules, listing, reading and writing
local bucket folders without following links, file:// roots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dicomlake.errors import FailedPrecondition, InvalidArgument
from dicomlake.storage.buckets import MAX_LINE_BYTES, Buckets, parse_object, parse_pattern, parse_prefix


@pytest.mark.parametrize(
    ("uri", "matching", "not_matching"),
    [
        ("gs://bkt/dir/Example*.dcm", ["dir/Example.dcm", "dir/Example22.dcm"], ["dir/Example/1.dcm", "dir/x.dcm"]),
        ("gs://bkt/dir/Example?.dcm", ["dir/Example1.dcm"], ["dir/Example.dcm", "dir/Example01.dcm"]),
        ("gs://bkt/dir/**", ["dir/a.dcm", "dir/x/y/z", "dir/"], ["other/a.dcm", "dir"]),
        ("gs://bkt/dir/**.dcm", ["dir/a.dcm", "dir/x/y/z.dcm"], ["dir/a.dcm.bak", "dir/x/y/z"]),
        ("gs://bkt/**", ["a", "x/y/z.dcm"], []),
        ("gs://bkt/*/series/*.dcm", ["s1/series/i.dcm"], ["s1/x/series/i.dcm", "s1/series/sub/i.dcm"]),
        ("gs://bkt/dir/file.dcm", ["dir/file.dcm"], ["dir/file.dcm2", "dir/file"]),
        ("gs://bkt/dir/a+b(1).dcm", ["dir/a+b(1).dcm"], ["dir/aab(1).dcm"]),
    ],
)
def test_wildcards_match_as_google_documents(uri: str, matching: list[str], not_matching: list[str]) -> None:
    pattern = parse_pattern(uri)
    assert [n for n in matching if not pattern.matches(n)] == []
    assert [n for n in not_matching if pattern.matches(n)] == []


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bkt/dir/**/file.dcm",  # ** not at the end
        "gs://bkt/d*r/**",  # ** with another wildcard
        "gs://bkt/dir/***",
        "gs://bkt/dir/**x",
        "gs://bkt/",  # no object part
        "gs://bkt",
        "http://b/dir/x",
        "gs://B_/x",  # not a bucket name
        "gs://a/x",  # bucket names have at least three characters
    ],
)
def test_other_forms_are_invalid_argument(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pattern(uri)


def test_listing_a_local_bucket_streams_the_matching_objects(tmp_path: Path) -> None:
    folder = tmp_path / "buckets" / "imaging"
    for name in ["dir/a.dcm", "dir/b.txt", "dir/sub/c.dcm", "dir/sub/deeper/d.dcm", "other/e.dcm"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * len(name))
    buckets = Buckets(tmp_path, file_roots=[folder])

    def names(uri: str) -> list[str]:
        return sorted(o.name for o in buckets.list(parse_pattern(uri)))

    assert names("gs://imaging/dir/**.dcm") == ["dir/a.dcm", "dir/sub/c.dcm", "dir/sub/deeper/d.dcm"]
    assert names("gs://imaging/dir/*") == ["dir/a.dcm", "dir/b.txt"]
    assert names("gs://imaging/dir/sub/?.dcm") == ["dir/sub/c.dcm"]
    assert names("gs://imaging/dir/a.dcm") == ["dir/a.dcm"]
    assert names("gs://imaging/dir/missing.dcm") == []
    assert [o.size for o in buckets.list(parse_pattern("gs://imaging/other/*"))] == [len("other/e.dcm")]
    assert names(f"file://{folder}/dir/sub/**") == [f"{folder}/dir/sub/c.dcm", f"{folder}/dir/sub/deeper/d.dcm"]


def test_a_missing_local_bucket_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="bucket gs://nope does not exist"):
        list(Buckets(tmp_path).list(parse_pattern("gs://nope/**")))


def test_objects_are_written_and_read_back(tmp_path: Path) -> None:
    (tmp_path / "buckets" / "out").mkdir(parents=True)
    buckets = Buckets(tmp_path)
    buckets.put("gs://out/study/series/instance.dcm", b"DICM")
    assert buckets.get("gs://out/study/series/instance.dcm") == b"DICM"
    assert (tmp_path / "buckets" / "out" / "study" / "series" / "instance.dcm").read_bytes() == b"DICM"


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bkt/a b/Ünïcode.dcm",
        "gs://bkt/" + "/".join(["s" * 255] * 4),  # 1,023 bytes
        "gs://bkt/.hidden/a..b/...",
        "s3://bkt/dir/x.dcm",
    ],
)
def test_valid_object_names_pass(uri: str) -> None:
    assert parse_object(uri)[2] == uri.split("/", 3)[3]


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("gs://bkt/" + "/".join(["s" * 255] * 4) + "/s", "1025 bytes long"),
        ("gs://bkt/a/\x7f", "control character"),
        ("gs://bkt/a/\u0085", "control character"),
        ("gs://bkt/a/\ud800", "not valid UTF-8"),
        ("gs://bkt/a/", "empty path segment"),
        ("gs://bkt/a/x?.dcm", "'?'"),
        ("gs://bkt/.well-known/acme-challenge", "reserved"),
        ("file:///srv//x", "empty path segment"),
        ("file:///srv/%2e%2e/etc/passwd", "'..'"),
    ],
)
def test_invalid_object_names_say_what_is_wrong(uri: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        parse_object(uri)


def test_an_export_prefix_may_end_in_a_slash_and_leaves_room(tmp_path: Path) -> None:
    assert parse_prefix("gs://bkt/out/")[2] == "out/"
    assert parse_prefix("gs://bkt")[2] == ""
    assert parse_prefix("gs://bkt/" + "p" * 200 + "/" + "q" * 200)[2]
    with pytest.raises(InvalidArgument, match="room"):
        parse_prefix("gs://bkt/" + "/".join(["p" * 200] * 4) + "/" + "q" * 30)  # 834 bytes
    with pytest.raises(InvalidArgument, match="empty path segment"):
        parse_prefix("gs://bkt/out//")


def test_file_uris_need_a_listed_root(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_bytes = b"DICM"
    (tmp_path / "in" / "a.dcm").write_bytes(write_bytes)
    with pytest.raises(InvalidArgument, match="DICOMLAKE_FILE_ROOTS lists none"):
        Buckets(tmp_path).get(f"file://{tmp_path}/in/a.dcm")
    allowed = Buckets(tmp_path, file_roots=[tmp_path / "in"])
    assert allowed.get(f"file://{tmp_path}/in/a.dcm") == write_bytes
    with pytest.raises(InvalidArgument, match="not under a folder listed in DICOMLAKE_FILE_ROOTS"):
        allowed.get(f"file://{tmp_path}/inbox/a.dcm")


def test_a_local_put_replaces_a_link_at_its_name_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "buckets" / "out"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (folder / "x.dcm").symlink_to(victim)
    Buckets(tmp_path).put("gs://out/x.dcm", b"DICM")
    assert not (folder / "x.dcm").is_symlink() and (folder / "x.dcm").read_bytes() == b"DICM"
    assert victim.read_bytes() == b"keep"
    assert [p.name for p in folder.iterdir()] == ["x.dcm"]


def test_reading_a_fifo_or_a_folder_fails_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "buckets" / "inbox"
    (folder / "sub").mkdir(parents=True)
    os.mkfifo(folder / "pipe")
    buckets = Buckets(tmp_path)
    with pytest.raises(FailedPrecondition, match="a FIFO"):
        buckets.get("gs://inbox/pipe")
    with pytest.raises(FailedPrecondition, match="a folder"):
        buckets.get("gs://inbox/sub")
    assert [o.name for o in buckets.list(parse_pattern("gs://inbox/**"))] == ["pipe"]


def test_lines_are_split_on_newlines_and_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "buckets" / "inbox"
    folder.mkdir(parents=True)
    (folder / "ok.txt").write_bytes(b"a\r\nb\n\nc")
    (folder / "long.txt").write_bytes(b"a\n" + b"x" * (MAX_LINE_BYTES + 2) + b"\nc\n")
    buckets = Buckets(tmp_path)
    assert list(buckets.lines("gs://inbox/ok.txt")) == ["a", "b", "", "c"]
    with pytest.raises(InvalidArgument, match=f"line 2 of gs://inbox/long.txt is longer than {MAX_LINE_BYTES} bytes"):
        list(buckets.lines("gs://inbox/long.txt"))


def test_listing_under_a_file_finds_nothing_and_under_a_link_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "buckets" / "inbox"
    (folder / "real").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"DICM")
    (folder / "link").symlink_to(folder / "real", target_is_directory=True)
    buckets = Buckets(tmp_path)
    assert list(buckets.list(parse_pattern("gs://inbox/a.dcm/**"))) == []
    assert list(buckets.list(parse_pattern("gs://inbox/a.dcm/x.dcm"))) == []
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        list(buckets.list(parse_pattern("gs://inbox/link/**")))
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        buckets.put("gs://inbox/link/x.dcm", b"DICM")
    with pytest.raises(FailedPrecondition, match="a file where a folder should be"):
        buckets.put("gs://inbox/a.dcm/x.dcm", b"DICM")
    assert list((folder / "real").iterdir()) == []
