"""Checkpoints, ensemble files and stored study configs build only allowed `_target_`s.

Each crafted input would run its `_target_` through plain Hydra (the first test shows
that it does); loaded through the project it is refused, naming the target, and the
file it would have written does not appear.
"""

from __future__ import annotations

import shutil  # noqa: F401  (reached as tests.test_untrusted_files.shutil below)
from pathlib import Path

import optuna
import pytest
import torch
from hydra.utils import instantiate
from lightning_prune.ensembles import load_ensemble, load_ensemble_info, run_ensemble, save_ensemble
from lightning_prune.ensembles.model import WeightedEnsemble
from torch import nn

from lightning_prune.checkpoint import load_model, save_model
from lightning_prune.cli import main
from lightning_prune.config import ConfigError, load_config
from lightning_prune.models import Classifier
from lightning_prune.targets import UntrustedTargetError, check_targets
from lightning_prune.train import build_components
from tests.conftest import run_cli
from tests.ensemble_helpers import make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
CLASSIFIER = {"_target_": "lightning_prune.models.Classifier", "network": "lenet300"}
HERE = "tests.test_untrusted_files"


class TinyModel(nn.Module):
    """A user's own model: loads only when its module is allowed."""

    def __init__(self, width: int = 3, **_settings) -> None:
        super().__init__()
        self.layer = nn.Linear(4, width)


def _copy(tmp_path: Path) -> tuple[dict, Path]:
    """A config whose target copies a file into tmp_path, and where the copy would land."""
    source, copy = tmp_path / "source.txt", tmp_path / "copy"
    source.write_text("secret")
    return {"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)}, copy


def _open(tmp_path: Path) -> tuple[dict, Path]:
    path = tmp_path / "opened"
    return {"_target_": "builtins.open", "file": str(path), "mode": "w"}, path


def _checkpoint(path: Path, model_config: dict) -> Path:
    torch.save({"state_dict": {}, "model_config": model_config, "info": {}}, path)
    return path


def test_the_crafted_config_does_run_through_plain_hydra(tmp_path):
    config, copy = _copy(tmp_path)
    instantiate(config)
    assert copy.read_text() == "secret"


@pytest.mark.parametrize("craft", [_copy, _open], ids=["shutil.copyfile", "builtins.open"])
def test_checkpoint_with_a_foreign_target_is_refused_before_it_runs(tmp_path, craft):
    config, written = craft(tmp_path)
    path = _checkpoint(tmp_path / "model.pt", config)
    target = config["_target_"]
    with pytest.raises(UntrustedTargetError, match=rf"'{target}'.*allow_targets=\[{target}\]"):
        load_model(path)
    assert not written.exists()


@pytest.mark.parametrize(
    "place",
    [
        lambda bad: {**CLASSIFIER, "network": bad},
        lambda bad: {**CLASSIFIER, "_args_": [bad]},
        lambda bad: {**CLASSIFIER, "_recursive_": False, "extra": {"deep": [bad]}},
        lambda bad: {**CLASSIFIER, "network": {**bad, "_partial_": True}},
    ],
    ids=["kwarg", "args", "not-recursive", "partial"],
)
def test_a_nested_target_inside_an_allowed_one_is_refused(tmp_path, place):
    bad, copy = _copy(tmp_path)
    with pytest.raises(UntrustedTargetError, match="'shutil.copyfile' at "):
        load_model(_checkpoint(tmp_path / "model.pt", place(bad)))
    assert not copy.exists()


@pytest.mark.parametrize(
    "target",
    ["os.system('x')", "lightning_prune.models.Classifier ", "a..b", "${oc.env:HOME}", 42,
     "lightning_prune.models.Classifier.__init__.__globals__"],
)  # fmt: skip
def test_targets_that_are_not_plain_dotted_names_are_refused(target):
    with pytest.raises(UntrustedTargetError, match="refused _target_"):
        check_targets({"_target_": target}, allow=["*"])


def test_hydra_keys_and_interpolations_must_hold_plain_values():
    for config in (
        {**CLASSIFIER, "_recursive_": "no"},
        {**CLASSIFIER, "_convert_": "eval"},
        {**CLASSIFIER, "_args_": "x"},
        {**CLASSIFIER, "network": "${oc.env:HOME}"},
    ):
        with pytest.raises(UntrustedTargetError):
            check_targets(config)  # fmt: skip


def test_a_user_pattern_loads_a_custom_class_and_reaches_no_further(tmp_path):
    model = TinyModel(width=5)
    path = save_model(
        tmp_path / "tiny.pt", model, {"_target_": f"{HERE}.TinyModel", "width": 5}, {}
    )
    with pytest.raises(UntrustedTargetError, match=f"'{HERE}.TinyModel'"):
        load_model(path)
    loaded, _ = load_model(path, allow=[f"{HERE}.*"])
    assert isinstance(loaded, TinyModel)
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    bad, copy = _copy(tmp_path)
    reached = _checkpoint(tmp_path / "reach.pt", {**bad, "_target_": f"{HERE}.shutil.copyfile"})
    with pytest.raises(UntrustedTargetError, match="it is shutil.copyfile, from another package"):
        load_model(reached, allow=[f"{HERE}.*"])
    assert not copy.exists()


def test_ensemble_file_is_checked_whole_before_any_member_is_built(tmp_path):
    bad, copy = _copy(tmp_path)
    ensemble = WeightedEnsemble([Classifier("lenet300"), Classifier("lenet300")], [0.5, 0.5])
    path = save_ensemble(tmp_path / "e.pt", ensemble, [CLASSIFIER, bad])
    with pytest.raises(UntrustedTargetError, match="member 1: refused _target_ 'shutil.copyfile'"):
        load_ensemble(path)
    assert not copy.exists()
    assert load_ensemble_info(path)["model_configs"][1] == bad  # reading builds nothing
    tiny = WeightedEnsemble([TinyModel(), TinyModel()], [0.5, 0.5], num_classes=3)
    custom = save_ensemble(tmp_path / "t.pt", tiny, [{"_target_": f"{HERE}.TinyModel"}] * 2)
    with pytest.raises(UntrustedTargetError, match=f"allow=\\['{HERE}.TinyModel'\\]"):
        load_ensemble(custom)
    loaded, _ = load_ensemble(custom, allow=f"{HERE}.TinyModel")
    assert all(isinstance(m, TinyModel) for m in loaded.members)


def _poisoned_study(tmp_path: Path, members: list[dict] | None = None) -> tuple[str, Path]:
    """A real SQLite study whose stored data config copies a file, and allows itself."""
    bad, copy = _copy(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(storage, members or [], name="s")
    study.set_user_attr("config", {"data": bad, "allow_targets": ["*"]})
    return storage, copy


def test_study_data_config_is_refused_in_process(tmp_path):
    storage, copy = _poisoned_study(tmp_path)
    cfg = load_config([f"ensemble.storage={storage}", "ensemble.study_name=s",
                       f"output_dir={tmp_path / 'runs'}"])  # fmt: skip
    with pytest.raises(UntrustedTargetError, match="study 's' config.data: refused _target_"):
        run_ensemble(cfg)
    assert not copy.exists()


def test_ensemble_command_on_a_poisoned_study_exits_2_with_one_line(tmp_path):
    storage, copy = _poisoned_study(tmp_path)
    done = run_cli("ensemble", f"ensemble.storage={storage}", "ensemble.study_name=s",
                   "ensemble.log_mlflow=false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-prune ensemble: error: study 's'")
    assert "refused _target_ 'shutil.copyfile'" in lines[0]
    assert not copy.exists()


def test_ensemble_and_report_commands_with_a_crafted_member_checkpoint(tmp_path, capsys):
    bad, copy = _copy(tmp_path)
    member = {"checkpoint": str(_checkpoint(tmp_path / "model.pt", bad)), "val_acc": 0.5,
              "sparsity": 0.5, "nonzero_params": 10, "flops": 20}  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage, [member], name="s")
    where = [f"output_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    assert main(["ensemble", f"ensemble.storage={storage}", "ensemble.study_name=s",
                 "ensemble.log_mlflow=false", *where]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-prune ensemble: error: trial 0: cannot load")
    assert "refused _target_ 'shutil.copyfile'" in err and len(err.splitlines()) == 1
    assert main(["report", f"search.storage={storage}", "search.study_name=s", *where]) == 0
    assert not copy.exists()  # the report reads weights and records, and builds nothing


def test_train_config_builds_only_project_and_allowed_targets():
    with pytest.raises(ConfigError, match="model: refused _target_ 'shutil.copyfile'"):
        build_components(load_config(["model._target_=shutil.copyfile"]))
    cfg = load_config(["data=synthetic", f"model._target_={HERE}.TinyModel",
                       f"allow_targets=[{HERE}.*]"])  # fmt: skip
    _, model, _ = build_components(cfg)
    assert isinstance(model, TinyModel)
    with pytest.raises(ConfigError, match="allow_targets: 'a b' is not a dotted name"):
        load_config(["allow_targets=[a b]"])
