"""The fast form of a weighted ensemble: the same outputs at a cost that follows the members'
nonzero weights.

A plain ensemble runs every member as the dense network it was trained as, so pruning saves
nothing at inference. The fast form drops members of weight 0, compacts members with dead
neurons or channels (`lightning_prune.export.compact`), and then picks, by measuring once
when it is built, the fastest exact execution at each batch size asked for:

- per layer: dense or CSR sparse matmul (`torch.sparse`) for a Linear; NCHW or
  channels-last for a Conv2d; torch's max-pool or maxima of strided slices for a MaxPool2d;
- per ensemble: members one after another, or all members side by side in one network
  (`fast_layers.stack_networks`: concatenated first layer, block-diagonal / batched /
  grouped later layers) where the members share a layer plan. The batched matmul over
  stacked weights is what `torch.func.vmap` over `stack_module_state` computes, without
  the functional-call overhead per batch;
- with combine "logprob", the weighted sum of the members' logits folded into the last layer
  of the side-by-side network (`FoldedPlan`): one network of a member's depth, no head.

A batch runs on the choices measured at the nearest batch size. Outputs equal the plain
member-by-member ensemble up to float rounding.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning_prune.ensembles.fast_layers import (
    EXPORTABLE,
    Combine,
    by_batch,
    candidates,
    stack_networks,
)
from lightning_prune.ensembles.feature_major import fuse_feature_major
from torch import nn
from torch.utils.benchmark import Timer

from lightning_prune.extras import missing

LAYOUTS = ("auto", "loop", "stacked")
SPARSE = ("auto", "never", "always")


class _Options(NamedTuple):
    sparse: str
    exportable: bool
    min_run_time: float


class LoopPlan(nn.Module):
    """Members one after another (each with its own per-layer kernels), then combined."""

    def __init__(self, members: Sequence[nn.Module], head: Combine) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [F.log_softmax(member(x).float(), dim=-1) for member in self.members]
        return self.head(torch.stack(outputs, dim=1))


class StackedPlan(nn.Module):
    """All members side by side in one network whose output is [N, M*C], then combined."""

    def __init__(self, net: nn.Sequential, members: int, head: Combine) -> None:
        super().__init__()
        self.net = net
        self.members = members
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).float()
        if not self.head.graph:  # [M*C, N]: no copy after a feature-major chain
            return self.head.from_logits_t(logits.t().contiguous(), self.members)
        logits = logits.reshape(x.shape[0], self.members, -1)
        return self.head(F.log_softmax(logits, dim=-1))


class FoldedPlan(nn.Module):
    """All members side by side with the weighted sum of their logits folded into the last
    layer (the "logprob" combination): the ensemble is one network of the dense model's depth."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x).float(), dim=-1)


class FastEnsemble(nn.Module):
    """Inference-only ensemble built by `build_fast`: log-probabilities [N, C], as
    `WeightedEnsemble.forward`. `plan` says what was chosen and the measured times."""

    def __init__(self, module: nn.Module, plan: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.plan = plan
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def median_ms(module: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """Median ms of one call (torch.utils.benchmark, current thread count, inference mode)."""

    def run() -> None:
        with torch.inference_mode():
            module(x)

    run()
    timer = Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _fastest(candidates: dict[str, nn.Module], x: torch.Tensor, min_run_time: float):
    """(name, module, {name: ms}) of the fastest candidate on input `x`."""
    if len(candidates) == 1:
        name, module = next(iter(candidates.items()))
        return name, module, {}
    times = {name: median_ms(m, x, min_run_time) for name, m in candidates.items()}
    name = min(times, key=times.get)
    return name, candidates[name], times


def _inputs(example: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Random batches of the example's shape at each size (timing only)."""
    generator = torch.Generator().manual_seed(0)
    shape = example.shape[1:]
    return [torch.randn(n, *shape, generator=generator).to(example) for n in sizes]


def network_of(member: nn.Module, example: torch.Tensor) -> nn.Module:
    """The member's inner nn.Sequential when it holds all the member's parameters and gives
    the member's outputs (e.g. `Classifier.net`), so it can be stacked; else the member."""
    if isinstance(member, nn.Sequential):
        return member
    params = {id(p) for p in member.parameters()}
    probe = torch.cat([example, *_inputs(example, [7])])
    for child in member.children():
        if isinstance(child, nn.Sequential) and {id(p) for p in child.parameters()} == params:
            with torch.inference_mode():
                if torch.equal(child(probe), member(probe)):
                    return child
    return member


def _hidden_units(net: nn.Module) -> int:
    """Output units of every Linear/Conv but the last (the logits)."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    return sum(m.weight.shape[0] for m in layers[:-1])


def _has_dead_units(net: nn.Module) -> bool:
    """Whether a Linear/Conv other than the last has an all-zero output row or filter."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    return any(not m.weight.detach().flatten(1).ne(0).any(dim=1).all() for m in layers[:-1])


def prepare_member(
    member: nn.Module, example: torch.Tensor, compact: bool
) -> tuple[nn.Module, bool]:
    """An eval-mode copy of the member's network; compacted when it has dead units.

    Returns (network, compacted). Compaction is skipped (with a warning) where the `export`
    extra is missing or `compact` cannot keep the outputs.
    """
    net = copy.deepcopy(network_of(member.eval(), example)).eval().requires_grad_(False)
    if not compact or not _has_dead_units(net):
        return net, False
    if missing(("torch_pruning",)):
        warnings.warn("fast ensemble: torch-pruning (the `export` extra) is missing, so "
                      "structured members run uncompacted", stacklevel=3)  # fmt: skip
        return net, False
    from lightning_prune.export import compact as compact_network

    batch = torch.cat([example, *_inputs(example, [15])])
    try:  # torch-pruning traces the autograd graph: the copy's weights need gradients
        return compact_network(net.requires_grad_(True), batch).requires_grad_(False), True
    except RuntimeError as error:
        warnings.warn(f"fast ensemble: a member stays uncompacted ({error})", stacklevel=3)
        return net, False


def _capture(net: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> dict[nn.Module, Any]:
    """Each layer's input during one forward pass of `net` on `x`."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0]))
             for m in layers]  # fmt: skip
    try:
        with torch.inference_mode():
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _allowed(found: dict[str, nn.Module], options: _Options) -> dict[str, nn.Module]:
    """The candidates the options allow; CSR alone where `sparse="always"`."""
    kept = {k: m for k, m in found.items() if not options.exportable or k in EXPORTABLE}
    if options.sparse == "never" or options.exportable:
        kept.pop("csr", None)
    elif options.sparse == "always" and "csr" in kept:
        kept = {"csr": kept["csr"]}
    return kept


def _choose_sequence(depths: list[dict[str, nn.Module]], inputs, options: _Options):
    """Per batch size, one nn.Sequential of the fastest candidate at each depth (measured on
    the previous depth's output), and the choices by depth."""
    picked: list[list[nn.Module]] = [[] for _ in inputs]
    choices, current = [], list(inputs)
    for d, found in enumerate(depths):
        kept = _allowed(found, options)
        picks = [_fastest(kept, x, options.min_run_time) for x in current]
        for modules, pick in zip(picked, picks, strict=True):
            modules.append(pick[1])
        if "shared" not in kept:
            choices.append((f"{d} {type(next(iter(found.values()))).__name__}",
                            [p[0] for p in picks]))  # fmt: skip
        with torch.inference_mode():
            current = [pick[1](x) for pick, x in zip(picks, current, strict=True)]
    return [nn.Sequential(*modules) for modules in picked], choices


def _sparse_linears(net: nn.Module, inputs: list[torch.Tensor], options: _Options):
    """Replace each float32 Linear of a non-Sequential `net` by the faster of dense and CSR."""
    linears = {name: m for name, m in net.named_modules()
               if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32}  # fmt: skip
    if options.sparse == "never" or options.exportable:
        return net, []
    captured = [_capture(net, list(linears.values()), x) for x in inputs]
    choices = []
    for name, layer in linears.items():
        kept = _allowed(candidates(layer), options)
        picks = [_fastest(kept, seen[layer], options.min_run_time)
                 for seen in captured if layer in seen]  # fmt: skip
        if len(picks) != len(inputs):  # not run on the example: left as it is
            continue
        parent_name, _, attr = name.rpartition(".")
        chosen = by_batch([p[1] for p in picks], _sizes(inputs))
        setattr(net.get_submodule(parent_name), attr, chosen)
        choices.append((name, [p[0] for p in picks]))
    return net, choices


def _sizes(inputs: list[torch.Tensor]) -> list[int]:
    return [x.shape[0] for x in inputs]


def loop_plan(nets: list[nn.Module], head: Combine, inputs, options: _Options):
    """Members one after another, each layer on its fastest kernel: a LoopPlan per batch
    size, and the choices."""
    per_size: list[list[nn.Module]] = [[] for _ in inputs]
    choices = []
    for i, net in enumerate(nets):
        if isinstance(net, nn.Sequential):
            found, chosen = _choose_sequence([candidates(layer) for layer in net], inputs, options)
        else:
            member, chosen = _sparse_linears(copy.deepcopy(net), inputs, options)
            found = [member] * len(inputs)
        for members, member in zip(per_size, found, strict=True):
            members.append(member)
        choices += [(f"member {i} layer {name}", picks) for name, picks in chosen]
    return [LoopPlan(members, head) for members in per_size], choices


def stacked_plan(nets: list[nn.Module], head: Combine, inputs, options: _Options):
    """All members side by side where they share a layer plan: a StackedPlan per batch size
    (None where they do not), and the choices."""
    if not all(isinstance(net, nn.Sequential) for net in nets):
        return None, []
    fold = head.weights.flatten() if head.combine == "logprob" else None
    depths = stack_networks(nets, fold=fold)
    if depths is None:
        return None, []
    found, choices = _choose_sequence(depths, inputs, options)
    plans, layouts = [], []

    def plan_of(net: nn.Sequential) -> nn.Module:
        return FoldedPlan(net) if fold is not None else StackedPlan(net, len(nets), head)

    for net, x in zip(found, inputs, strict=True):
        kinds = {"row-major": plan_of(net)}
        fused = None if options.exportable else fuse_feature_major(net)
        if fused is not None:
            kinds["feature-major"] = plan_of(fused)
        name, plan, _ = _fastest(kinds, x, options.min_run_time)
        plans.append(plan)
        layouts.append(name)
    return plans, [(f"layer {n}", p) for n, p in choices] + [("activations", layouts)]


def build_fast(
    members: Sequence[nn.Module],
    weights: torch.Tensor,
    combine: str,
    example_input: torch.Tensor | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    layout: str = "auto",
    sparse: str = "auto",
    compact: bool = True,
    exportable: bool = False,
    min_run_time: float = 0.05,
) -> FastEnsemble:
    """Build the fast form of an ensemble (use `WeightedEnsemble.fast`).

    Args:
        members, weights, combine: the ensemble's (weights on the simplex).
        example_input: one input batch; default: the first member's `example_input_array`.
        batch_sizes: sizes measured at; each batch runs on the choices of the nearest size.
        layout: "loop", "stacked" (falls back to loop where members differ) or "auto"
            (measured).
        sparse: CSR Linear kernels "auto" (where measured faster), "never" or "always".
        compact: compact members with dead neurons/channels.
        exportable: only kernels an ONNX graph holds (no CSR, no channels-last, torch pools).
        min_run_time: seconds of timing per candidate and batch size.
    """
    if layout not in LAYOUTS or sparse not in SPARSE:
        raise ValueError(f"layout must be one of {LAYOUTS} and sparse one of {SPARSE}")
    active = [i for i, w in enumerate(weights.tolist()) if w > 0]
    example = example_input
    if example is None:
        example = getattr(members[active[0]], "example_input_array", None)
    if not isinstance(example, torch.Tensor):
        raise ValueError("fast ensemble: pass example_input (one input batch) to build it")
    options = _Options(sparse, exportable, min_run_time)
    sizes = sorted(set(batch_sizes))
    inputs = _inputs(example, sizes)
    prepared = [prepare_member(members[i], example, compact) for i in active]
    nets = [net for net, _ in prepared]
    head = Combine(weights[active], combine, graph=exportable)
    plans: dict[str, tuple[nn.Module | None, list]] = {}
    if layout in ("auto", "stacked"):
        plans["stacked"] = stacked_plan(nets, head, inputs, options)
    if layout in ("auto", "loop") or plans["stacked"][0] is None:
        plans["loop"] = loop_plan(nets, head, inputs, options)
    found = {name: per_size for name, (per_size, _) in plans.items() if per_size is not None}
    picks = [_fastest({name: per_size[k] for name, per_size in found.items()}, x, min_run_time)
             for k, x in enumerate(inputs)]  # fmt: skip
    plan = {
        "members": active,
        "compacted": [i for i, (_, done) in zip(active, prepared, strict=True) if done],
        "hidden_units": [
            [_hidden_units(members[i]), _hidden_units(net)]
            for i, net in zip(active, nets, strict=True)
        ],  # fmt: skip
        "parameters": sum(p.numel() for net in nets for p in net.parameters()),
        "nonzero": sum(int(p.count_nonzero()) for net in nets for p in net.parameters()),
        "batch_sizes": sizes,
        "layout": [p[0] for p in picks],
        "folded": [isinstance(p[1], FoldedPlan) for p in picks],
        "kernels": {name: choices for name, (_, choices) in plans.items()},
        "ms": [p[2] for p in picks],
    }
    return FastEnsemble(by_batch([p[1] for p in picks], sizes), plan)
