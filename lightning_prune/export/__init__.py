"""Deployment of pruned models: permanent zeros, compaction, sparse storage, ONNX, latency.

- :func:`make_permanent` -- apply masks, drop pruning reparametrisations (plain weights).
- :func:`compact` -- physically remove dead neurons/channels (Torch-Pruning DepGraph) and dead
  attention heads (:class:`CompactMultiheadAttention`).
- :func:`size_report`, :func:`save_sparse`, :func:`load_sparse` -- sparse on-disk format.
- :func:`export_onnx` -- ONNX file checked with onnx.checker and onnxruntime.
- :func:`measure_latency`, :func:`measure_onnx_latency` -- median CPU ms per batch.
"""

from lightning_prune.export.compact import compact
from lightning_prune.export.heads import CompactMultiheadAttention
from lightning_prune.export.latency import measure_latency, measure_onnx_latency
from lightning_prune.export.onnx_export import export_onnx, run_onnx
from lightning_prune.export.permanent import apply_masks, make_permanent
from lightning_prune.export.sparse_io import load_sparse, save_sparse, size_report

__all__ = [
    "CompactMultiheadAttention",
    "apply_masks",
    "compact",
    "export_onnx",
    "load_sparse",
    "make_permanent",
    "measure_latency",
    "measure_onnx_latency",
    "run_onnx",
    "save_sparse",
    "size_report",
]
