"""What the callback reads from the Trainer: how long the ramp may be, the batch size, and how
results get back from spawned workers.

The ramp's clock ticks once per training batch that steps an optimizer: one optimizer step in
automatic optimization (so gradient accumulation is counted), one batch in manual optimization
whatever the number of optimizers. That is the unit of `trainer.estimated_stepping_batches`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher


def steps_done(trainer: pl.Trainer) -> int:
    """Clock units already trained before this fit (a resumed run starts part way)."""
    if trainer.lightning_module.automatic_optimization:
        return trainer.global_step
    return trainer.fit_loop.epoch_loop.batch_progress.total.completed


def remaining_steps(trainer: pl.Trainer, total_steps: int | None) -> int:
    """Clock units left in this fit; a clear error when the Trainer cannot know its length."""
    if total_steps is not None:
        return max(1, total_steps - steps_done(trainer))
    estimated = trainer.estimated_stepping_batches
    if not isinstance(estimated, int | float) or not math.isfinite(estimated) or estimated <= 0:
        raise ValueError(
            "AdaptivePruning needs the length of training to place its sparsity ramp, and this "
            f"Trainer cannot tell it (max_epochs={trainer.max_epochs}, "
            f"max_steps={trainer.max_steps}; estimated_stepping_batches={estimated}: an "
            "IterableDataset without __len__ or max_epochs=-1). Pass "
            "AdaptivePruning(total_steps=N) with N optimizer steps, or set Trainer(max_steps=N)."
        )
    return max(1, int(estimated) - steps_done(trainer))


def batch_size(batch: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor (0 if none is found)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for value in batch:
            size = batch_size(value)
            if size:
                return size
    return 0


# Their update of a weight whose gradient and moments are zero is exactly zero (weight decay of a
# zero weight included): a pruned weight stays 0 without being re-zeroed after every step.
_optim = torch.optim
ZERO_PRESERVING = (
    _optim.SGD, _optim.Adam, _optim.AdamW, _optim.Adamax, _optim.NAdam, _optim.RAdam,
    _optim.RMSprop, _optim.Adagrad, _optim.Adadelta,
)  # fmt: skip


def zeros_stay_zero(optimizers: list[torch.optim.Optimizer]) -> bool:
    """True when every optimizer is one of the known zero-preserving ones (not a subclass,
    which may change `step`)."""
    return all(type(optimizer) in ZERO_PRESERVING for optimizer in optimizers)


def in_spawned_worker(trainer: pl.Trainer) -> bool:
    """True in a worker of `ddp_spawn` / `ddp_fork`: its hooks never run in the main process."""
    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def write_handoff(path: str, state: dict[str, Any]) -> None:
    """Rank 0 of a spawned run leaves masks and summary where the main process finds them."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_handoff(path: str) -> dict[str, Any] | None:
    """The state written by `write_handoff` (tensors and plain values only), or None."""
    if not os.path.exists(path):
        return None
    state = torch.load(path, weights_only=True)
    os.remove(path)
    return state
