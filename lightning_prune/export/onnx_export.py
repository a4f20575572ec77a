"""ONNX export of a (compacted) model, checked and verified against torch outputs.

torch 2.13's ``torch.onnx.export`` defaults to the dynamo exporter, which needs the
``onnxscript`` package. The TorchScript exporter (``dynamo=False``) still works and
needs only ``onnx``; we use it, with a dynamic batch dimension.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_prune.extras import require


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    opset_version: int = 17,
    dynamic_batch: bool = True,
    verify: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> Path:
    """Export ``model`` (eval mode) to ``path``; check it and compare onnxruntime to torch.

    ``verify`` runs ``onnx.checker`` and one onnxruntime inference on ``example_input`` and
    raises a RuntimeError if its output differs from torch's beyond ``rtol``/``atol``.
    """
    require("ONNX export")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval().cpu()
    example_input = example_input.cpu()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=opset_version,
        )
    if verify:
        onnx.checker.check_model(onnx.load(str(path)))
        with torch.no_grad():
            expected = model(example_input).numpy()
        got = run_onnx(path, example_input.numpy())
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
            raise RuntimeError(f"export_onnx: onnxruntime output of {path} differs from torch")
    return path


def onnx_session(path: str | Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    """A CPU onnxruntime session with ``threads`` intra-op threads."""
    require("ONNX export")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def input_dtype(session) -> np.dtype:  # session: onnxruntime.InferenceSession
    """The numpy dtype of the model's input, as the export declared it (the example's dtype).

    Token ids export as int64 and images as float32; feeding any other dtype makes onnxruntime
    refuse the call, so feeds are cast to this.
    """
    declared = session.get_inputs()[0].type
    if declared not in _ONNX_DTYPES:
        allowed = ", ".join(_ONNX_DTYPES)
        raise TypeError(f"ONNX input type {declared} is not supported; allowed: {allowed}")
    return np.dtype(_ONNX_DTYPES[declared])


def run_onnx(path: str | Path, inputs: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an exported model once on ``inputs`` and return its output.

    ``inputs`` is cast to the model's input dtype (e.g. float64 to float32, int32 ids to int64).
    """
    session = onnx_session(path, threads)
    feed = np.asarray(inputs).astype(input_dtype(session), copy=False)
    return session.run(None, {"input": feed})[0]
