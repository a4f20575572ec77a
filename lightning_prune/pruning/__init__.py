"""Adaptive pruning during training: masks, criteria, granularity, allocation, schedules,
the feedback controller, regrowth, statistics and the `AdaptivePruning` callback."""

from lightning_prune.pruning.allocation import ALLOCATIONS, allocate, lamp_transform
from lightning_prune.pruning.callback import AdaptivePruning
from lightning_prune.pruning.controller import EVENT_CODES, Controller
from lightning_prune.pruning.criteria import (
    CRITERIA,
    Importance,
    build_criterion,
    register_criterion,
)
from lightning_prune.pruning.granularity import GRANULARITIES
from lightning_prune.pruning.masks import MaskStore
from lightning_prune.pruning.regrowth import REGROWTH
from lightning_prune.pruning.schedules import SCHEDULES, SparsitySchedule, ramp_fraction
from lightning_prune.pruning.selection import PrunableParam, select_params

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "EVENT_CODES",
    "GRANULARITIES",
    "REGROWTH",
    "SCHEDULES",
    "AdaptivePruning",
    "Controller",
    "Importance",
    "MaskStore",
    "PrunableParam",
    "SparsitySchedule",
    "allocate",
    "build_criterion",
    "lamp_transform",
    "ramp_fraction",
    "register_criterion",
    "select_params",
]
