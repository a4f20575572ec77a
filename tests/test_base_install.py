"""The base install (torch, pytorch-lightning, torchmetrics and what they bring) runs the
README's callback example; every feature of an extra names the extra to install.

The venv is built offline: the base packages already installed here are linked into it
(no download, no CUDA build), and lightning-prune is installed from a copy of this tree
with `pip install --no-deps --no-index`, then `pip check` proves its base requirements are
met by those packages alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO, needs_fmnist

BASE = ("torch", "pytorch-lightning", "torchmetrics")
EXTRAS_ONLY = ("optuna", "mlflow", "hydra", "omegaconf", "rich", "matplotlib", "onnx",
               "torch_pruning", "psycopg2")  # fmt: skip


def _closure(names: tuple[str, ...]) -> dict[str, object]:
    """The installed distributions `names` need, recursively (no extras)."""
    found, todo = {}, list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _link_packages(dists: dict, into: Path) -> None:
    """Link each distribution's top-level files (modules, packages, .dist-info) into `into`."""
    into.mkdir()
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            source = site / top
            if top in ("..", "__pycache__") or not source.exists() or top.endswith(".pth"):
                continue
            if not (into / top).exists():
                (into / top).symlink_to(source)


@pytest.fixture(scope="module")
def base_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True,
    ).strip())  # fmt: skip
    _link_packages(_closure((*BASE, "setuptools")), root / "packages")
    (site / "base_packages.pth").write_text(f"{root / 'packages'}\n")
    source = root / "source"
    files = subprocess.check_output(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                                    text=True).split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    install = [*pip, "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", source]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=600)
    return python


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_the_base_install_holds_no_extra_and_meets_its_requirements(base_python, tmp_path):
    for module in EXTRAS_ONLY:
        out = _run(base_python, f"import {module}", tmp_path)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, module
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(base_python), "check"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


@needs_fmnist
def test_the_readme_callback_example_runs_on_the_base_install(base_python, tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Prune inside your own Trainer", 1)[1]
    example = section.split("```python", 1)[1].split("```", 1)[0]
    out = _run(base_python, example, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sparsity, accuracy = map(float, out.stdout.split()[-2:])
    assert sparsity > 0.85 and accuracy > 0.5


@pytest.mark.parametrize(
    "code, extras",
    [
        ("import lightning_prune.search", "search,tracking"),
        ("import lightning_prune.ensembles", "search,tracking"),
        ("import lightning_prune.report", "search,tracking"),
        (
            "import torch\nfrom lightning_prune.export import export_onnx, compact\n"
            "export_onnx(torch.nn.Linear(2, 2), 'm.onnx', torch.zeros(1, 2))",
            "export",
        ),
        (
            "import torch\nfrom lightning_prune.export import compact\n"
            "compact(torch.nn.Linear(2, 2), torch.zeros(1, 2))",
            "export",
        ),
    ],
)
def test_a_feature_without_its_extra_names_the_extra(base_python, tmp_path, code, extras):
    out = _run(base_python, code, tmp_path)
    assert out.returncode != 0
    assert "MissingExtraError" in out.stderr, out.stderr[-2000:]
    assert f'pip install "lightning-prune[{extras}]"' in out.stderr


def test_the_command_line_without_its_extra_says_which_and_exits_2(base_python, tmp_path):
    cli = base_python.parent / "lightning-prune"
    out = subprocess.run([cli, "train"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert 'pip install "lightning-prune[search,tracking]"' in out.stderr
    assert "Traceback" not in out.stderr
