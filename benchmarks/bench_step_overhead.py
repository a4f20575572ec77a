"""Where a pruned training step's extra time goes: the callback's step time taken apart.

Same setting as `bench_peers.py --timing-only` (LeNet-300-100, Adam, 4 short epochs, ramp from
25 % to 75 %, target 98 %, epoch 0 not counted), every variant interleaved round by round so
they share the machine's load:

- dense: no callback
- empty hooks: a callback with AdaptivePruning's three batch hooks and empty bodies
- defaults: AdaptivePruning with its defaults (the full ramp)
- ramp off: AdaptivePruning whose ramp never runs (no masks, no statistics, no updates)
- fixed masks: AdaptivePruning pruning once at 25 % (no statistics or updates afterwards)
- masking alone: no pruning; every weight's gradient multiplied by an all-ones float mask as
  backward accumulates it (the cost of the masking pass by itself)

    .venv/bin/python benchmarks/bench_step_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import pytorch_lightning as pl
import torch
from bench_peers import MODEL, RESULTS, StepTimer, make_trainer

from lightning_prune.data import FashionMNISTDataModule
from lightning_prune.models import Classifier
from lightning_prune.pruning import AdaptivePruning

PRUNING = {"target_sparsity": 0.98, "monitor": None, "verbose": False, "start": 0.25, "end": 0.75}


class EmptyHooks(pl.Callback):
    """AdaptivePruning's per-batch hooks with nothing in them: Lightning's dispatch alone."""

    def on_train_batch_start(self, *args) -> None:
        pass

    def on_before_optimizer_step(self, *args) -> None:
        pass

    def on_train_batch_end(self, *args) -> None:
        pass


class RampOff(pl.Callback):
    """Put after an AdaptivePruning: its ramp never steps, so nothing is ever pruned."""

    def __init__(self, pruning: AdaptivePruning) -> None:
        self.pruning = pruning

    def on_train_start(self, *args) -> None:
        self.pruning._ramp_step = lambda *a: None


class OnesMask(pl.Callback):
    """Multiplies every weight gradient by an all-ones float mask in backward."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for param in pl_module.parameters():
            if param.dim() > 1:
                ones = torch.ones_like(param)

                def mask(p: torch.Tensor, ones: torch.Tensor = ones) -> None:
                    p.grad.mul_(ones)

                param.register_post_accumulate_grad_hook(mask)


def callbacks(variant: str) -> list[pl.Callback]:
    if variant == "empty hooks":
        return [EmptyHooks()]
    if variant == "defaults":
        return [AdaptivePruning(**PRUNING)]
    if variant == "ramp off":
        pruning = AdaptivePruning(**PRUNING)
        return [pruning, RampOff(pruning)]
    if variant == "fixed masks":
        return [AdaptivePruning(**{**PRUNING, "schedule": "oneshot"})]
    if variant == "masking alone":
        return [OnesMask()]
    return []


VARIANTS = ("dense", "empty hooks", "defaults", "ramp off", "fixed masks", "masking alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--batches", type=int, default=60, help="training batches per epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batches = 1, 8
    torch.set_num_threads(args.threads)
    MODEL.update(optimizer="adam", lr=1e-3)
    data = FashionMNISTDataModule(batch_size=128, subset=3000 if args.quick else None, seed=0)
    times: dict[str, list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        shift = round_ % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:  # rotate the order
            timer = StepTimer()
            trainer = make_trainer(
                4, [*callbacks(variant), timer], limit_train_batches=args.batches
            )
            trainer.fit(Classifier("lenet300", **MODEL), data)
            times[variant].extend(timer.times[args.batches :])
    dense = statistics.median(times["dense"])
    dense_mean = statistics.mean(times["dense"])
    lines = [
        f"Step time taken apart: {args.rounds} interleaved rounds, {len(times['dense'])} steps "
        "per variant; median [25th-75th percentile] ms, and the mean (which the mask updates, "
        "one every 25 steps of the ramp, raise).",
        "",
        "| variant | step (ms) | vs dense | mean (ms) | mean vs dense |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        q = statistics.quantiles(times[variant], n=4)
        med, mean = statistics.median(times[variant]), statistics.mean(times[variant])
        lines.append(
            f"| {variant} | {1000 * med:.2f} [{1000 * q[0]:.2f}-{1000 * q[2]:.2f}] "
            f"| {med / dense:.3f}x | {1000 * mean:.2f} | {mean / dense_mean:.3f}x |"
        )
    text = "\n".join(lines)
    print(text)
    (RESULTS / "step_overhead.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
