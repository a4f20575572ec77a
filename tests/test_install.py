"""A non-editable install ships one import name with its configs inside."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_non_editable_install_finds_its_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    installed = {p.name for p in target.iterdir()}
    assert "lightning_prune" in installed
    assert not {"search", "ensembles", "conf", "tests"} & installed
    package = target / "lightning_prune"
    for sub in ("search", "ensembles", "conf", "pruning", "export"):
        assert (package / sub / "__init__.py").is_file(), sub
    assert (package / "conf" / "config.yaml").is_file()
    assert list((package / "conf" / "model").glob("*.yaml"))
    code = (
        "import lightning_prune.config as c, lightning_prune.search, lightning_prune.ensembles;"
        "print(c.conf_dir()); print(c.load_config(['model=lenet5']).model.network)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    conf_dir, network = out.stdout.split()
    assert Path(conf_dir).is_relative_to(target) and network == "lenet5"
