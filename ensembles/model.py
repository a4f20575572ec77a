"""`WeightedEnsemble`: a weighted average of member classifiers, usable in `trainer.test`.

The ensemble outputs log-probabilities, so `argmax` is the prediction and
`F.nll_loss(output, y)` is the negative log-likelihood the weights were fitted to.
`fast()` builds an inference form whose cost follows the members' nonzero weights
(`ensembles.fast`); `use_fast()` makes `forward` run it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_prune.ensembles.fast import FastEnsemble, build_fast
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

COMBINES = ("prob", "logprob")


def check_combine(combine: str) -> str:
    """Return `combine` when it names a known rule; the error lists the allowed values."""
    if combine not in COMBINES:
        raise ValueError(f"ensemble.combine must be one of {COMBINES}, got {combine!r}")
    return combine


def combine_log_probs(member_log_probs: torch.Tensor, weights: torch.Tensor, combine: str):
    """Ensemble log-probabilities [N, C] from members' [M, N, C] and simplex weights [M].

    "prob" averages probabilities (a mixture, log-sum-exp for stability); "logprob"
    averages log-probabilities and renormalises (a weighted geometric mean).
    """
    w = weights.to(member_log_probs).view(-1, 1, 1)
    if combine == "prob":
        return torch.logsumexp(member_log_probs + torch.log(w.clamp_min(1e-30)), dim=0)
    return torch.log_softmax((member_log_probs * w).sum(dim=0), dim=-1)


def check_weights(weights: torch.Tensor | Sequence[float], members: int) -> torch.Tensor:
    """Weights as a float tensor on the simplex: one per member, >= 0, summing to 1."""
    w = torch.as_tensor(weights, dtype=torch.float32).detach().flatten().clone()
    if w.numel() != members:
        raise ValueError(f"ensemble weights: need one per member ({members}), got {w.numel()}")
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"ensemble weights must be finite, >= 0 and not all zero: {w.tolist()}")
    return w / w.sum()


class WeightedEnsemble(pl.LightningModule):
    """Weighted average of frozen member classifiers (each maps inputs to logits).

    Args:
        members: the member networks or LightningModules, all with the same output size.
        weights: one non-negative weight per member (normalised to sum to 1); None: uniform.
        combine: "prob" (average class probabilities) or "logprob" (average log-probabilities).
        num_classes: output size; inferred from the first forward pass when None.

    Logs `test_acc` and `test_loss` (NLL) in `trainer.test`; `predict_step` returns
    class probabilities.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: torch.Tensor | Sequence[float] | None = None,
        combine: str = "prob",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("WeightedEnsemble needs at least one member")
        self.members = nn.ModuleList(members)
        for member in self.members:
            member.eval()
            member.requires_grad_(False)
        self.combine = check_combine(combine)
        weights = torch.ones(len(members)) if weights is None else weights
        self.register_buffer("weights", check_weights(weights, len(members)))
        self.num_classes = num_classes
        self.test_accuracy: MulticlassAccuracy | None = None
        if num_classes is not None:
            self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    @override
    def train(self, mode: bool = True) -> WeightedEnsemble:
        """Members stay in eval mode: the ensemble is never trained."""
        super().train(mode)
        for member in self.members:
            member.eval()
        return self

    def fast(self, example_input: torch.Tensor | None = None, **options: Any) -> FastEnsemble:
        """A new inference-only module with this ensemble's outputs, built and measured now.

        `example_input` defaults to the first member's `example_input_array`; `options` go
        to `ensembles.fast.build_fast` (batch_sizes, layout, sparse, compact, min_run_time).
        Rebuild it after changing members or weights.
        """
        return build_fast(list(self.members), self.weights, self.combine, example_input, **options)

    def use_fast(
        self, example_input: torch.Tensor | None = None, **options: Any
    ) -> WeightedEnsemble:
        """Build `fast()` and run `forward` through it from now on; returns self."""
        fast = self.fast(example_input, **options)
        # not a submodule: state_dict, .to() and pickles keep the plain ensemble only
        self.__dict__["_fast"] = (fast, self.weights, self.weights._version, self.weights.device)
        return self

    def use_plain(self) -> WeightedEnsemble:
        """Run `forward` member by member again; returns self."""
        self.__dict__.pop("_fast", None)
        return self

    @property
    def fast_form(self) -> FastEnsemble | None:
        """The fast form `forward` runs through (`use_fast`), or None."""
        attached = self.__dict__.get("_fast")
        return attached[0] if attached else None

    @override
    def __getstate__(self) -> dict[str, Any]:
        """Pickles (mlflow.pytorch) hold the plain ensemble; `use_fast` rebuilds after loading."""
        state = super().__getstate__()
        state.pop("_fast", None)
        return state

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble log-probabilities: through the fast form when `use_fast` set one."""
        attached = self.__dict__.get("_fast")
        if attached is not None:
            fast, weights, version, device = attached
            if x.device != device:
                return self.forward_plain(x)  # the fast form stays where it was built
            if weights is self.weights and weights._version == version:
                return fast(x)
            warnings.warn("ensemble weights changed: back to the plain forward", stacklevel=2)
            self.use_plain()
        return self.forward_plain(x)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Member by member, dense as trained; members with zero weight are not run at all."""
        active = [i for i, w in enumerate(self.weights.tolist()) if w > 0]
        outputs = [F.log_softmax(self.members[i](x).float(), dim=-1) for i in active]
        return combine_log_probs(torch.stack(outputs), self.weights[active], self.combine)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        log_probs = self(x)
        if self.test_accuracy is None:
            self.test_accuracy = MulticlassAccuracy(log_probs.shape[-1], average="micro")
            self.test_accuracy.to(log_probs.device)
        self.test_accuracy(log_probs, y)
        self.log("test_loss", F.nll_loss(log_probs, y), on_epoch=True)
        self.log("test_acc", self.test_accuracy, on_epoch=True)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).exp()

    @override
    def configure_optimizers(self) -> None:
        """Nothing to train: weights are fitted on validation data by `fit_weights`."""
        return None
