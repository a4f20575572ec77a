"""The trial reporter: a pytorch_lightning callback between a Trainer and an Optuna trial.

optuna-integration's PyTorchLightningPruningCallback needs the `lightning` package, and
raising TrialPruned inside `fit` would mark the run failed, so this callback only asks the
Trainer to stop; the objective raises TrialPruned once `fit` has returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optuna
import pytorch_lightning as pl
import torch
from lightning_prune.search.contract import CurvePoint, TrialAttr, curve_point_key
from lightning_prune.search.pruners import stop_reason
from pytorch_lightning.utilities.types import STEP_OUTPUT
from typing_extensions import override

FINITE_CHECK_STEPS = 50  # steps between looks at the loss's finiteness (one sync each)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial cannot recover."""


class TrialReporter(pl.Callback):
    """Report `monitor` to `trial` after each validation and stop pruned trials cleanly.

    Args:
        trial: the running Optuna trial.
        monitor: the logged metric to report, e.g. "val_acc".
        pruning: the AdaptivePruning callback of this run, or None for a dense run. Its
            `ramp_progress` (0..1) and `summary()["sparsity"]` are read at each validation.
        enable_pruning: report each validation to the trial and ask its pruner. Off with
            `search.pruner.kind=none`, and for Pareto studies: Optuna 5's `Trial.report`
            raises when a study has several objectives.
        stop_event: when set (Ctrl-C), the Trainer stops at the next batch.
        on_validation: called with each curve point {step, epoch, val_acc, sparsity,
            ramp_progress}, e.g. to log it to MLflow.
        min_sparsity: the demand; with pruning enabled, a trial whose (fixed) target has
            fallen below it -- sampled so, or lowered by the controller's back-offs, which
            never raise it again -- cannot become feasible and is stopped at once.

    Steps reported to Optuna are validation indices (0, 1, ...), the same for every trial of
    a study. Each validation writes its own curve point (`curve/0007`: one small write, not
    the whole growing curve) and the whole curve is written once when `fit` ends; readers
    use `contract.curve_of`, which assembles either form. After
    `fit`: `pruned_at` is the global step at which the pruner stopped the trial (or None),
    `interrupted` tells whether `stop_event` stopped it, `curve` holds every point.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        monitor: str = "val_acc",
        pruning: Any = None,
        enable_pruning: bool = True,
        stop_event: threading.Event | None = None,
        on_validation: Callable[[dict[str, Any]], None] | None = None,
        min_sparsity: float | None = None,
    ) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruning = pruning
        self.enable_pruning = enable_pruning
        self.stop_event = stop_event
        self.on_validation = on_validation
        self.min_sparsity = min_sparsity
        self.pruned_at: int | None = None
        self.pruned_reason = ""
        self.interrupted = False
        self.curve: list[dict[str, Any]] = []
        self._first_bad: torch.Tensor | None = None  # on the loss's device
        self._any_bad: torch.Tensor | None = None

    def _check_stop(self, trainer: pl.Trainer) -> None:
        if self.stop_event is not None and self.stop_event.is_set():
            self.interrupted = True
            trainer.should_stop = True

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # no host-device sync per step: the first non-finite loss is kept on the device
            # and looked at every FINITE_CHECK_STEPS steps and at each validation
            bad = ~torch.isfinite(loss.detach().float())
            if self._first_bad is None:
                self._first_bad = torch.where(bad, loss.detach().float(), 0.0)
                self._any_bad = bad.clone()
            else:
                keep = self._any_bad
                self._first_bad = torch.where(keep | ~bad, self._first_bad, loss.detach().float())
                self._any_bad = keep | bad
        if batch_idx % FINITE_CHECK_STEPS == 0:
            self._raise_if_non_finite(trainer)
        self._check_stop(trainer)

    def _raise_if_non_finite(self, trainer: pl.Trainer) -> None:
        """One sync: did any training loss since the last check stop being finite?"""
        if self._any_bad is not None and bool(self._any_bad):
            raise NonFiniteLossError(
                f"training loss became {float(self._first_bad)} by epoch "
                f"{trainer.current_epoch}, step {trainer.global_step}"
            )

    def _ramp_progress(self) -> float:
        return float(getattr(self.pruning, "ramp_progress", 1.0)) if self.pruning else 1.0

    def _sparsity(self) -> float | None:
        if self.pruning is None or not hasattr(self.pruning, "summary"):
            return None
        value = self.pruning.summary().get("sparsity")
        return None if value is None else float(value)

    def _hopeless(self) -> str:
        """Why the trial can no longer meet the sparsity demand ("" while it still can)."""
        if self.min_sparsity is None or self.pruning is None:
            return ""
        if getattr(getattr(self.pruning, "controller", None), "auto", False):
            return ""  # an "auto" target may still rise
        target = getattr(self.pruning, "target_sparsity", None)
        if isinstance(target, int | float) and target < self.min_sparsity - 1e-9:
            return f"infeasible: target sparsity {target:.4f} < demand {self.min_sparsity}"
        return ""

    def _stop_pruned(self, trainer: pl.Trainer, reason: str) -> None:
        self.pruned_at = trainer.global_step
        self.pruned_reason = reason
        trainer.should_stop = True

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._raise_if_non_finite(trainer)
        if self.monitor not in trainer.callback_metrics:
            available = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise RuntimeError(
                f"search: the monitored metric {self.monitor!r} was not logged; "
                f"logged metrics: {available}"
            )
        value = float(trainer.callback_metrics[self.monitor])
        point = {
            CurvePoint.STEP: trainer.global_step,
            CurvePoint.EPOCH: trainer.current_epoch,
            self.monitor: value,
            CurvePoint.SPARSITY: self._sparsity(),
            CurvePoint.RAMP_PROGRESS: self._ramp_progress(),
        }
        self.trial.set_user_attr(curve_point_key(len(self.curve)), point)
        self.curve.append(point)
        if self.on_validation is not None:
            self.on_validation(point)
        self._check_stop(trainer)
        if not self.enable_pruning:
            return
        hopeless = self._hopeless()
        if hopeless:
            self._stop_pruned(trainer, hopeless)
            return
        self.trial.report(value, step=len(self.curve) - 1)
        if self.trial.should_prune():
            self._stop_pruned(trainer, stop_reason(self.trial.study, self.trial.number))

    def _write_curve(self) -> None:
        if self.curve:
            self.trial.set_user_attr(TrialAttr.CURVE, self.curve)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_curve()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._write_curve()
