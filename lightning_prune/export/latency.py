"""CPU inference latency: median milliseconds per batch, for torch and onnxruntime.

Medians over repeats (after warm-up) resist the noise of a shared machine; thread
counts are set explicitly because torch otherwise uses every core it sees.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def _timings_ms(run: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1e3)
    return timings


def _summary(timings: list[float], batch_size: int, threads: int) -> dict[str, float]:
    median = statistics.median(timings)
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(timings, 90)),
        "min_ms": min(timings),
        "throughput_per_s": batch_size / median * 1e3,
        "batch_size": batch_size,
        "repeats": len(timings),
        "threads": threads,
    }


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 50,
    *,
    warmup: int = 5,
    threads: int = 1,
) -> dict[str, float]:
    """Median ms per forward pass of a ``(batch_size, *input_shape)`` batch on CPU.

    Runs under ``torch.inference_mode`` with ``threads`` intra-op threads (restored after).
    Returns median_ms, p90_ms, min_ms, throughput_per_s, batch_size, repeats, threads.
    """
    if repeats < 1 or batch_size < 1 or threads < 1:
        raise ValueError("repeats, batch_size and threads must be >= 1")
    was_training = model.training
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    batch = torch.randn(batch_size, *input_shape)
    try:
        with torch.inference_mode():
            timings = _timings_ms(lambda: model(batch), repeats, warmup)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return _summary(timings, batch_size, threads)


def measure_onnx_latency(
    path: str | Path,
    input_shape: Sequence[int],
    batch_size: int = 1,
    repeats: int = 50,
    *,
    warmup: int = 5,
    threads: int = 1,
) -> dict[str, float]:
    """Same as :func:`measure_latency` for an exported ONNX file run by onnxruntime."""
    from lightning_prune.export.onnx_export import onnx_session

    session = onnx_session(path, threads)
    feed = {"input": np.random.default_rng(0).standard_normal((batch_size, *input_shape))}
    feed["input"] = feed["input"].astype(np.float32)
    timings = _timings_ms(lambda: session.run(None, feed), repeats, warmup)
    return _summary(timings, batch_size, threads)
