"""Members' log-probabilities on one data split, collected once and reused.

Selection (agreement), weight fitting and evaluation all work on these stacked tensors,
so each member runs over a split exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class OutputSizeError(ValueError):
    """Members disagree on the number of classes, so they cannot be averaged."""


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise ValueError("expected (inputs, labels) batches from the data loader")
    return batch[0], batch[1]


def check_output_sizes(sizes: Sequence[int], names: Sequence[str]) -> None:
    """Raise OutputSizeError naming every member and its output size when they differ."""
    if len(set(sizes)) > 1:
        listing = ", ".join(f"{name}: {size}" for name, size in zip(names, sizes, strict=True))
        raise OutputSizeError(
            f"ensemble members have different output sizes ({listing}); "
            "all members must predict the same classes"
        )


@torch.no_grad()  # not inference_mode: weight fitting differentiates through the outputs
def collect_log_probs(
    models: Sequence[nn.Module], loader: Iterable, names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return log-probabilities [M, N, C] of every model and the labels [N] of the split."""
    names = list(names) if names is not None else [f"member {i}" for i in range(len(models))]
    for model in models:
        model.eval()
    outputs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    for batch in loader:
        x, y = _split_batch(batch)
        labels.append(y)
        for i, model in enumerate(models):
            outputs[i].append(F.log_softmax(model(x).float(), dim=-1))
    if not labels:
        raise ValueError("the data loader yielded no batches")
    sizes = [out[0].shape[-1] for out in outputs]
    check_output_sizes(sizes, names)
    return torch.stack([torch.cat(out) for out in outputs]), torch.cat(labels)


def accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of [..., N, C] predictions (one value per leading index)."""
    return (log_probs.argmax(-1) == labels).double().mean(dim=-1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of [..., N, C] predictions (one value per leading index)."""
    picked = log_probs.gather(-1, labels.expand(*log_probs.shape[:-1]).unsqueeze(-1))
    return -picked.squeeze(-1).double().mean(dim=-1)


def agreement(predictions: torch.Tensor) -> torch.Tensor:
    """Pairwise fraction of equal predicted labels, [M, M], from predictions [M, N]."""
    return (predictions.unsqueeze(0) == predictions.unsqueeze(1)).double().mean(dim=-1)
