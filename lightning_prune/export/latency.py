"""CPU inference latency: median milliseconds per batch, for torch and onnxruntime.

`torch.utils.benchmark.Timer` does the timing (a replaced hand-made `perf_counter` loop): it
sets and restores the torch thread count and synchronises an accelerator before reading the
clock. Each of the `repeats` samples is one timed call after Timer's own warm-up calls; medians
over the samples resist the noise of a shared machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer


def _measure(run: Callable[[], Any], repeats: int, warmup: int, threads: int) -> Measurement:
    """`repeats` one-call samples of `run` with `threads` torch threads, after `warmup` calls."""
    timer = Timer(stmt="run()", globals={"run": run}, num_threads=threads)
    if warmup > 0:
        timer.timeit(warmup)
    return Measurement.merge([timer.timeit(1) for _ in range(repeats)])[0]


def _summary(measurement: Measurement, batch_size: int, threads: int) -> dict[str, float]:
    timings = [t * 1e3 for t in measurement.times]
    median = float(np.median(timings))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(timings, 90)),
        "min_ms": min(timings),
        "throughput_per_s": batch_size / median * 1e3,
        "batch_size": batch_size,
        "repeats": len(timings),
        "threads": threads,
    }


def _check(repeats: int, batch_size: int, threads: int) -> None:
    if repeats < 1 or batch_size < 1 or threads < 1:
        raise ValueError("repeats, batch_size and threads must be >= 1")


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 50,
    *,
    warmup: int = 5,
    threads: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Median ms per forward pass of a ``(batch_size, *input_shape)`` batch on CPU.

    Runs under ``torch.inference_mode`` with ``threads`` intra-op threads (restored after).
    The batch is random normals of a floating ``dtype``, or zeros (valid token ids) of an
    integer one. Returns median_ms, p90_ms, min_ms, throughput_per_s, batch_size, repeats,
    threads.
    """
    _check(repeats, batch_size, threads)
    shape = (batch_size, *input_shape)
    if dtype.is_floating_point:
        batch = torch.randn(shape, dtype=dtype)
    else:  # token ids or masks
        batch = torch.zeros(shape, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            measurement = _measure(lambda: model(batch), repeats, warmup, threads)
    finally:
        model.train(was_training)
    return _summary(measurement, batch_size, threads)


def measure_onnx_latency(
    path: str | Path,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 50,
    *,
    warmup: int = 5,
    threads: int = 1,
) -> dict[str, float]:
    """Same as :func:`measure_latency` for an exported ONNX file run by onnxruntime.

    The batch has the model's input dtype: random normals for floats, zeros (valid token ids)
    for integers.
    """
    from lightning_prune.export.onnx_export import input_dtype, onnx_session

    _check(repeats, batch_size, threads)
    session = onnx_session(path, threads)
    dtype, shape = input_dtype(session), (batch_size, *input_shape)
    if np.issubdtype(dtype, np.floating):
        batch = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    else:  # token ids or masks: zeros are valid for any vocabulary
        batch = np.zeros(shape, dtype=dtype)
    feed = {"input": batch}
    measurement = _measure(lambda: session.run(None, feed), repeats, warmup, threads)
    return _summary(measurement, batch_size, threads)
