"""The house rules that keep the layout honest, checked on the source itself: policies import
no engine, no private name crosses a module, ``ray_jobs`` and ``mlflow_config`` do not import
each other, DAG files hold no logic beyond composition, and the contract reference is current."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "policies",
    "operators",
    "ray_jobs",
    "spark_jobs",
    "mlflow_config",
    "slaflow",
    "dags",
    "benchmarks",
)


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _package(path: Path) -> str:
    return path.relative_to(REPO).parts[0]


def test_policies_import_no_engine() -> None:
    engines = ("airflow", "ray", "mlflow", "pyspark", "tensorflow", "tf_keras", "requests")
    for path in (REPO / "policies").glob("*.py"):
        for module, _ in _imports(path):
            assert module.split(".")[0] not in engines, f"{path.name} imports {module}"


def test_no_private_name_or_private_module_is_imported_across_modules() -> None:
    offenders = []
    for path in _modules():
        own = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for module, names in _imports(path):
            if module.split(".")[0] not in PACKAGES or module == own:
                continue
            # a package's private modules are its own: siblings and its __init__ may use them
            same_package = module.rsplit(".", 1)[0] == own.rsplit(".", 1)[0] or module.rsplit(
                ".", 1
            )[0] == own.removesuffix(".__init__")
            private_module = any(
                part.startswith("_") and part != "__init__" for part in module.split(".")
            )
            if private_module and not same_package:
                offenders.append(f"{own} imports private module {module}")
            offenders += [
                f"{own} imports {module}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
    assert offenders == []


def test_ray_jobs_and_mlflow_config_do_not_import_each_other_or_the_operators() -> None:
    for path in _modules():
        pkg = _package(path)
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if pkg == "ray_jobs":
                assert top not in ("mlflow_config", "operators"), f"{path} imports {module}"
            if pkg == "mlflow_config":
                assert top not in ("ray_jobs", "operators"), f"{path} imports {module}"
            if pkg == "policies":
                assert top not in ("operators", "ray_jobs", "mlflow_config", "slaflow"), path


def test_every_ray_job_spec_is_built_in_one_place() -> None:
    """Operators hand Ray Jobs specs from ``ray_jobs.specs``; no other module of the package
    assembles one (the spec travels as a file, see ``ray_jobs.entry``)."""
    builders = {"training_spec", "calibration_spec", "evaluation_spec", "profile_spec"}
    used = {
        n
        for path in (REPO / "operators").glob("*.py")
        for module, names in _imports(path)
        if module == "ray_jobs.specs"
        for n in names
    }
    assert used == builders


def test_every_import_of_a_project_name_resolves() -> None:
    """Operators import lazily (inside ``execute``), so a renamed function would only fail when
    a task runs; every ``from <project module> import <name>`` is checked here instead."""
    import importlib

    missing = []
    for path in _modules():
        if path.parts[-2] == "benchmarks":
            continue
        for module, names in _imports(path):
            if module.split(".")[0] not in PACKAGES or module.startswith(("dags", "benchmarks")):
                continue
            imported = importlib.import_module(module)
            missing += [
                f"{path.relative_to(REPO)}: {module}.{n}"
                for n in names
                if n != "*"
                and not hasattr(imported, n)
                and not (
                    hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{n}")
                )
            ]
    assert missing == []


def test_the_contract_reference_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slaflow.cli", "contract-docs"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert (REPO / "docs" / "contract.md").read_text() == out.stdout, (
        "docs/contract.md is stale: run `make docs`"
    )
