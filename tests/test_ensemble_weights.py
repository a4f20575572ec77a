"""Weight rules and the WeightedEnsemble module, on synthetic log-probabilities (no training)."""

from __future__ import annotations

import pytest
import torch
from lightning_prune.ensembles import WEIGHTINGS, WeightedEnsemble, combine_log_probs, fit_weights
from lightning_prune.ensembles.weighting import ensemble_nll, uniform_weights


def _members(seed: int = 0, members: int = 4, n: int = 300, classes: int = 5):
    """Noisy members of different quality: member i is right with probability ~0.8 - 0.15 i."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(members, n, classes, generator=g)
    for i in range(members):
        right = torch.rand(n, generator=g) < 0.8 - 0.15 * i
        logits[i, right, labels[right]] += 3.0
    return torch.log_softmax(logits, -1), labels


@pytest.mark.parametrize("combine", ["prob", "logprob"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_rule_returns_simplex_weights(weighting, combine):
    log_probs, labels = _members()
    w = fit_weights(weighting, log_probs, labels, combine=combine)
    assert w.shape == (4,)
    assert (w >= 0).all()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("combine", ["prob", "logprob"])
def test_optimized_and_greedy_beat_uniform_on_validation_nll(combine):
    log_probs, labels = _members()
    uniform = ensemble_nll(log_probs, labels, uniform_weights(4), combine)
    optimized = ensemble_nll(
        log_probs, labels, fit_weights("optimized", log_probs, labels, combine=combine), combine
    )
    greedy_w = fit_weights("greedy", log_probs, labels, combine=combine, greedy_rounds=20)
    assert optimized < uniform
    assert ensemble_nll(log_probs, labels, greedy_w, combine) < uniform
    # greedy weights are selection counts out of 20 rounds; the best member is chosen most
    assert torch.allclose(greedy_w * 20, (greedy_w * 20).round(), atol=1e-4)
    assert int(greedy_w.argmax()) == 0


def test_score_weights_follow_validation_accuracy_and_temperature():
    log_probs, labels = _members()
    sharp = fit_weights("score", log_probs, labels, temperature=0.001)
    flat = fit_weights("score", log_probs, labels, temperature=100.0)
    assert int(sharp.argmax()) == 0 and float(sharp[0]) > 0.99
    assert torch.allclose(flat, uniform_weights(4), atol=1e-3)
    assert (sharp[:-1] >= sharp[1:]).all()  # better members never weigh less


def test_bad_rule_and_temperature_are_named():
    log_probs, labels = _members()
    with pytest.raises(ValueError, match="ensemble.weighting must be one of"):
        fit_weights("average", log_probs, labels)
    with pytest.raises(ValueError, match="ensemble.temperature"):
        fit_weights("score", log_probs, labels, temperature=0)
    with pytest.raises(ValueError, match="ensemble.combine must be one of"):
        fit_weights("optimized", log_probs, labels, combine="max")


@pytest.mark.parametrize("combine", ["prob", "logprob"])
def test_combination_is_normalised_and_one_hot_weight_returns_that_member(combine):
    log_probs, _ = _members()
    combined = combine_log_probs(log_probs, torch.tensor([0.2, 0.3, 0.1, 0.4]), combine)
    assert torch.allclose(combined.exp().sum(-1), torch.ones(300), atol=1e-5)
    alone = combine_log_probs(log_probs, torch.tensor([0.0, 1.0, 0.0, 0.0]), combine)
    assert torch.allclose(alone, log_probs[1], atol=1e-5)


def test_prob_average_is_the_mixture_of_probabilities():
    log_probs, _ = _members()
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = (log_probs.exp() * w.view(-1, 1, 1)).sum(0)
    assert torch.allclose(combine_log_probs(log_probs, w, "prob").exp(), expected, atol=1e-6)


def test_weighted_ensemble_module_checks_weights_and_keeps_members_frozen():
    members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(2)]
    ensemble = WeightedEnsemble(members, [1.0, 3.0])
    assert ensemble.weights.tolist() == pytest.approx([0.25, 0.75])
    ensemble.train()
    assert not any(m.training for m in ensemble.members)
    assert not any(p.requires_grad for p in ensemble.parameters())
    out = ensemble(torch.randn(5, 4))
    assert out.shape == (5, 3) and torch.allclose(out.exp().sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="one per member"):
        WeightedEnsemble(members, [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        WeightedEnsemble(members, [1.0, -0.5])
    with pytest.raises(ValueError, match="ensemble.combine"):
        WeightedEnsemble(members, combine="vote")
    with pytest.raises(ValueError, match="at least one member"):
        WeightedEnsemble([])


class _Refuses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a zero-weight member was run")


def test_negligible_weights_are_dropped_and_their_members_never_run():
    log_probs, labels = _members()
    sharp = fit_weights("score", log_probs, labels, temperature=0.001)
    assert float(sharp[0]) == 1.0 and sharp[1:].eq(0).all()  # below 1e-3: exactly zero
    members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), _Refuses()]
    ensemble = WeightedEnsemble(members, [1.0, 0.0])
    x = torch.randn(5, 4)
    assert torch.allclose(ensemble(x), torch.log_softmax(members[0](x), -1), atol=1e-6)
