"""Ensemble-to-one: a single pruned student trained on the ensemble's soft predictions.

The ensemble costs the sum of its members at inference; the student costs one member. It
is built from the best member's recorded config (through `safe_instantiate`, so a study
cannot make it build untrusted code), pruned by `AdaptivePruning` while it learns, and
tested on the test split only after training.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_prune.ensembles.model import WeightedEnsemble
from lightning_prune.ensembles.predictions import accuracy, collect_log_probs
from lightning_prune.ensembles.selection import Member
from rich.table import Table
from torch import nn

from lightning_prune.pruning import AdaptivePruning
from lightning_prune.pruning.stats import nonzero_params
from lightning_prune.targets import safe_instantiate

STUDENT_ROW = "distilled student"


@dataclass
class Distilled:
    """The student and what the report and MLflow show about it."""

    student: nn.Module
    test_acc: float
    sparsity: float
    nonzero_params: int

    def metrics(self) -> dict[str, float]:
        return {"student_test_acc": self.test_acc, "student_sparsity": self.sparsity}


class DistillModule(pl.LightningModule):
    """Trains `student` on alpha * KL(ensemble || student) * T^2 + (1 - alpha) * CE.

    The ensemble is kept out of the submodules so the pruning callback, the optimizer and
    checkpoints see the student alone; it is moved to the student's device for the fit.
    """

    def __init__(
        self, student: nn.Module, ensemble: WeightedEnsemble, temperature: float, alpha: float
    ) -> None:
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = ensemble
        self.temperature, self.alpha = float(temperature), float(alpha)

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        with torch.no_grad():  # ensemble forward returns log-probabilities
            teacher = torch.log_softmax(self.teacher(x) / self.temperature, dim=-1)
        logits = self.student(x)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), teacher, log_target=True,
                        reduction="batchmean") * t * t  # fmt: skip
        loss = self.alpha * soft + (1 - self.alpha) * F.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        """The student's own optimizer and learning rate when it defines them."""
        if isinstance(self.student, pl.LightningModule):
            return self.student.configure_optimizers()
        return torch.optim.Adam(self.student.parameters(), lr=1e-3)


def distill_student(
    ensemble: WeightedEnsemble,
    datamodule: pl.LightningDataModule,
    model_config: dict[str, Any],
    *,
    sparsity: float,
    epochs: int,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    allow: str | Iterable[str] | None = None,
    pruning: dict[str, Any] | None = None,
) -> tuple[nn.Module, float, float]:
    """Train a fresh pruned student; return it (on CPU), its test accuracy and its sparsity.

    Temperature T > 1 softens the ensemble's probabilities so the student also learns how
    the members rank the wrong classes; T^2 keeps the soft term's gradient scale.
    `pruning`: further `AdaptivePruning` options (e.g. a structured granularity).
    """
    pl.seed_everything(seed, verbose=False)
    student = safe_instantiate(model_config, allow, where="best member's model_config")
    wrapper = DistillModule(student, ensemble, temperature, alpha)
    options = {"monitor": None, "verbose": False, **(pruning or {})}
    callback = AdaptivePruning(target_sparsity=sparsity, **options)
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )  # fmt: skip
    device = ensemble.weights.device
    try:
        trainer.fit(wrapper, datamodule=datamodule)
    finally:
        ensemble.to(device)
    achieved = float(callback.summary(events=False)["sparsity"])
    student = student.cpu().eval()
    datamodule.setup("test")
    log_probs, labels = collect_log_probs([student], datamodule.test_dataloader())
    return student, float(accuracy(log_probs, labels)[0]), achieved


def distill_members(
    ensemble: WeightedEnsemble,
    members: Sequence[Member],
    datamodule: pl.LightningDataModule,
    options: Any,
    *,
    seed: int = 0,
    allow: str | Iterable[str] | None = None,
) -> Distilled:
    """`distill_student` with the `ensemble.distill_*` options; the best member (highest
    first objective, a validation score) gives the architecture and, by default, the
    sparsity, so the student costs what that member costs."""
    best = max(members, key=lambda m: m.values[0])
    sparsity = options.distill_sparsity
    if sparsity is None:
        sparsity = float(best.attrs.get("sparsity", best.params.get("target_sparsity", 0.0)))
    student, test_acc, achieved = distill_student(
        ensemble, datamodule, best.model_config, sparsity=float(sparsity),
        epochs=int(options.distill_epochs), seed=seed, allow=allow,
    )  # fmt: skip
    return Distilled(student, test_acc, achieved, nonzero_params(student)[0])


def add_student_row(table: Table, distilled: Distilled) -> None:
    """The student under the ensemble's rows: its accuracy next to the ensemble's."""
    table.add_section()
    name = f"{STUDENT_ROW} ({distilled.sparsity:.1%} sparse)"
    table.add_row(name, "", f"{distilled.test_acc:.4f}", "-", f"{distilled.nonzero_params:,}")


def check_distill_options(options: Any) -> str | None:
    """The first bad `ensemble.distill_*` option as an error message, or None."""
    epochs = options.get("distill_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return f"ensemble.distill_epochs must be an integer >= 1, got {epochs!r}"
    sparsity = options.get("distill_sparsity")
    if sparsity is not None and (
        isinstance(sparsity, bool) or not isinstance(sparsity, int | float)
        or not 0 <= sparsity < 1
    ):  # fmt: skip
        return f"ensemble.distill_sparsity must be in [0, 1) or null, got {sparsity!r}"
    if not isinstance(options.get("distill"), bool):
        return f"ensemble.distill must be true or false, got {options.get('distill')!r}"
    return None
