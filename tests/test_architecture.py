"""Import rules between the parts (README "Architecture"), checked two ways: what importing the
core really loads (a fresh interpreter), and what every module's import statements name."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CORE = ("pruning", "export", "data", "models")  # under lightning_prune/
CORE_MUST_NOT_LOAD = (
    "optuna",
    "mlflow",
    "hydra",
    "lightning_prune.search",
    "lightning_prune.ensembles",
    "lightning_prune.report",
    "lightning_prune.cli",
)
# lightning_prune/*.py
RUNNER = ("config", "tracking", "train", "checkpoint", "console", "targets", "provenance",
          "run_names", "run_metrics")  # fmt: skip
APP = ("lightning_prune.search", "lightning_prune.ensembles", "lightning_prune.report")


def _imported(path: Path) -> set[str]:
    """Absolute module names in the import statements of `path`, nested ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _breaks(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f"{f}.") for f in forbidden))


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_importing_the_core_loads_no_search_tracking_or_config_library():
    modules = ", ".join(f"lightning_prune.{part}" for part in CORE)
    code = f"import json, sys; import {modules}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert _breaks(loaded, CORE_MUST_NOT_LOAD) == []


@pytest.mark.parametrize("path", _sources(*(f"lightning_prune/{part}" for part in CORE)),
                         ids=lambda p: str(p.relative_to(REPO)))  # fmt: skip
def test_core_modules_import_no_search_tracking_or_config_library(path):
    assert _breaks(_imported(path), CORE_MUST_NOT_LOAD) == []


@pytest.mark.parametrize("path", [REPO / "lightning_prune" / f"{m}.py" for m in RUNNER],
                         ids=lambda p: p.name)  # fmt: skip
def test_runner_imports_neither_search_ensembles_nor_report(path):
    assert _breaks(_imported(path), (*APP, "lightning_prune.cli")) == []


@pytest.mark.parametrize("path", _sources("search"), ids=lambda p: str(p.relative_to(REPO)))
def test_search_imports_neither_ensembles_nor_report(path):
    forbidden = ("lightning_prune.ensembles", "lightning_prune.report", "lightning_prune.cli")
    assert _breaks(_imported(path), forbidden) == []


@pytest.mark.parametrize("path", _sources("ensembles"), ids=lambda p: str(p.relative_to(REPO)))
def test_ensembles_import_neither_report_nor_the_cli(path):
    assert _breaks(_imported(path), ("lightning_prune.report", "lightning_prune.cli")) == []


CONTRACT_REPEATED = {
    "storage URL parsing": re.compile(r"(startswith|removeprefix)\(\s*\"(sqlite|journal)"),
    "raw trial or study attribute key": re.compile(
        r"(user_attrs(\.get)?[\[(]|set_user_attr\()\s*\"|system_attrs"
    ),
}


@pytest.mark.parametrize(
    "path",
    [p for p in _sources("search", "ensembles", "lightning_prune/report")
     if p.name != "contract.py"] + [REPO / "lightning_prune" / "cli.py"],
    ids=lambda p: str(p.relative_to(REPO)),
)  # fmt: skip
def test_the_study_contract_is_written_once(path):
    text = path.read_text()
    found = {what: pattern.findall(text) for what, pattern in CONTRACT_REPEATED.items()}
    assert {what: hits for what, hits in found.items() if hits} == {}, (
        "use lightning_prune.search.contract (parse_storage, TrialAttr, StudyAttr)"
    )
