"""Where prepared splits and their profile live, and what of the profile is published.

``run_prepare`` writes the splits and ``profile.json`` beside them (on ``SLAFLOW_DATA_DIR``,
storage the engines and Airflow's workers reach). The prepare task publishes
``public_profile`` (its XCom, which whoever can see the run reads in the Airflow UI and REST
API): counts, no value of the data; each later stage reads the whole profile back with
``full_profile``. ``find_prepared`` / ``record_prepared`` index splits already prepared from
the same data and settings, so a run reuses them.
"""

from __future__ import annotations

import json
from typing import Any

PROFILE_FILE = "profile.json"

#: What the profile holds of the data's own values (label values, category vocabularies, the
#: one-hot slots named after them, per-feature statistics aligned with those names).
DATA_VALUE_KEYS = (
    "classes",
    "encoding",
    "feature_names",
    "train_label_counts",
    "feature_mean",
    "feature_std",
    "feature_min",
    "feature_max",
)


def filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem and path for ``uri`` (a local path, or any scheme it knows)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


def read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def find_prepared(data_dir: str, key: str) -> dict[str, Any] | None:
    """The profile of splits prepared before under ``key``, if they are all still there."""
    import pyarrow.fs as pafs

    try:
        profile: dict[str, Any] = read_json(f"{data_dir.rstrip('/')}/prepared/{key}.json")
    except (FileNotFoundError, OSError, ValueError):
        return None
    for split_path in profile["paths"].values():
        fs, path = filesystem(split_path)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
    return profile


def record_prepared(data_dir: str, key: str, profile: dict[str, Any]) -> None:
    write_text(f"{data_dir.rstrip('/')}/prepared/{key}.json", json.dumps(profile))


def profile_file(profile: dict[str, Any]) -> str:
    """Where the whole profile of ``profile``'s splits lies (beside them)."""
    return str(profile["paths"]["train"]).rstrip("/").rsplit("/", 1)[0] + "/" + PROFILE_FILE


def public_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile as the prepare task publishes it: counts and shapes, no value of the data
    (``DATA_VALUE_KEYS`` become their sizes), and ``profile_file`` to read the rest from."""
    out = {k: v for k, v in profile.items() if k not in DATA_VALUE_KEYS}
    columns = (profile.get("encoding") or {}).get("columns", [])
    out.update(
        classes_count=len(profile.get("classes") or []),
        feature_count=len(profile.get("feature_names") or []),
        vocabulary_sizes={c["name"]: len(c["vocab"]) for c in columns if c.get("vocab")},
        profile_file=profile_file(profile),
    )
    return out


def full_profile(published: dict[str, Any]) -> dict[str, Any]:
    """The whole profile back from ``public_profile``'s output (read from ``profile_file``),
    with what the task added to it (timings, reuse, the Spark deadline's report) on top; a
    whole profile is returned as it is."""
    if "profile_file" not in published or "classes" in published:
        return published
    uri = str(published["profile_file"])
    try:
        stored: dict[str, Any] = read_json(uri)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"the prepared data's profile {uri} cannot be read ({exc}): the prepared splits "
            f"were removed or SLAFLOW_DATA_DIR is not reachable from this worker; clear the "
            f"run's prepare task to prepare them again"
        ) from exc
    return {**stored, **{k: v for k, v in published.items() if k not in stored}}
