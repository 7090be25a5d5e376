"""The data-root allow-list (``policies.check_data_source``): examples, then properties."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import ContractError, DataRoot, check_data_source, parse_roots

pytestmark = pytest.mark.unit

ROOTS = parse_roots(["/srv/slaflow", "/data/tables/", "s3://ml-data/tables", "file:///mnt/nfs"])


@pytest.mark.parametrize(
    ("source", "read"),
    [
        ("sklearn:digits", "sklearn:digits"),
        ("slaflow:tickets", "slaflow:tickets"),
        ("/srv/slaflow/incoming/training.csv", "/srv/slaflow/incoming/training.csv"),
        ("/data/tables/x.parquet", "/data/tables/x.parquet"),
        ("/data/tables/a/../b.csv", "/data/tables/b.csv"),
        ("/data/tables", "/data/tables"),  # a root is a folder: Spark reads a Parquet folder
        ("file:///srv/slaflow/t.csv", "/srv/slaflow/t.csv"),
        ("/mnt/nfs/t.csv", "/mnt/nfs/t.csv"),
        ("s3://ml-data/tables/2026/t.parquet", "s3://ml-data/tables/2026/t.parquet"),
        ("S3://ml-data/tables/t.parquet", "s3://ml-data/tables/t.parquet"),
    ],
)
def test_sources_under_a_root_are_read_as_normalized(source: str, read: str) -> None:
    assert check_data_source(source, ROOTS) == read


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("/etc/passwd", "outside the allowed data roots"),
        ("/srv/slaflow/../../etc/passwd", "outside the allowed data roots"),
        ("/srv/slaflow2/t.csv", "outside the allowed data roots"),  # a prefix, not a folder
        ("s3://ml-data/tables2/t.parquet", "outside"),
        ("s3://other/tables/t.parquet", "outside"),
        ("gs://ml-data/tables/t.parquet", "the gs:// scheme is outside"),
        ("http://example.com/t.csv", "the http:// scheme is outside"),
        ("training.csv", "relative path"),
        ("../srv/slaflow/t.csv", "relative path"),
        ("/srv/slaflow/t.csv\x00.txt", "NUL"),
    ],
)
def test_anything_else_is_refused_naming_the_field_and_the_fix(source: str, said: str) -> None:
    with pytest.raises(ContractError) as info:
        check_data_source(source, ROOTS)
    assert info.value.field == "data_source"
    assert said in str(info.value)
    assert "Fix:" in str(info.value)


def test_the_refusal_lists_the_roots_and_the_setting() -> None:
    with pytest.raises(ContractError) as info:
        check_data_source("/etc/passwd", ROOTS)
    text = str(info.value)
    assert "/srv/slaflow, /data/tables, s3://ml-data/tables, /mnt/nfs" in text
    assert "SLAFLOW_DATA_ROOTS" in text
    with pytest.raises(ContractError, match="none configured"):
        check_data_source("/etc/passwd", ())


@pytest.mark.parametrize("bad", ["/", "relative/dir", "s3://", "file://"])
def test_a_root_that_would_admit_everything_or_nothing_is_a_setting_error(bad: str) -> None:
    with pytest.raises(ValueError, match="SLAFLOW_DATA_ROOTS"):
        parse_roots([bad])


def test_roots_are_kept_once_in_order_and_blank_entries_skipped() -> None:
    assert parse_roots(["/a", " ", "/b/", "/a"]) == (DataRoot("", "/a"), DataRoot("", "/b"))


_SEGMENTS = st.sampled_from(["srv", "slaflow", "..", ".", "", "data", "tables", "etc", "x.csv"])
_PATHS = st.lists(_SEGMENTS, max_size=8).map(lambda parts: "/" + "/".join(parts))
_SCHEMES = st.sampled_from(["", "file://", "s3://", "S3://", "gs://", "ml-data:"])


@settings(max_examples=500, deadline=None)
@given(scheme=_SCHEMES, path=_PATHS)
def test_any_path_is_read_under_a_root_or_refused_never_escaping(scheme: str, path: str) -> None:
    source = scheme + ("ml-data" + path if scheme.lower() in ("s3://", "gs://") else path)
    try:
        read = check_data_source(source, ROOTS)
    except ContractError as exc:
        assert exc.field == "data_source"
        return
    # what is read has no ".." left and lies under a root of its own scheme
    assert ".." not in read.split("/")
    scheme_read, _, rest = read.partition("://") if "://" in read else ("", "", read)
    assert any(root.holds(scheme_read, rest) for root in ROOTS), read
    if not scheme_read:
        assert posixpath.isabs(read) and posixpath.normpath(read) == read


def test_the_published_profile_holds_counts_and_the_stages_get_the_whole_one(
    tmp_path: Path,
) -> None:
    """What the prepare task publishes (its XCom, readable by whoever sees the run) holds no
    value of the data: label values, vocabularies and the slots named after them become
    counts. A stage gets the whole profile back from beside the splits."""
    import json

    from spark_jobs.prepared import PROFILE_FILE, full_profile, public_profile

    out = tmp_path / "run-1"
    profile = {
        "task": "classification",
        "input_columns": ["email", "age"],
        "classes": ["alice-team", "bob-team"],
        "encoding": {
            "columns": [
                {"name": "email", "kind": "categorical", "vocab": ["a@x.org", "b@y.org"]},
                {"name": "age", "kind": "numeric"},
            ]
        },
        "feature_names": ["email=a@x.org", "email=b@y.org", "email=<other>", "age"],
        "feature_mean": [0.5, 0.5, 0.0, 41.0],
        "feature_std": [0.5, 0.5, 0.0, 9.0],
        "feature_min": [0.0, 0.0, 0.0, 18.0],
        "feature_max": [1.0, 1.0, 1.0, 90.0],
        "train_label_counts": {"alice-team": 3, "bob-team": 4},
        "split_counts": {"train": 7, "val": 2, "test": 2},
        "paths": {s: f"{out}/{s}" for s in ("train", "val", "test")},
    }
    out.mkdir()
    (out / PROFILE_FILE).write_text(json.dumps(profile))
    published = public_profile({**profile, "prepare_seconds": 1.5})
    text = json.dumps(published)
    for value in ("alice-team", "a@x.org", "41.0", "90.0"):
        assert value not in text, value
    assert published["classes_count"] == 2 and published["feature_count"] == 4
    assert published["vocabulary_sizes"] == {"email": 2}
    assert published["profile_file"] == f"{out}/{PROFILE_FILE}"
    assert published["input_columns"] == ["email", "age"]  # the schema, not the data
    whole = full_profile(published)
    assert whole["classes"] == profile["classes"] and whole["encoding"] == profile["encoding"]
    assert whole["prepare_seconds"] == 1.5  # what the task added stays
    assert full_profile(whole) is whole  # already whole
    (out / PROFILE_FILE).unlink()  # the splits removed: the error says what to do
    with pytest.raises(FileNotFoundError, match="clear the run's prepare task"):
        full_profile(published)
