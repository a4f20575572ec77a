"""lightning-prune: adaptive pruning for PyTorch Lightning, searched with Optuna,
ensembled, and tracked in MLflow."""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["AdaptivePruning", "DynamicGating", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import lightning_prune` stays light and the core has no import cycle.
    if name == "AdaptivePruning":
        return import_module("lightning_prune.pruning").AdaptivePruning
    if name == "DynamicGating":
        return import_module("lightning_prune.dynamic").DynamicGating
    raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")
