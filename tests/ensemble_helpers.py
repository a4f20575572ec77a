"""Builders for ensemble tests: tiny trained members and real Optuna studies that point at them.

The studies are made with `study.add_trial(create_trial(...))` carrying the same user
attrs the search records, so these tests do not depend on the search code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
import torch

from lightning_prune import tracking
from lightning_prune.checkpoint import save_model
from lightning_prune.data import SyntheticDataModule
from lightning_prune.models import Classifier

DATA = {
    "_target_": "lightning_prune.data.SyntheticDataModule",
    "num_train": 384,
    "num_val": 192,
    "num_test": 192,
    "num_classes": 10,
    "batch_size": 64,
    "noise": 3.0,
    "seed": 0,
}
CRITERIA = optuna.distributions.CategoricalDistribution(["magnitude", "taylor"])
SPARSITY = optuna.distributions.FloatDistribution(0.5, 0.99)


def datamodule() -> SyntheticDataModule:
    return SyntheticDataModule(**{k: v for k, v in DATA.items() if k != "_target_"})


def _prune(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest weights of every Linear layer: exact zeros, as pruned models have."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight.data
            k = int(w.numel() * sparsity)
            threshold = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= threshold] = 0


def train_member(folder: Path, seed: int, num_classes: int = 10, sparsity: float = 0.8) -> dict:
    """Train a LeNet-300-100 for one epoch, prune it, save it; return its trial attrs."""
    pl.seed_everything(seed, verbose=False)
    data = SyntheticDataModule(**{**{k: v for k, v in DATA.items() if k != "_target_"},
                                  "num_classes": num_classes})  # fmt: skip
    model = Classifier("lenet300", num_classes=num_classes, lr=2e-3)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    _prune(model, sparsity)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    config = {"_target_": "lightning_prune.models.Classifier", "network": "lenet300",
              "num_classes": num_classes, "lr": 2e-3}  # fmt: skip
    path = save_model(folder / f"seed{seed}-c{num_classes}" / "model.pt", model, config, {})
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return {"checkpoint": str(path.resolve()), "val_acc": float(val["val_acc"]),
            "sparsity": sparsity, "nonzero_params": nonzero, "flops": 2 * nonzero}  # fmt: skip


def make_study(
    storage: str | optuna.storages.BaseStorage,
    members: list[dict[str, Any]],
    *,
    name: str = "study",
    values: list[float] | None = None,
    criteria: list[str] | None = None,
    constraints: list[float] | None = None,
    directions: tuple[str, ...] = ("maximize",),
    extra_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """A real study whose finished trials carry the search's user attrs."""
    study = optuna.create_study(study_name=name, storage=storage, directions=list(directions))
    study.set_user_attr("config", {"data": DATA})
    for key, value in (extra_attrs or {}).items():
        study.set_user_attr(key, value)
    for i, attrs in enumerate(members):
        value = values[i] if values else attrs["val_acc"]
        vals = [value] if len(directions) == 1 else [value, attrs["sparsity"]]
        criterion = (criteria or ["magnitude"] * len(members))[i]
        trial = optuna.trial.create_trial(
            values=vals,
            params={"criterion": criterion, "target_sparsity": attrs["sparsity"]},
            distributions={"criterion": CRITERIA, "target_sparsity": SPARSITY},
            user_attrs={"mlflow_run_id": None, "test_acc": 0.0, **attrs},
            constraints={"min_sparsity": constraints[i]} if constraints else None,
        )
        study.add_trial(trial)
    return study


def mlflow_parent(uri: str, experiment: str = "lightning-prune") -> str:
    """A parent run standing in for the study's run."""
    run_id = tracking.start_run(uri, experiment, run_name="study")
    return run_id


def snapshot(study: optuna.Study) -> list[tuple]:
    """Everything recorded about the trials, to check selection changed nothing."""
    reloaded = optuna.load_study(study_name=study.study_name, storage=study._storage)
    return [
        (t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs)
        for t in reloaded.get_trials(deepcopy=True)
    ] + [reloaded.user_attrs]


class GuardedData(SyntheticDataModule):
    """Synthetic data whose test split raises until `setup("test")` opens it.

    Counts every access of the test tensors, so a test can prove that selection and
    weight fitting never read them.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.test_open, self.test_reads = False, 0
        super().__init__(**kwargs)

    @property
    def test(self):
        self.test_reads += 1
        if not self.test_open:
            raise AssertionError("test data touched before evaluation")
        return self._test

    @test.setter
    def test(self, value) -> None:
        self._test = value

    def setup(self, stage: str | None = None) -> None:
        if stage == "test":
            self.test_open = True
        if not hasattr(self, "_test"):
            super().setup(stage)
