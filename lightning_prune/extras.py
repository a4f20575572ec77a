"""Optional features and the pip extra that brings each: the base install is what the
callback needs (torch, pytorch-lightning, torchmetrics); a feature whose extra is missing
says which one to install instead of failing on a bare `ModuleNotFoundError`."""

from __future__ import annotations

from importlib.util import find_spec

# import name -> the extra that installs it
EXTRA_OF = {
    "optuna": "search",
    "hydra": "search",
    "omegaconf": "search",
    "rich": "search",
    "matplotlib": "search",
    "mlflow": "tracking",
    "onnx": "export",
    "onnxruntime": "export",
    "torch_pruning": "export",
    "psycopg2": "postgres",
}
# what each feature imports
NEEDS = {
    "the search (lightning_prune.search)": ("optuna", "hydra", "omegaconf", "rich", "matplotlib",
                                            "mlflow"),
    "ensembles (lightning_prune.ensembles)": ("optuna", "omegaconf", "rich", "mlflow"),
    "the report (lightning_prune.report)": ("optuna", "rich", "matplotlib", "mlflow"),
    "the command line (lightning-prune)": ("hydra", "omegaconf", "rich", "mlflow"),
    "MLflow tracking": ("mlflow",),
    "ONNX export": ("onnx", "onnxruntime"),
    "structural compaction (torch-pruning)": ("torch_pruning",),
    "a PostgreSQL study storage": ("psycopg2",),
}  # fmt: skip


class MissingExtraError(ImportError):
    """A feature's packages are not installed; the message names the pip extra."""


def missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if find_spec(m) is None]


def require(feature: str) -> None:
    """Raise `MissingExtraError` naming the extra(s) when `feature`'s packages are absent."""
    absent = missing(NEEDS[feature])
    if not absent:
        return
    extras = ",".join(dict.fromkeys(EXTRA_OF[m] for m in absent))
    raise MissingExtraError(
        f"{feature} needs {', '.join(absent)}, which are not installed: "
        f'pip install "lightning-prune[{extras}]"'
    )
