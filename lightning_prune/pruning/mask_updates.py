"""The callback's half that prunes, once per ramp step: gradient statistics in the window
before an update, DNS shadow steps, the ramp's clock (and its wait for a dense reference),
and the mask update itself with its optimizer-state reset."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_prune.pruning.masks import reset_optimizer_state

# Adam's beta2 = 0.999 decays an inert second moment to subnormal floats in about 87k steps.
INERT_REFRESH_STEPS = 10_000
# Statistics are gathered on every STATS_STRIDE-th step of the window before an update: the
# same span of training at a fraction of the cost (RunningStats keeps its memory in steps).
STATS_STRIDE = 2


class MaskUpdates(pl.Callback):
    """Mixin of AdaptivePruning: what happens at each ramp step."""

    def _ramp_step(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Statistics, shadow weights, the ramp's clock and (when due) a mask update."""
        # gradient statistics are running means with a short memory: gather them only
        # in the `stats_window` steps before each mask update
        after_ramp = self.controller is not None
        shadows_active = self._shadows_active(step)
        if (
            self.schedule.before_update(step, self.frequency, self.stats_window, after_ramp)
            and self.schedule.steps_to_update(step, self.frequency) % STATS_STRIDE == 0
        ):
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
        if self.controller is not None and self.controller.reference is not None:
            self._hold_until = -1
        if self.schedule.start_step <= step < self._hold_until and not self.schedule.started:
            self.schedule.delay_start(step + 1)
        paused = self.controller is not None and self.controller.paused
        self.schedule.tick(step, paused)
        if self._force_update or self.schedule.update_due(
            step, self.frequency, self.applied_goal, self.regrowth.swaps
        ):
            self._update_masks(trainer, step)
        elif self.applied_goal > 0 and (
            step % INERT_REFRESH_STEPS == 0 or step == self._refresh_at
        ):  # state the optimizer created after the last update, or decayed second moments
            reset_optimizer_state(trainer.optimizers, self.store.params, self.store.masks)

    def _shadows_active(self, step: int) -> bool:
        """DNS shadows train only while they can still be spliced back: once something is
        pruned, and after the ramp only if the controller may back off (regrow from them)."""
        if self.shadows is None or self.applied_goal <= 0:
            return False
        return step < self.schedule.end_step or self.controller is not None

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
        self._log(trainer.lightning_module, self._metrics(), now=True)
