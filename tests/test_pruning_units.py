"""Unit tests of the pure parts: schedules, allocation, granularity, criteria, regrowth swaps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune.pruning import (
    CRITERIA,
    AdaptivePruning,
    Importance,
    SparsitySchedule,
    allocate,
    lamp_transform,
    ramp_fraction,
    register_criterion,
    select_params,
)
from lightning_prune.pruning.granularity import NM, Structured
from lightning_prune.pruning.regrowth import swap, swap_count


def test_ramp_shapes():
    assert ramp_fraction("cubic", 0.5) == pytest.approx(1 - 0.5**3)
    assert ramp_fraction("linear", 0.25) == 0.25
    assert ramp_fraction("oneshot", 0.0) == 1.0
    assert ramp_fraction("cubic", 2.0) == 1.0


def test_schedule_over_optimizer_steps_with_pause_and_retarget():
    schedule = SparsitySchedule("linear", start=0.1, end=0.6)
    schedule.bind(100, final=0.8)
    assert (schedule.start_step, schedule.end_step) == (10, 60)
    for step in range(10):
        schedule.tick(step, paused=False)
    assert schedule.goal() == 0.0
    for step in range(10, 35):
        schedule.tick(step, paused=False)
    assert schedule.goal() == pytest.approx(0.8 * 25 / 50)
    for step in range(35, 45):  # paused: the clock stops, so does the sparsity
        schedule.tick(step, paused=True)
    assert schedule.goal() == pytest.approx(0.4)
    schedule.retarget(0.3)  # back-off: immediate
    assert schedule.goal() == pytest.approx(0.3) and schedule.progress == 1.0
    schedule.retarget(0.5, length=10)  # raise: a new ramp from the current sparsity
    assert schedule.goal() == pytest.approx(0.3)
    for step in range(45, 60):
        schedule.tick(step, paused=False)
    assert schedule.goal() == pytest.approx(0.5)


def test_global_allocation_prunes_exact_budget_and_respects_floors():
    scores = {"a": torch.arange(100.0), "b": torch.arange(10.0) + 1000, "out": torch.zeros(10)}
    sizes = {"a": 1, "b": 1, "out": 1}
    keep = allocate(scores, sizes, 0.5, "global", {"a": 0.0, "b": 0.0, "out": 0.3})
    assert sum(int((~k).sum()) for k in keep.values()) == 60
    assert int(keep["out"].sum()) == 3  # the floor
    assert keep["b"].all()  # high scores survive global ranking
    layerwise = allocate(scores, sizes, 0.5, "layerwise", {})
    assert [int(k.sum()) for k in layerwise.values()] == [50, 5, 5]


def test_selection_prunes_what_a_stable_sort_would():
    """Equal group sizes take the kthvalue path; it must match the sorted prefix exactly,
    ties (by position) and must-keep (+inf) / prune-first (-inf) entries included."""
    from lightning_prune.pruning.allocation import _prune_prefix

    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (500,), generator=generator).float()  # many ties
    scores[::7], scores[3::11] = float("inf"), float("-inf")
    for size, budget in [(1, 0), (1, 1), (1, 250), (2, 301), (1, 499), (1, 10_000)]:
        sizes = torch.full((500,), size, dtype=torch.long)
        order = scores.argsort(stable=True)
        allowed = (sizes[order].cumsum(0) <= budget) & (scores[order] != float("inf"))
        expected = torch.ones(500, dtype=torch.bool)
        expected[order[allowed]] = False
        assert torch.equal(_prune_prefix(scores, sizes, budget), expected), (size, budget)


def test_lamp_scores_are_relative_within_a_layer():
    lamp = lamp_transform(torch.tensor([1.0, 2.0, 3.0]))
    assert lamp.tolist() == pytest.approx([1 / 14, 4 / 13, 1.0])
    # the largest weight of every layer gets LAMP score 1: layers with small weights survive
    small = lamp_transform(torch.tensor([0.01, 0.02]))
    assert small.max() == pytest.approx(1.0)


def test_structured_and_nm_groups():
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    params = select_params(net, ("*",), ())
    structured = Structured()
    scores = structured.group_scores(params[0], torch.arange(32.0).reshape(4, 8))
    assert scores.tolist() == [3.5, 11.5, 19.5, 27.5]
    mask = structured.expand(params[0], torch.tensor([True, False, True, False]))
    assert mask[1].sum() == 0 and mask[0].all()
    nm = NM("2:4")
    keep = nm.mask(torch.arange(32.0).reshape(4, 8), pruned_per_block=2)
    assert keep.reshape(-1, 4).sum(dim=1).eq(2).all()
    assert keep[0].tolist() == [False, False, True, True] * 2
    with pytest.raises(ValueError, match="M=3 does not divide"):
        NM("1:3").check(params)


def test_register_custom_criterion():
    @register_criterion("squared")
    class Squared(Importance):
        def __call__(self, param, weight, stats):
            return weight.pow(2)

    try:
        assert isinstance(AdaptivePruning(criterion="squared", monitor=None).criterion, Squared)
    finally:
        CRITERIA.pop("squared")


def test_swap_is_balanced_and_dns_only_swaps_better_weights():
    keep = torch.tensor([True, True, True, False, False, False])
    drop = torch.tensor([5.0, 1.0, 3.0, 0.0, 0.0, 0.0])
    grow = torch.tensor([0.0, 0.0, 0.0, 2.0, 0.5, 9.0])
    rigl = swap(keep, drop, grow, count=2, require_better=False)
    assert int(rigl.sum()) == 3 and rigl.tolist() == [True, False, False, True, False, True]
    dns = swap(keep, drop, grow, count=2, require_better=True)
    assert int(dns.sum()) == 3 and dns.tolist() == [True, False, True, False, False, True]
    assert swap_count(kept=100, pruned=900, fraction=0.1, step=0, end_step=10) == 10
    assert swap_count(kept=100, pruned=900, fraction=0.1, step=10, end_step=10) == 0
