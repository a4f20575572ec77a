"""AdaptivePruning: a Lightning callback that prunes while training and listens to the metric.

Hot path (every optimizer step): mask the gradients in `on_before_optimizer_step` (after every
hook that may write them) and re-zero the weights in `on_train_batch_end` where the optimizer
could move a zero (Lightning has no hook after `optimizer.step`), each one fused call over all
layers. Scoring, allocation and regrowth run only every `frequency` steps; gradient statistics
only in the window before each of those updates.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.types import STEP_OUTPUT
from torch import nn
from typing_extensions import override

from lightning_prune.pruning.averaging import AveragedMasks
from lightning_prune.pruning.controller import Controller
from lightning_prune.pruning.criteria import Importance, build_criterion
from lightning_prune.pruning.feedback import MetricFeedback
from lightning_prune.pruning.granularity import build_granularity
from lightning_prune.pruning.mask_updates import STATS_STRIDE, MaskUpdates
from lightning_prune.pruning.masks import MaskStore
from lightning_prune.pruning.options import check_options, check_patterns
from lightning_prune.pruning.persistence import PruningState
from lightning_prune.pruning.regrowth import RegrowthMode, Shadows
from lightning_prune.pruning.reporting import PruningReport
from lightning_prune.pruning.roles import learn_roles
from lightning_prune.pruning.running_stats import RunningStats
from lightning_prune.pruning.schedules import SparsitySchedule
from lightning_prune.pruning.selection import PrunableParam, check_no_overlap, select_params
from lightning_prune.pruning.stats import render_summary
from lightning_prune.pruning.trace import ForwardTrace
from lightning_prune.pruning.trainer_support import (
    batch_size,
    in_spawned_worker,
    remaining_steps,
    write_handoff,
    zeros_stay_zero,
)
from lightning_prune.pruning.updater import MaskUpdater


class AdaptivePruning(
    MaskUpdates, MetricFeedback, PruningReport, PruningState, AveragedMasks, pl.Callback
):
    """Prune the weights of a model during training, adapting to the validation metric.

    Covers Linear, Conv1d/2d/3d, ConvTranspose*, MultiheadAttention, RNN/LSTM/GRU and, opt-in,
    Embedding weights (see `selection`); tied weights share one mask.

    Args:
        target_sparsity: final fraction of pruned weights in [0, 1), or "auto" (the controller
            raises it while `monitor` stays within `tolerance`, up to `max_sparsity`).
        max_sparsity: ceiling for "auto".
        criterion: importance score: "hybrid" (|w| and running |w*g|, each normalised by its
            mean), "magnitude", "gradient", "taylor", "activation", "random", any name added
            with `register_criterion`, or an `Importance` instance.
        criterion_kwargs: keyword arguments of the criterion, e.g. {"statistic": "apoz"}.
        granularity: "unstructured" (weights), "structured" (output neurons/channels), "n:m",
            or "heads" (whole attention heads; the target then counts attention weights only).
        nm: the N:M pattern for granularity "n:m", e.g. "2:4" (target becomes 1 - N/M).
        attention_heads: for granularity "heads" on attention written as separate Linears:
            module-name globs and the head count, e.g. {"q": "*.q_proj", "k": "*.k_proj",
            "v": "*.v_proj", "out": "*.o_proj", "num_heads": 4}; nn.MultiheadAttention needs none.
        allocation: "global" ranking, "layerwise" uniform, or "lamp" (Lee et al. 2021).
        min_density: fraction of weights every layer keeps, e.g. 0.005.
        output_min_density: the same for the output layer (the one that ran last in the first
            training forward; structured pruning keeps it whole).
        include: module-name globs to prune, e.g. ["net.*"]; default every covered module.
        exclude: module-name globs to leave dense, e.g. ["net.0"].
        schedule: "cubic" (Zhu & Gupta 2017), "linear" or "oneshot".
        start: fraction of the optimizer steps at which pruning starts, e.g. 0.1.
        end: fraction at which the target is reached; the rest of training fine-tunes.
        frequency: optimizer steps between mask updates.
        total_steps: optimizer steps of the whole training, for Trainers that cannot tell it
            (`max_epochs=-1`, an IterableDataset without `__len__`); default: the Trainer's.
        regrowth: "none", "dns" (shadow weights spliced back) or "rigl" (dense-gradient growth).
        regrow_fraction: fraction of kept weights swapped per update (cosine-decayed to `end`).
        monitor: logged validation metric for the controller, e.g. "val_acc"; None disables it.
        mode: "max" if higher `monitor` is better, "min" otherwise.
        tolerance: allowed absolute worsening of `monitor` from the pre-pruning reference.
        patience: validations outside tolerance (ramp paused) before backing off.
        backoff_step: sparsity given back by one back-off (best pruned weights regrow).
        auto_initial: first target of target_sparsity="auto".
        raise_factor: one "auto" raise multiplies the remaining density by this.
        prune_frozen: also prune weights with `requires_grad=False` (by magnitude); by default
            frozen weights (a frozen backbone) stay dense.
        embeddings: also prune `nn.Embedding` weights.
        verbose: print the per-layer table and the decisions at the end of fit.

    Example::

        trainer = pl.Trainer(callbacks=[AdaptivePruning(target_sparsity=0.95, monitor="val_acc")])
    """

    def __init__(
        self,
        target_sparsity: float | Literal["auto"] = 0.9,
        max_sparsity: float = 0.99,
        criterion: str | Importance = "hybrid",
        criterion_kwargs: dict[str, Any] | None = None,
        granularity: str = "unstructured",
        nm: str = "2:4",
        attention_heads: dict[str, Any] | None = None,
        allocation: str = "global",
        min_density: float = 0.005,
        output_min_density: float = 0.1,
        include: tuple[str, ...] | list[str] | str = ("*",),
        exclude: tuple[str, ...] | list[str] | str = (),
        schedule: str = "cubic",
        start: float = 0.1,
        end: float = 0.8,
        frequency: int = 25,
        total_steps: int | None = None,
        regrowth: str = "none",
        regrow_fraction: float = 0.1,
        monitor: str | None = "val_acc",
        mode: str = "max",
        tolerance: float = 0.01,
        patience: int = 2,
        backoff_step: float = 0.02,
        auto_initial: float = 0.5,
        raise_factor: float = 0.5,
        prune_frozen: bool = False,
        embeddings: bool = False,
        verbose: bool = True,
    ) -> None:
        options = dict(locals())
        options.pop("self")
        options.pop("__class__", None)
        check_options(options)
        self.options = options
        self.include = check_patterns("include", include)
        self.exclude = check_patterns("exclude", exclude)
        self.granularity = build_granularity(granularity, nm, attention_heads)
        if self.granularity.fixed_sparsity is not None:
            target = self.granularity.fixed_sparsity
        else:
            target = auto_initial if target_sparsity == "auto" else float(target_sparsity)
        self.target = target
        self.frequency, self.monitor, self.verbose = frequency, monitor, verbose
        self.regrowth, self.total_steps = RegrowthMode(regrowth), total_steps
        self.prune_frozen, self.embeddings = prune_frozen, embeddings
        # rank 0 of a ddp_spawn run leaves its result here for the main process
        self._handoff_path = os.path.join(
            tempfile.gettempdir(), f"lightning_prune_{uuid.uuid4().hex}.pt"
        )
        self._handoff: dict[str, Any] | None = None
        self._new_run()

    def _new_run(self) -> None:
        """Fresh per-model state: a callback reused for another model starts from scratch."""
        o = self.options
        criterion = o["criterion"]
        self.criterion = (
            criterion
            if isinstance(criterion, Importance)
            else build_criterion(criterion, o["criterion_kwargs"])
        )
        self.schedule = SparsitySchedule(o["schedule"], o["start"], o["end"])
        self.controller = (
            None
            if self.monitor is None
            else Controller(
                o["mode"], o["tolerance"], o["patience"], o["backoff_step"], self.target,
                auto=o["target_sparsity"] == "auto", max_sparsity=o["max_sparsity"],
                raise_factor=o["raise_factor"],
            )
        )  # fmt: skip
        self.updater = MaskUpdater(
            self.criterion, self.granularity, o["allocation"], o["min_density"],
            o["output_min_density"], self.regrowth, o["regrow_fraction"],
        )  # fmt: skip
        self.store: MaskStore | None = None
        self.stats = RunningStats(self.criterion.requires, stride=STATS_STRIDE)
        # at most half the steps between mask updates pay for gathering statistics
        self.stats_window = min(self.stats.window, max(1, self.frequency // 2))
        self.shadows: Shadows | None = None
        self.applied_goal = 0.0
        self._module: pl.LightningModule | None = None
        self._candidates: list[PrunableParam] = []
        self._trace: ForwardTrace | None = None
        self._macs: dict[str, int] = {}
        self._coverage = 1.0
        self._roles_known = False
        self._force_update = False
        self._clock = 0  # ramp steps done (see trainer_support for the unit)
        self._batch_open = False
        self._rezero_each_step = True  # unless every optimizer keeps zero weights at zero
        self._hold_until = -1  # until this ramp step the start may wait for a dense reference
        self._refresh_at = -1
        self._last_validation_clock = 0
        self._ramp_placed = False
        self._pending_state: dict[str, Any] | None = None
        self._seen_validation = False
        self._queued: dict[str, float] = {}  # metrics waiting for a hook that allows logging
        self._state_key: str | None = None

    @property
    def state_key(self) -> str:
        """Unique per configuration, so several instances can share one Trainer; built once,
        since Lightning asks for it at every hook call (its profiler names the hooks by it)."""
        if self._state_key is None:
            o = self.options
            self._state_key = self._generate_state_key(
                target_sparsity=o["target_sparsity"], granularity=o["granularity"],
                include=list(self.include), exclude=list(self.exclude),
            )  # fmt: skip
        return self._state_key

    # ---- setup and state -------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A new model starts a new run; its weights are selected once it is fully built."""
        if self._module is not None and self._module is not pl_module:
            self._new_run()
        self._module = pl_module

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._select(trainer)

    def _select(self, trainer: pl.Trainer) -> None:
        """Select the weights (after `configure_model`) and create all-ones masks; raises if
        nothing matches or the granularity does not fit a layer."""
        if self.store is not None:
            return
        params = self.check_model(self._module)
        others = [c for c in trainer.callbacks if isinstance(c, AdaptivePruning) and c is not self]
        check_no_overlap(params, [c.store.param_list for c in others if c.store is not None])
        self._candidates = params
        self._build_store(params)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def check_model(self, model: nn.Module) -> list[PrunableParam]:
        """The weights `fit` will select on `model`, checked as `fit` checks them at its start
        (include/exclude match, the granularity fits each layer): ValueError otherwise."""
        params = select_params(model, self.include, self.exclude, self.embeddings)
        if not self.granularity.needs_output_layer:
            self.granularity.check(params)
        return params

    def _build_store(self, params: list[PrunableParam]) -> None:
        self.store = MaskStore(params)
        # weights the granularity never prunes (heads: all but attention) leave the sparsity
        self.store.dense = frozenset(self.granularity.dense_names(self.store.params))
        self.shadows = Shadows(params) if self.regrowth.shadows else None

    # ---- training hooks --------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Place the ramp (after any batch-size or learning-rate finder changed the run)."""
        self._select(trainer)
        if not self._ramp_placed:
            remaining = remaining_steps(trainer, self.total_steps)
            self.schedule.bind(remaining, self.target)
            self._clock = 0
            self._ramp_placed = True
            # the controller's reference should come from the dense model: when pruning would
            # start before the first validation, it waits for it (keeping a quarter of the ramp
            # at least); a resumed run keeps the wait it saved (see `persistence`)
            self._hold_until = -1
            if self.controller is not None and trainer.enable_validation and not self.applied_goal:
                start, end = self.schedule.start_step, self.schedule.end_step
                self._hold_until = end - max(1, (end - start) // 4)
            if trainer.global_step > 0 and remaining < 2 * self.frequency:
                rank_zero_warn(
                    f"AdaptivePruning: only {remaining} optimizer steps remain in this resumed "
                    f"run (frequency={self.frequency}); the target {self.target:.2%} is reached "
                    "at once, with little fine-tuning. Raise max_epochs to prune gradually."
                )
        device = next(iter(self.store.params.values())).param.device
        self.store.to(device)
        if self.shadows is not None:
            self.shadows.values = {n: v.to(device) for n, v in self.shadows.values.items()}
        self.stats.attach(list(self.store.params.values()))
        self.store.apply_to_weights()
        self._rezero_each_step = not zeros_stay_zero(trainer.optimizers)
        self._log(pl_module, self._metrics(), now=False)  # monitors find them from the start
        if not self._roles_known and self._trace is None:
            # every covered module, matched or not: the output layer may be left out
            every = select_params(self._module, ("*",), (), embeddings=True)
            self._trace = ForwardTrace(every, root=self._module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_open = True
        if self._trace is not None:
            self._trace.samples += batch_size(batch)

    def _learn_roles(self) -> None:
        """After the first training forward: the output layer, frozen weights, coverage."""
        assert self._module is not None and self.store is not None
        trace, self._trace = self._trace, None
        self._roles_known = True
        roles = learn_roles(self._module, self._candidates, self.store, trace, self.prune_frozen)
        self._macs, self._coverage = roles.macs or self._macs, roles.coverage
        if roles.kept is not None and self.applied_goal == 0:
            self._build_store(roles.kept)
            self.stats.attach(roles.kept)
        if self.granularity.needs_output_layer:
            self.granularity.check(list(self.store.params.values()))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.store is None or not self._ramp_placed:  # inside a Tuner's trial run
            return
        if not self._roles_known:
            self._learn_roles()
        if self._batch_open:  # once per ramp step, even with several optimizers
            self._batch_open = False
            self._ramp_step(trainer, optimizer, self._clock)
            self._clock += 1
        self.store.mask_grads()

    def _tick_without_step(self, trainer: pl.Trainer) -> None:
        """A manual-optimization batch that stepped no optimizer (e.g. it accumulates) is still
        a unit of the ramp's clock, as in `estimated_stepping_batches`; the gradients it leaves
        are masked at the next step."""
        self._batch_open = False
        if self.store is None or not trainer.optimizers:
            return
        if not self._roles_known:
            self._learn_roles()
        self._ramp_step(trainer, trainer.optimizers[0], self._clock)
        self._clock += 1

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: STEP_OUTPUT,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.store is not None and self._rezero_each_step:
            self.store.apply_to_weights()
        if self._batch_open and self._ramp_placed and not pl_module.automatic_optimization:
            self._tick_without_step(trainer)
        if self._queued:  # the controller's last decision (`log` is allowed here)
            self._log(pl_module, {}, now=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stats.detach()
        if self.controller is not None and not self._seen_validation:
            rank_zero_warn(
                f"AdaptivePruning: monitor={self.monitor!r} but no validation ran during fit, "
                "so the controller never acted (the ramp followed its schedule)."
            )
        if self.store is None:
            return
        self.store.apply_to_weights()  # after callbacks that replace weights (SWA)
        self._warn_left_dense(trainer)
        self._queued = {}
        for logger in trainer.loggers:
            logger.log_metrics(self._metrics(), step=trainer.global_step)
        if trainer.is_global_zero and in_spawned_worker(trainer):
            masks = {n: m.cpu() for n, m in self.store.masks.items()}
            write_handoff(self._handoff_path, {"masks": masks, "summary": self.summary()})
        if self.verbose and trainer.is_global_zero:
            shapes = {n: tuple(p.param.shape) for n, p in self.store.params.items()}
            render_summary(self.summary(), shapes, _live_bar_console(trainer))

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A fit that raises skips `teardown`: the forward hooks must not outlive it."""
        self.teardown(trainer, pl_module, "fit")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._trace is not None:
            self._trace.remove()
            self._trace = None
        self.stats.detach()


def _live_bar_console(trainer: pl.Trainer) -> Any:
    """The console of a RichProgressBar still on screen at fit end (it stops in teardown);
    printing through it puts the table above the bar instead of inside its display."""
    progress = getattr(trainer.progress_bar_callback, "progress", None)
    return getattr(progress, "console", None) if getattr(progress, "live", None) else None
