"""Importance criteria: small pluggable classes that score every weight (higher = keep).

Each criterion has one interface, `criterion(param, weight, stats) -> Tensor` shaped like the
weight, plus `requires` (the running statistics it needs). Register your own with
`register_criterion("name")`. Scores are non-negative so pruned positions can be ranked last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lightning_prune.pruning.running_stats import RunningStats
from lightning_prune.pruning.selection import PrunableParam

CRITERIA: dict[str, type[Importance]] = {}


def register_criterion(name: str) -> Callable[[type[Importance]], type[Importance]]:
    """Class decorator: make a criterion available as `AdaptivePruning(criterion=name)`."""

    def decorate(cls: type[Importance]) -> type[Importance]:
        if not (isinstance(cls, type) and issubclass(cls, Importance)):
            raise TypeError(f"register_criterion({name!r}) expects an Importance subclass")
        CRITERIA[name] = cls
        return cls

    return decorate


def build_criterion(name: str, kwargs: Mapping[str, Any] | None = None) -> Importance:
    """Instantiate a registered criterion; errors name `criterion` and the allowed values."""
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {name!r}")
    try:
        return CRITERIA[name](**dict(kwargs or {}))
    except TypeError as err:
        given = dict(kwargs or {})
        raise ValueError(f"criterion_kwargs {given} invalid for {name!r}: {err}") from err


def _per_output(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-output-unit vector over that unit's weights."""
    return values.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


class Importance:
    """Base class: score each weight of one parameter."""

    requires: frozenset[str] = frozenset()

    def __call__(
        self, param: PrunableParam, weight: torch.Tensor, stats: RunningStats
    ) -> torch.Tensor:
        raise NotImplementedError

    def score_all(
        self, params: Sequence[PrunableParam], weights: Mapping[str, torch.Tensor], stats
    ) -> dict[str, torch.Tensor]:
        """Scores for every parameter; override when scores must be normalised jointly."""
        return {p.name: self(p, weights[p.name], stats).float() for p in params}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


@register_criterion("magnitude")
class MagnitudeImportance(Importance):
    """|w|: the classic (Han et al. 2015); cheap, no statistics."""

    def __call__(self, param, weight, stats):
        return weight.abs()


@register_criterion("gradient")
class GradientImportance(Importance):
    """Running mean of |g|: weights the loss is most sensitive to."""

    requires = frozenset({"grad"})

    def __call__(self, param, weight, stats):
        grad = stats.grad.get(param.name)
        return torch.zeros_like(weight) if grad is None else grad


@register_criterion("taylor")
class TaylorImportance(Importance):
    """Running mean of |w * g| (Molchanov et al.): first-order loss change of removing w."""

    requires = frozenset({"taylor"})

    def __call__(self, param, weight, stats):
        taylor = stats.taylor.get(param.name)
        return torch.zeros_like(weight) if taylor is None else taylor


@register_criterion("activation")
class ActivationImportance(Importance):
    """Per output neuron/channel: mean |activation| ("mean") or 1 - APoZ ("apoz").

    With `weighted=True` (default) the unit score is multiplied by |w|, so unstructured pruning
    can still rank weights inside a unit; structured pruning sees the unit's total.
    """

    requires = frozenset({"activation"})

    def __init__(self, statistic: str = "mean", weighted: bool = True) -> None:
        if statistic not in ("mean", "apoz"):
            raise ValueError(
                f"criterion_kwargs.statistic must be 'mean' or 'apoz', got {statistic!r}"
            )
        self.statistic, self.weighted = statistic, weighted

    def __call__(self, param, weight, stats):
        store = stats.act_mean if self.statistic == "mean" else stats.act_positive
        unit = store.get(param.name)
        if unit is None:
            unit = torch.ones(weight.shape[0], device=weight.device)
        score = _per_output(unit.to(weight.device), weight)
        return score * weight.abs() if self.weighted else score.clone()


@register_criterion("random")
class RandomImportance(Importance):
    """Uniform random scores: the control every criterion should beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, param, weight, stats):
        return torch.rand(weight.shape, generator=self.generator).to(weight.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


@register_criterion("hybrid")
class HybridImportance(Importance):
    """Weighted sum of other criteria, each normalised by its mean over all pruned weights.

    Example: `criterion_kwargs={"weights": {"magnitude": 0.5, "taylor": 0.5}}`.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        weights = dict(weights or {"magnitude": 0.5, "taylor": 0.5})
        if not weights or any(name == "hybrid" for name in weights):
            raise ValueError("criterion_kwargs.weights must name other criteria, e.g. magnitude")
        self.parts = {name: (build_criterion(name), float(w)) for name, w in weights.items()}
        self.requires = frozenset().union(*(c.requires for c, _ in self.parts.values()))

    def __call__(self, param, weight, stats):
        raise TypeError("HybridImportance scores all parameters at once; use score_all")

    def score_all(self, params, weights, stats):
        total = {p.name: torch.zeros_like(weights[p.name], dtype=torch.float32) for p in params}
        for criterion, factor in self.parts.values():
            scores = criterion.score_all(params, weights, stats)
            count = sum(s.numel() for s in scores.values())
            mean = float(sum(s.sum() for s in scores.values())) / max(1, count)
            for name, score in scores.items():
                total[name] += factor * score / (mean if mean > 0 else 1.0)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {name: c.state_dict() for name, (c, _) in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, (criterion, _) in self.parts.items():
            criterion.load_state_dict(state.get(name, {}))
