"""What each matched weight is in this run, learnt from the first training forward: which one
produces the model's output, which are frozen, and how much of the model the masks cover."""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lightning_prune.pruning.masks import MaskStore
from lightning_prune.pruning.selection import PrunableParam, coverage
from lightning_prune.pruning.trace import ForwardTrace

LOW_COVERAGE = 0.5  # warn when the masks cover less than this fraction of the parameters


@dataclass
class Roles:
    """`kept`: the weights to prune when some were dropped (frozen), else None."""

    kept: list[PrunableParam] | None
    macs: dict[str, int]
    coverage: float


def learn_roles(
    model: nn.Module,
    candidates: list[PrunableParam],
    store: MaskStore,
    trace: ForwardTrace | None,
    prune_frozen: bool,
) -> Roles:
    """Flag the output layer (`trace` watched every covered module of the model, matched or
    not), leave frozen weights dense unless `prune_frozen`, measure coverage.

    Raises a ValueError (before any optimizer step) when every matched weight is frozen.
    """
    macs: dict[str, int] = {}
    if trace is not None:
        trace.remove()
        macs = trace.macs_per_example()
        outputs = trace.output_weights()
        if not outputs:
            rank_zero_warn(
                "AdaptivePruning: no covered module ran in the first training step; the last "
                "matched module is taken as the output layer."
            )
            outputs = {id(candidates[-1].param)}
        for p in candidates:
            p.is_output = id(p.param) in outputs
    current = list(store.params.values())
    kept = [p for p in current if prune_frozen or not p.frozen]
    if not kept:
        raise ValueError(
            "AdaptivePruning: every matched weight is frozen (requires_grad=False): "
            f"{[p.name for p in current][:10]}. Pass prune_frozen=True to prune them by "
            "magnitude, or include trainable layers."
        )
    covered, skipped = coverage(model, kept)
    if covered < LOW_COVERAGE:
        listed = ", ".join(f"{n} ({size:,}: {why})" for n, size, why in skipped[:5])
        rank_zero_warn(
            f"AdaptivePruning covers only {covered:.1%} of the model's parameters; not "
            f"covered: {listed}"
        )
    return Roles(kept if len(kept) != len(current) else None, macs, covered)
