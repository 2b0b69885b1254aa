"""Import source URIs: the wildcard rules of ImportDicomData, and listing a bucket folder with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomlake.errors import InvalidArgument
from dicomlake.storage.buckets import Buckets, parse_pattern


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
