"""The whole ensemble as one ONNX graph: members, weights and the combine rule.

One file is what a serving stack deploys; running members in separate sessions and averaging
in application code repeats the combine rule in every client. The graph holds the active
members (compacted where structured, dense weights: onnxruntime has no CPU sparse matmul
among the standard operators), laid out one after another or side by side, whichever
onnxruntime runs faster, and outputs log-probabilities as `WeightedEnsemble.forward`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning_prune.ensembles.model import WeightedEnsemble

from lightning_prune.export import export_onnx, measure_onnx_latency, run_onnx

ONNX_LAYOUTS = ("auto", "loop", "stacked")


def export_ensemble_onnx(
    ensemble: WeightedEnsemble,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    layout: str = "auto",
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 20,
    threads: int = 1,
    atol: float = 1e-5,
) -> Path:
    """Write `ensemble` to one ONNX file at `path` and check it against the plain ensemble.

    `layout`: "loop" (members one after another), "stacked" (side by side, where members
    share a layer plan) or "auto": both exported and the one with the lower geometric mean
    of onnxruntime latencies over `batch_sizes` (`repeats`, `threads`) kept. The graph's
    input is "input" and its output "output" (log-probabilities [N, C]; dynamic batch).
    Raises RuntimeError when onnxruntime's output on `example_input` differs from
    `ensemble.forward_plain` by more than `atol`.
    """
    if layout not in ONNX_LAYOUTS:
        raise ValueError(f"layout must be one of {ONNX_LAYOUTS}, got {layout!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_input = example_input.detach().cpu()
    layouts = ("stacked", "loop") if layout == "auto" else (layout,)
    with tempfile.TemporaryDirectory(prefix="ensemble-onnx-") as tmp:
        files = {}
        for name in layouts:
            form = ensemble.fast(example_input, layout=name, exportable=True,
                                 batch_sizes=(max(batch_sizes),))  # fmt: skip
            if form.plan["layout"][0] != name:  # members differ: no side-by-side form
                continue
            files[name] = export_onnx(form, Path(tmp) / f"{name}.onnx", example_input)
        if not files:
            raise RuntimeError(f"export_ensemble_onnx: no {layout} form for these members")
        chosen = _fastest(files, example_input.shape[1:], batch_sizes, repeats, threads)
        shutil.copyfile(files[chosen], path)
    _check(ensemble, path, example_input, atol)
    return path


def _fastest(files: dict[str, Path], shape, batch_sizes, repeats: int, threads: int) -> str:
    if len(files) == 1:
        return next(iter(files))

    def score(file: Path) -> float:
        times = [measure_onnx_latency(file, shape, n, repeats, threads=threads)["median_ms"]
                 for n in batch_sizes]  # fmt: skip
        return sum(math.log(t) for t in times)

    return min(files, key=lambda name: score(files[name]))


def _check(ensemble: WeightedEnsemble, path: Path, example: torch.Tensor, atol: float) -> None:
    with torch.inference_mode():
        expected = ensemble.forward_plain(example).numpy()
    got = run_onnx(path, example.numpy())
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=atol):
        worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else None
        raise RuntimeError(f"export_ensemble_onnx: {path} differs from the ensemble ({worst})")
