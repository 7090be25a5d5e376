"""Which data a run may read: an allow-list of data roots, applied to every ``data_source``.

A contract's ``data_source`` (typed in the trigger form, sent to the REST API, or taken from a
new-data Asset event) names what the Spark and Ray workers open. Without a check, anyone who
may trigger a run could make the workers read any file or URI they can reach. Here a source
is accepted only under a configured root (a local folder or a URI prefix such as
``s3://bucket/tables``), or as a bundled data set. Pure: the adapter resolves symlinks first
(``os.path.realpath``), so a link inside a root that points outside it is refused too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from policies._contract import ContractError

#: Bundled data sets: generated or shipped with scikit-learn, no file of the user's is read.
BUILTIN_PREFIXES = ("sklearn:", "slaflow:")
FIELD = "data_source"
#: The setting that lists the roots (an operator's setting, never a contract field).
ROOTS_SETTING = "SLAFLOW_DATA_ROOTS"


@dataclass(frozen=True)
class DataRoot:
    """One allowed root: ``scheme`` "" for a local folder, else the URI scheme (``s3``)."""

    scheme: str
    path: str  # normalized; for a URI, what follows "scheme://", without a trailing slash

    @classmethod
    def parse(cls, text: str) -> DataRoot:
        scheme, path = _split(text.strip())
        if not path or (path == "/" and not scheme):
            raise ValueError(
                f"{ROOTS_SETTING}: {text!r} is not a data root: name a folder (an absolute "
                f"path) or a URI prefix such as s3://bucket/tables, never / alone"
            )
        if not scheme and not path.startswith("/"):
            raise ValueError(
                f"{ROOTS_SETTING}: {text!r} is a relative path: give an absolute folder"
            )
        return cls(scheme, path)

    def holds(self, scheme: str, path: str) -> bool:
        return scheme == self.scheme and (path == self.path or path.startswith(self.path + "/"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme else self.path


def parse_roots(texts: Iterable[str]) -> tuple[DataRoot, ...]:
    """The roots named by a setting's entries (empty entries skipped), in order, once each."""
    roots: list[DataRoot] = []
    for text in texts:
        if text.strip() and (root := DataRoot.parse(text)) not in roots:
            roots.append(root)
    return tuple(roots)


def _split(source: str) -> tuple[str, str]:
    """``(scheme, normalized path)``; ``file://`` and bare paths are local (scheme "")."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        scheme, rest = "", source
    elif scheme.lower() == "file":
        scheme = ""
    scheme = scheme.lower()
    if not rest:
        return scheme, ""
    # ".." and "." never escape a root: the path is judged after they are resolved. A URI's
    # host (bucket) is its first segment; normpath keeps it there.
    normal = posixpath.normpath(rest)
    if scheme:
        normal = normal.lstrip("/")
    return scheme, normal.rstrip("/") or "/"


def check_data_source(source: str, roots: Iterable[DataRoot]) -> str:
    """``source`` as the workers should open it, or a ``ContractError`` naming the field.

    Bundled sets pass as they are. Anything else must be an absolute local path (or
    ``file://`` URI) under a local root, or a URI under a root of the same scheme. The returned
    path is normalized (``..`` resolved), so what is checked is what is read.
    """
    allowed = tuple(roots)
    if source.startswith(BUILTIN_PREFIXES):
        return source
    if "\x00" in source:
        raise ContractError(FIELD, "holds a NUL character", "give a plain path or URI")
    scheme, path = _split(source)
    where = ", ".join(str(r) for r in allowed) or "none configured"
    fix = (
        f"put the data under one of the allowed data roots ({where}), or ask whoever runs "
        f"slaflow to add its folder or URI prefix to {ROOTS_SETTING}; the bundled sets "
        f"(sklearn:digits, ...) need no root"
    )
    if not scheme and not path.startswith("/"):
        raise ContractError(
            FIELD,
            f"{source!r} is a relative path (workers on other machines would read another file)",
            "give an absolute path or a URI such as s3://bucket/key.parquet",
        )
    if not any(root.holds(scheme, path) for root in allowed):
        kind = f"the {scheme}:// scheme" if scheme else "this path"
        raise ContractError(FIELD, f"{kind} is outside the allowed data roots: {source!r}", fix)
    return f"{scheme}://{path}" if scheme else path
