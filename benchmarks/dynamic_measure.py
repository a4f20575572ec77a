"""Measurements of bench_dynamic: matching MACs budgets, counted MACs on a test set, latency.

Budgets are matched before training, on fresh copies of the architecture, because both
counts are fixed by channel counts alone: a top-k gate keeps ceil(budget * channels) per layer
whatever the input, and layerwise structured pruning removes round(sparsity * channels) of every
layer but the output layer. So the gate budget (and the structured target sparsity) whose
counted MACs fraction lies closest to the asked one is found by bisection; the measured
fractions of the trained models are then reported next to the target.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer

from lightning_prune.dynamic import SkippingPath, attach_gates, set_budget
from lightning_prune.dynamic.grouped import GroupedSkippingPath
from lightning_prune.dynamic.skipping import dense_sizes, layer_macs
from lightning_prune.export import compact

INPUT = (1, 28, 28)
CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def prunable(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def silence_dead(net: nn.Sequential) -> nn.Sequential:
    """Zero the BatchNorm scale and shift of channels whose filter is all zero, so a pruned
    channel emits 0 instead of a constant and `compact` can remove it before a padded conv
    (it keeps a channel whose constant it cannot fold). Changes the outputs slightly: the
    accuracy of a static model is measured after this, on the compacted copy."""
    children = list(net.children())
    with torch.no_grad():
        for layer, after in zip(children, children[1:], strict=False):
            if isinstance(layer, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
                dead = ~layer.weight.reshape(layer.out_channels, -1).ne(0).any(dim=1)
                after.weight[dead] = 0
                after.bias[dead] = 0
    return net


def compact_net(net: nn.Sequential) -> nn.Sequential:
    return compact(silence_dead(net), torch.randn(64, *INPUT))


def layer_table(net: nn.Sequential) -> list[tuple[int, int, int]]:
    """(input units, output units, MACs per input-output pair) of each Conv/Linear, in order."""
    table, handles = [], []

    def record(module, args, out):
        table.append((*dense_sizes(module), layer_macs(module, 1, 1, out)))

    for layer in prunable(net):
        handles.append(layer.register_forward_hook(record))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *INPUT))
    finally:
        for handle in handles:
            handle.remove()
    return table


def structured_fraction(table: list[tuple[int, int, int]], sparsity: float) -> float:
    """MACs fraction of a plain chain after round(sparsity * units) units of every Conv/Linear
    but the last are removed (layerwise structured AdaptivePruning, then `compact`); a
    Flatten multiplies the next layer's inputs per kept channel."""
    total = dense = 0
    kept_before, units_before = None, None
    for i, (inputs, units, per_pair) in enumerate(table):
        kept = units if i == len(table) - 1 else max(1, units - round(sparsity * units))
        reads = inputs if kept_before is None else kept_before * (inputs // units_before)
        total, dense = total + kept * reads * per_pair, dense + units * inputs * per_pair
        kept_before, units_before = kept, units
    return total / dense


def gate_fraction(net: nn.Sequential, budget: float, reference: int) -> float:
    """Counted MACs fraction (gates included) of `net` gated at `budget` per layer."""
    probe = copy.deepcopy(net).eval()
    attach_gates(probe, budget=budget)
    set_budget(probe, budget)
    return SkippingPath(probe, probe)(torch.randn(1, *INPUT))[1].executed / reference


def closest(fraction_of: Callable[[float], float], target: float) -> tuple[float, float]:
    """(knob, fraction) in (0, 1] with the counted fraction closest to `target`; the fraction
    falls as the knob moves up (`sparsity`) or rises with it (`budget`): bisection either way."""
    low, high = 1e-3, 1.0
    rising = fraction_of(high) > fraction_of(low)
    for _ in range(14):
        middle = (low + high) / 2
        if (fraction_of(middle) < target) == rising:
            low = middle
        else:
            high = middle
    return min(((k, fraction_of(k)) for k in (low, high)), key=lambda kf: abs(kf[1] - target))


def match_budget(net: nn.Sequential, target: float, reference: int) -> tuple[float, float]:
    """Gate budget (kept fraction per layer) whose counted MACs fraction is closest to target."""
    cache: dict[float, float] = {}

    def fraction(budget: float) -> float:
        key = round(budget, 6)
        if key not in cache:
            cache[key] = gate_fraction(net, budget, reference)
        return cache[key]

    return closest(fraction, target)


def match_sparsity(net: nn.Sequential, target: float) -> tuple[float, float]:
    """Structured target sparsity whose compacted MACs fraction is closest to target (a lookup
    over sparsities 0, 0.005, ..., 0.95 of the architecture's MACs table)."""
    table = layer_table(net)
    grid = [i / 200 for i in range(0, 191)]
    return min(
        ((s, structured_fraction(table, s)) for s in grid), key=lambda sf: abs(sf[1] - target)
    )


@dataclass
class TestRun:
    """A gated model on the test set through the grouped skipping path."""

    acc: float = 0.0
    per_input: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # MACs fraction
    confidence: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    batch_fraction: float = 0.0  # MACs that ran at batch 256 (group unions) / dense
    off: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        return float(self.per_input.mean())


@torch.no_grad()
def run_test(model: nn.Module, chain, images, labels, reference: int, min_group: int) -> TestRun:
    """Accuracy, per-input MACs and gated-off counts of a gated model, computed by the skipping
    path itself; its logits are checked against the masked forward on the first batch."""
    model.eval()
    path = GroupedSkippingPath(model, chain, min_group)
    run, executed, fractions, conf, correct = TestRun(labels=labels), 0, [], [], 0
    for start in range(0, len(images), 256):
        x, y = images[start : start + 256], labels[start : start + 256]
        logits, ran = path(x)
        if start == 0 and not torch.allclose(logits, model(x), atol=1e-4, rtol=1e-4):
            raise RuntimeError("the skipping path's logits differ from the masked forward")
        correct += int((logits.argmax(1) == y).sum())
        fractions.append(ran.per_input.double() / reference)
        conf.append(logits.softmax(1).amax(1))
        executed += ran.executed
        for name, counts in ran.off.items():
            run.off[name] = run.off.get(name, 0) + counts
    run.acc, run.per_input = correct / len(labels), torch.cat(fractions)
    run.confidence, run.batch_fraction = torch.cat(conf), executed / (reference * len(labels))
    return run


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    hits = sum(
        int((net(images[i : i + 512]).argmax(1) == labels[i : i + 512]).sum())
        for i in range(0, len(images), 512)
    )
    return hits / len(labels)


def timed_ms(call: Callable, x: torch.Tensor, min_time: float, clock: str, threads: int) -> float:
    """Median ms per call of `call(x)` (torch.utils.benchmark Timer, after warm-up calls)."""
    timer = Timer(
        "call(x)", globals={"call": call, "x": x}, num_threads=threads, timer=CLOCKS[clock]
    )
    with torch.inference_mode():
        timer.timeit(3)
        measurement: Measurement = timer.blocked_autorange(min_run_time=min_time)
    return measurement.median * 1e3


@contextlib.contextmanager
def channels_last(net: nn.Module):
    net.to(memory_format=torch.channels_last)
    try:
        yield net
    finally:
        net.to(memory_format=torch.contiguous_format)


def best_layout_ms(net: nn.Module, x: torch.Tensor, min_time: float, clock: str, threads: int):
    """The faster of NCHW and channels-last (weights and input) for a plain torch model: oneDNN
    is several times faster channels-last at these sizes, and every row gets that choice."""
    net.eval()
    nchw = timed_ms(net, x, min_time, clock, threads)
    if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        return nchw
    with channels_last(net):
        x_last = x.contiguous(memory_format=torch.channels_last)
        last = timed_ms(net, x_last, min_time, clock, threads)
    return min(nchw, last)
