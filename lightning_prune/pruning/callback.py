"""AdaptivePruning: a Lightning callback that prunes while training and listens to the metric.

Hot path (every optimizer step): mask the gradients in `on_before_optimizer_step` and re-zero
the weights in `on_train_batch_end` (Lightning has no hook after `optimizer.step`), each one
fused call over all layers. Scoring, allocation and regrowth run only every `frequency` steps;
gradient statistics only in the window before each of those updates.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from lightning_prune.pruning.controller import EVENT_CODES, Controller, Decision
from lightning_prune.pruning.criteria import Importance, build_criterion
from lightning_prune.pruning.granularity import NM, build_granularity
from lightning_prune.pruning.masks import MaskStore, reset_optimizer_state, select_params
from lightning_prune.pruning.options import check_options, check_patterns
from lightning_prune.pruning.regrowth import Shadows
from lightning_prune.pruning.running_stats import RunningStats
from lightning_prune.pruning.schedules import SparsitySchedule
from lightning_prune.pruning.stats import (
    build_summary,
    logged_metrics,
    measure_macs,
    render_summary,
)
from lightning_prune.pruning.updater import MaskUpdater

# Adam's beta2 = 0.999 decays an inert second moment to subnormal floats in about 87k steps.
INERT_REFRESH_STEPS = 10_000


class AdaptivePruning(pl.Callback):
    """Prune Linear/Conv2d weights during training, adapting to the validation metric.

    Args:
        target_sparsity: final fraction of pruned weights in [0, 1), or "auto" (the controller
            raises it while `monitor` stays within `tolerance`, up to `max_sparsity`).
        max_sparsity: ceiling for "auto".
        criterion: importance score: "magnitude", "gradient", "taylor", "activation", "random",
            "hybrid", any name added with `register_criterion`, or an `Importance` instance.
        criterion_kwargs: keyword arguments of the criterion, e.g. {"statistic": "apoz"}.
        granularity: "unstructured" (weights), "structured" (output neurons/channels) or "n:m".
        nm: the N:M pattern for granularity "n:m", e.g. "2:4" (target becomes 1 - N/M).
        allocation: "global" ranking, "layerwise" uniform, or "lamp" (Lee et al. 2021).
        min_density: fraction of weights every layer keeps, e.g. 0.005.
        output_min_density: the same for the output layer (the last matched one).
        include: module-name globs to prune, e.g. ["net.*"]; default every Linear/Conv2d.
        exclude: module-name globs to leave dense, e.g. ["net.0"].
        schedule: "cubic" (Zhu & Gupta 2017), "linear" or "oneshot".
        start: fraction of the optimizer steps at which pruning starts, e.g. 0.1.
        end: fraction at which the target is reached; the rest of training fine-tunes.
        frequency: optimizer steps between mask updates.
        regrowth: "none", "dns" (shadow weights spliced back) or "rigl" (dense-gradient growth).
        regrow_fraction: fraction of kept weights swapped per update (cosine-decayed to `end`).
        monitor: logged validation metric for the controller, e.g. "val_acc"; None disables it.
        mode: "max" if higher `monitor` is better, "min" otherwise.
        tolerance: allowed absolute worsening of `monitor` from the pre-pruning reference.
        patience: validations outside tolerance (ramp paused) before backing off.
        backoff_step: sparsity given back by one back-off (best pruned weights regrow).
        auto_initial: first target of target_sparsity="auto".
        raise_factor: one "auto" raise multiplies the remaining density by this.
        verbose: print the per-layer table and the decisions at the end of fit.

    Example::

        trainer = pl.Trainer(callbacks=[AdaptivePruning(target_sparsity=0.95, monitor="val_acc")])
    """

    def __init__(
        self,
        target_sparsity: float | Literal["auto"] = 0.9,
        max_sparsity: float = 0.99,
        criterion: str | Importance = "magnitude",
        criterion_kwargs: dict[str, Any] | None = None,
        granularity: str = "unstructured",
        nm: str = "2:4",
        allocation: str = "global",
        min_density: float = 0.005,
        output_min_density: float = 0.1,
        include: tuple[str, ...] | list[str] | str = ("*",),
        exclude: tuple[str, ...] | list[str] | str = (),
        schedule: str = "cubic",
        start: float = 0.0,
        end: float = 0.7,
        frequency: int = 50,
        regrowth: str = "none",
        regrow_fraction: float = 0.1,
        monitor: str | None = "val_acc",
        mode: str = "max",
        tolerance: float = 0.01,
        patience: int = 2,
        backoff_step: float = 0.02,
        auto_initial: float = 0.5,
        raise_factor: float = 0.5,
        verbose: bool = True,
    ) -> None:
        options = dict(locals())
        options.pop("self")
        options.pop("__class__", None)
        check_options(options)
        self.include = check_patterns("include", include)
        self.exclude = check_patterns("exclude", exclude)
        self.criterion = (
            criterion
            if isinstance(criterion, Importance)
            else build_criterion(criterion, criterion_kwargs)
        )
        self.granularity = build_granularity(granularity, nm)
        if isinstance(self.granularity, NM):
            target = self.granularity.sparsity
        else:
            target = auto_initial if target_sparsity == "auto" else float(target_sparsity)
        self.target = target
        self.schedule = SparsitySchedule(schedule, start, end)
        self.frequency, self.monitor, self.verbose = frequency, monitor, verbose
        self.regrowth = regrowth
        self.controller = (
            None
            if monitor is None
            else Controller(
                mode, tolerance, patience, backoff_step, target,
                auto=target_sparsity == "auto", max_sparsity=max_sparsity,
                raise_factor=raise_factor,
            )
        )  # fmt: skip
        self.updater = MaskUpdater(
            self.criterion, self.granularity, allocation, min_density, output_min_density,
            regrowth, regrow_fraction,
        )  # fmt: skip
        self.store: MaskStore | None = None
        self.stats = RunningStats(self.criterion.requires)
        # at most half the steps between mask updates pay for gathering statistics
        self.stats_window = min(self.stats.window, max(1, frequency // 2))
        self.shadows: Shadows | None = None
        self.applied_goal = 0.0
        self._module: pl.LightningModule | None = None
        self._macs: dict[str, int] | None = None
        self._force_update = False
        self._last_step = -1
        self._refresh_at = -1
        self._last_validation_step = 0
        self._restored = False
        self._pending_state: dict[str, Any] | None = None
        self._seen_validation = False

    # ---- setup and state -------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Select the parameters and create all-ones masks (raises if nothing matches)."""
        if self.store is not None and self._module is pl_module:
            return
        params = select_params(pl_module, self.include, self.exclude)
        self.granularity.check(params)
        self._module = pl_module
        self.store = MaskStore(params)
        self.shadows = Shadows(params) if self.regrowth == "dns" else None
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def state_dict(self) -> dict[str, Any]:
        """Masks, shadows, running statistics, schedule and controller (weights_only-safe)."""
        if self.store is None:
            return {}
        return {
            "masks": {n: m.detach().cpu().clone() for n, m in self.store.masks.items()},
            "shadows": self.shadows.state_dict() if self.shadows is not None else {},
            "stats": self.stats.state_dict(),
            "criterion": self.criterion.state_dict(),
            "schedule": self.schedule.state_dict(),
            "controller": self.controller.state_dict() if self.controller else {},
            "applied_goal": self.applied_goal,
            "last_validation_step": self._last_validation_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.store is None:
            self._pending_state = state_dict
            return
        self._pending_state = None
        masks = state_dict["masks"]
        missing = set(self.store.masks) ^ set(masks)
        if missing:
            raise ValueError(f"AdaptivePruning: checkpoint masks do not match the model: {missing}")
        self.store.set_masks(masks)
        if self.shadows is not None:
            self.shadows.load_state_dict(state_dict.get("shadows", {}))
        device = next(iter(self.store.params.values())).param.device
        self.stats.load_state_dict(state_dict.get("stats", {}), device=device)
        self.criterion.load_state_dict(state_dict.get("criterion", {}))
        self.schedule.load_state_dict(state_dict["schedule"])
        if self.controller is not None and state_dict.get("controller"):
            self.controller.load_state_dict(state_dict["controller"])
        self.applied_goal = float(state_dict.get("applied_goal", 0.0))
        self._last_validation_step = int(state_dict.get("last_validation_step", 0))
        self._restored = True

    # ---- training hooks --------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.store is not None
        if not self._restored:
            self.schedule.bind(trainer.estimated_stepping_batches, self.target)
        device = next(iter(self.store.params.values())).param.device
        self.store.to(device)
        if self.shadows is not None:
            self.shadows.values = {n: v.to(device) for n, v in self.shadows.values.items()}
        self.stats.attach(list(self.store.params.values()))
        self.store.apply_to_weights()
        example = getattr(pl_module, "example_input_array", None)
        if example is not None:
            self._measure(pl_module, example)

    def _measure(self, pl_module: pl.LightningModule, example: Any) -> None:
        if isinstance(example, torch.Tensor):
            example = example.to(pl_module.device)
        try:
            self._macs = measure_macs(pl_module, example)
        except Exception as err:  # a model that cannot run the example: report, do not fail
            rank_zero_warn(f"AdaptivePruning: FLOPs not measured ({err})")
            self._macs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._macs is None:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            self._measure(pl_module, x[:1] if isinstance(x, torch.Tensor) else x)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        assert self.store is not None
        step = trainer.global_step
        if step != self._last_step:  # once per step, even with several optimizers
            self._last_step = step
            # gradient statistics are running means with a short memory: gather them only
            # in the `stats_window` steps before each mask update
            after_ramp = self.controller is not None
            shadows_active = self._shadows_active(step)
            if self.schedule.before_update(step, self.frequency, self.stats_window, after_ramp):
                weights = (
                    self.shadows.effective(self.store.params, self.store.pruned_float)
                    if shadows_active
                    else None
                )
                self.stats.observe_grads(self.store.param_list, weights)
            if shadows_active:
                group = optimizer.param_groups[0]
                adaptive = "betas" in group  # Adam-family: steps of about lr whatever the grad
                self.shadows.step(
                    self.store.params, self.store.pruned_float, float(group["lr"]), adaptive
                )
            paused = self.controller is not None and self.controller.paused
            self.schedule.tick(step, paused)
            if self._force_update or self.schedule.update_due(
                step, self.frequency, self.applied_goal, self.regrowth != "none"
            ):
                self._update_masks(trainer, step)
            elif self.applied_goal > 0 and (
                step % INERT_REFRESH_STEPS == 0 or step == self._refresh_at
            ):  # state the optimizer created after the last update, or decayed second moments
                reset_optimizer_state(trainer.optimizers, self.store.params, self.store.masks)
        self.store.mask_grads()

    def _shadows_active(self, step: int) -> bool:
        """DNS shadows train only while they can still be spliced back: once something is
        pruned, and after the ramp only if the controller may back off (regrow from them)."""
        if self.shadows is None or self.applied_goal <= 0:
            return False
        return step < self.schedule.end_step or self.controller is not None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        assert self.store is not None
        self.store.apply_to_weights()

    @torch.no_grad()
    def _update_masks(self, trainer: pl.Trainer, step: int) -> None:
        assert self.store is not None
        self._force_update = False
        goal = self.schedule.goal()
        new = self.updater.update(
            self.store, self.stats, self.shadows, goal, step, self.schedule.end_step
        )
        if trainer.world_size > 1:  # identical masks on every rank: rank 0 decides
            new = trainer.strategy.broadcast({n: m.cpu() for n, m in new.items()}, src=0)
        changed = {}
        for name, p in self.store.params.items():
            old, mask = self.store.masks[name], new[name].to(self.store.masks[name].device)
            newly_pruned, regrown = old & ~mask, ~old & mask
            if self.shadows is not None:
                self.shadows.remember(name, p.param, newly_pruned)
                p.param[regrown] = self.shadows.values[name][regrown]
            else:
                p.param[regrown] = 0.0
            changed[name] = newly_pruned | regrown
        self.store.set_masks(new)
        self.store.apply_to_weights()
        optimizers, params, masks = trainer.optimizers, self.store.params, self.store.masks
        if not reset_optimizer_state(optimizers, params, masks, changed):
            self._refresh_at = step + 1  # the optimizer creates its state at this step
        self.applied_goal = goal
        self._log(trainer, self._metrics())

    # ---- controller ------------------------------------------------------------------------

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.controller is None or trainer.sanity_checking or self.store is None:
            return
        if trainer.state.fn != "fit":
            return
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            raise RuntimeError(
                f"AdaptivePruning(monitor={self.monitor!r}): the monitored metric was never "
                f"logged. Log it with self.log({self.monitor!r}, ...) in validation, pass one of "
                f"the logged metrics {sorted(logs)}, or set monitor=None."
            )
        metric = float(logs[self.monitor].squeeze())
        if trainer.world_size > 1:
            metric = float(trainer.strategy.broadcast(metric, src=0))
        step = trainer.global_step
        decision = self.controller.observe(
            metric,
            step,
            pruning_started=self.applied_goal > 0,
            ramp_done=self.schedule.progress >= 1.0,
            sparsity=self.store.sparsity(),
        )
        self._apply_decision(decision, step)
        self._last_validation_step = step
        self._seen_validation = True
        self._log(trainer, {**self._metrics(), "pruning/event": float(EVENT_CODES[decision.kind])})

    def _apply_decision(self, decision: Decision, step: int) -> None:
        if decision.kind == "reference" and self.controller.reference_after_start:
            rank_zero_warn(
                "AdaptivePruning: pruning started before the first validation, so the reference "
                f"{self.monitor}={decision.metric:.4f} was measured on a partly pruned model; "
                "use start > 0 to measure it on the dense model."
            )
        if decision.kind == "backoff":
            self.schedule.retarget(decision.new_sparsity)
            self._force_update = True
        elif decision.kind == "raise":
            interval = max(self.frequency, step - self._last_validation_step)
            self.schedule.retarget(decision.new_sparsity, length=interval)

    # ---- reporting -------------------------------------------------------------------------

    def _metrics(self) -> dict[str, float]:
        return logged_metrics(self.summary(events=False))

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @property
    def target_sparsity(self) -> float:
        """The current target (lowered by back-offs, raised by "auto")."""
        return self.controller.target if self.controller is not None else self.schedule.final

    @property
    def ramp_progress(self) -> float:
        """Fraction of the sparsity ramp done (1 once it reached the target)."""
        return self.schedule.progress

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean keep-masks by parameter name (True = kept)."""
        return dict(self.store.masks) if self.store is not None else {}

    def summary(self, events: bool = True) -> dict[str, Any]:
        """Sparsity, target, nonzero/total params, FLOPs (sparse, dense), per-layer, events."""
        if self.store is None or self._module is None:
            raise RuntimeError("AdaptivePruning.summary() needs a model: call trainer.fit first")
        events = [dict(e) for e in self.controller.events] if events and self.controller else []
        return build_summary(self.store, self._module, self._macs, self.target_sparsity, events)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stats.detach()
        if self.controller is not None and not self._seen_validation:
            rank_zero_warn(
                f"AdaptivePruning: monitor={self.monitor!r} but no validation ran during fit, "
                "so the controller never acted (the ramp followed its schedule)."
            )
        if self.store is None:
            return
        self._log(trainer, self._metrics())
        if self.verbose and trainer.is_global_zero:
            shapes = {n: tuple(p.param.shape) for n, p in self.store.params.items()}
            render_summary(self.summary(), shapes)
