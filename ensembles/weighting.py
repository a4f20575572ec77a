"""Ensemble weights on the simplex, fitted from members' validation log-probabilities only.

Every rule here takes precomputed validation outputs [M, N, C] and labels [N]; none of
them sees a data loader, so test data cannot reach weight fitting by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning_prune.ensembles.model import check_combine, combine_log_probs

WEIGHTINGS = ("uniform", "score", "optimized", "greedy")
MIN_WEIGHT = 1e-3  # smaller weights change no prediction but cost a whole member's inference


def check_weighting(weighting: str) -> str:
    """Return `weighting` when known; the error lists the allowed values."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"ensemble.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting


def ensemble_nll(log_probs: torch.Tensor, labels: torch.Tensor, weights, combine: str) -> float:
    """Validation NLL of the weighted ensemble."""
    return float(F.nll_loss(combine_log_probs(log_probs, weights, combine), labels))


def uniform_weights(members: int) -> torch.Tensor:
    """Equal weights: the baseline every other rule must beat."""
    return torch.full((members,), 1.0 / members)


def score_weights(scores: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Softmax of validation scores / temperature: small T favours the best, large T is uniform.

    Validation accuracies of good members differ by fractions of a point, hence T ~ 0.01.
    """
    if not temperature > 0:
        raise ValueError(f"ensemble.temperature must be > 0, got {temperature!r}")
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float64) / temperature, 0).float()


def optimized_weights(
    log_probs: torch.Tensor, labels: torch.Tensor, combine: str = "prob", max_iter: int = 100
) -> torch.Tensor:
    """Minimise validation NLL over the simplex, weights = softmax(z), with L-BFGS.

    Starts from uniform (z = 0), so the result is never worse on validation than uniform.
    """
    check_combine(combine)
    log_probs, labels = log_probs.detach().double(), labels.detach()
    z = torch.zeros(log_probs.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.nll_loss(combine_log_probs(log_probs, torch.softmax(z, 0), combine), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weights = torch.softmax(z.detach(), 0)
    if ensemble_nll(log_probs, labels, weights, combine) > ensemble_nll(
        log_probs, labels, uniform_weights(len(weights)).double(), combine
    ):
        return uniform_weights(len(weights))
    return weights.float()


def greedy_weights(
    log_probs: torch.Tensor, labels: torch.Tensor, combine: str = "prob", rounds: int = 25
) -> torch.Tensor:
    """Caruana et al. (2004) ensemble selection with replacement, by validation NLL.

    Each round adds (again, possibly) the member that most lowers the ensemble's NLL;
    weights are the selection counts. Starts from the single best member.
    """
    check_combine(combine)
    if rounds < 1:
        raise ValueError(f"ensemble.greedy_rounds must be >= 1, got {rounds!r}")
    members = log_probs.shape[0]
    counts = torch.zeros(members, dtype=torch.float64)
    for _ in range(rounds):
        losses = []
        for m in range(members):
            trial = counts.clone()
            trial[m] += 1
            losses.append(ensemble_nll(log_probs, labels, trial / trial.sum(), combine))
        counts[int(torch.tensor(losses).argmin())] += 1
    return (counts / counts.sum()).float()


def drop_negligible(weights: torch.Tensor, min_weight: float = MIN_WEIGHT) -> torch.Tensor:
    """Zero weights below `min_weight` (renormalised), so those members are never run."""
    kept = torch.where(weights >= min_weight, weights, torch.zeros_like(weights))
    return kept / kept.sum() if float(kept.sum()) > 0 else weights


def fit_weights(
    weighting: str,
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    combine: str = "prob",
    temperature: float = 0.01,
    greedy_rounds: int = 25,
) -> torch.Tensor:
    """Dispatch to one rule; `log_probs` [M, N, C] and `labels` [N] are validation data."""
    check_weighting(weighting)
    if log_probs.ndim != 3 or log_probs.shape[1] != labels.shape[0]:
        raise ValueError(f"expected log_probs [M, N, C] and labels [N], got "
                         f"{tuple(log_probs.shape)} and {tuple(labels.shape)}")  # fmt: skip
    if weighting == "uniform":
        return uniform_weights(log_probs.shape[0])
    if weighting == "score":
        accuracy = (log_probs.argmax(-1) == labels).double().mean(dim=1)
        return drop_negligible(score_weights(accuracy, temperature))
    if weighting == "optimized":
        return drop_negligible(optimized_weights(log_probs, labels, combine))
    return greedy_weights(log_probs, labels, combine, greedy_rounds)
