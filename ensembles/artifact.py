"""One ensemble file (plain tensors + configs, `torch.load(weights_only=True)`) and MLflow logging.

The file holds each member's state_dict and model config (rebuilt with Hydra, as
`lightning_prune.checkpoint` does, for allowed `_target_`s only), the ensemble weights and
the combine rule, so it loads without pickled code. MLflow gets the same file plus an
`mlflow.pytorch` model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning_prune.ensembles.model import WeightedEnsemble

from lightning_prune.dynamic.restore import restore_gates
from lightning_prune.targets import check_targets

FORMAT = "lightning_prune.ensemble/1"


def save_ensemble(
    path: str | Path,
    ensemble: WeightedEnsemble,
    member_configs: list[dict[str, Any]],
    member_info: list[dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write members (state_dict, model_config, info), weights and combine rule to `path`."""
    if len(member_configs) != len(ensemble.members):
        raise ValueError(f"need one model config per member ({len(ensemble.members)}), "
                         f"got {len(member_configs)}")  # fmt: skip
    member_info = member_info or [{} for _ in member_configs]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    members = [
        {"state_dict": {k: v.detach().cpu().clone() for k, v in m.state_dict().items()},
         "model_config": config, "info": extra}
        for m, config, extra in zip(ensemble.members, member_configs, member_info, strict=True)
    ]  # fmt: skip
    torch.save(
        {
            "format": FORMAT,
            "members": members,
            "weights": ensemble.weights.detach().cpu().clone(),
            "combine": ensemble.combine,
            "num_classes": ensemble.num_classes,
            "info": info or {},
        },
        path,
    )
    return path


def ensemble_folder(output_dir: str | Path) -> Path:
    """Where the `ensemble` command keeps its files: `<output_dir>/ensembles`."""
    return Path(output_dir) / "ensembles"


def ensemble_file(folder: str | Path, study_name: str, weighting: str) -> Path:
    """Where the `ensemble` command saves a study's ensemble: `<folder>/<study>-<weighting>.pt`."""
    return Path(folder) / f"{study_name}-{weighting}.pt"


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble file not found: {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lightning-prune ensemble file (format {FORMAT})")
    return saved


def _info(saved: dict[str, Any]) -> dict[str, Any]:
    return {**saved["info"], "members": [m["info"] for m in saved["members"]],
            "model_configs": [m["model_config"] for m in saved["members"]]}  # fmt: skip


def load_ensemble(
    path: str | Path,
    *,
    allow: str | Iterable[str] | None = None,
    fast: bool = False,
    example_input: torch.Tensor | None = None,
) -> tuple[WeightedEnsemble, dict[str, Any]]:
    """Rebuild the ensemble from `save_ensemble`'s file; return it with its saved info.

    Every member's model config is checked before any is built: only the project's own
    classes and the `allow` patterns (e.g. ["my_pkg.*"]) pass (`lightning_prune.targets`).
    `fast=True` builds the fast form on load (`WeightedEnsemble.use_fast`, measured on this
    machine; `example_input` as there): `forward` then runs through it.
    """
    saved = _read(path)
    configs = [check_targets(m["model_config"], allow, where=f"ensemble file {path} member {i}")
               for i, m in enumerate(saved["members"])]  # fmt: skip
    models = []
    for member, config in zip(saved["members"], configs, strict=True):
        model = instantiate(config)
        restore_gates(model, member["state_dict"])  # a DynamicGating member: its gates first
        model.load_state_dict(member["state_dict"])
        models.append(model)
    ensemble = WeightedEnsemble(models, saved["weights"], saved["combine"], saved["num_classes"])
    ensemble.eval()
    if fast:
        ensemble.use_fast(example_input)
    return ensemble, _info(saved)


def load_ensemble_info(path: str | Path) -> dict[str, Any]:
    """`load_ensemble`'s info without building the members: settings (`weighting`, ...),
    `evaluation` ({rows, ensemble, costs} on test, as `EnsembleReport`), members, configs."""
    return _info(_read(path))


def latest_ensemble_info(folder: str | Path, study_name: str) -> dict[str, Any] | None:
    """The info of the newest ensemble file of `study_name` in `folder`, or None."""
    files = sorted(Path(folder).glob(ensemble_file("", study_name, "*").name),
                   key=lambda p: p.stat().st_mtime)  # fmt: skip
    return load_ensemble_info(files[-1]) if files else None


def _flat_params(members: list[dict[str, Any]], weights: list[float]) -> dict[str, str]:
    params = {}
    for i, (member, weight) in enumerate(zip(members, weights, strict=True)):
        params[f"member_{i}_trial"] = str(member.get("trial"))
        params[f"member_{i}_weight"] = f"{weight:.6f}"
    return params


def log_ensemble(
    uri: str,
    experiment: str,
    artifact: Path,
    ensemble: WeightedEnsemble,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    members: list[dict[str, Any]],
    parent_run_id: str | None = None,
    run_name: str = "ensemble",
    example: torch.Tensor | None = None,
    tags: dict[str, str] | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Record the ensemble as an MLflow run nested under `parent_run_id`.

    Logs params (settings, each member's trial and weight), metrics (at step 0: an ensemble
    has no curve, `lightning_prune.run_metrics`), its provenance with `data` as the input
    dataset, `members.json`, the ensemble file and an `mlflow.pytorch` model. Returns
    (run_id, model_uri).
    """
    import mlflow  # here, not at the top: seconds of start-up the file-only path skips
    from mlflow import MlflowClient

    from lightning_prune import provenance, tracking

    all_tags = {"job": "ensemble", **(tags or {})}
    run_id = tracking.start_run(uri, experiment, run_name, parent_run_id, tags=all_tags)
    client = MlflowClient(uri)
    status = "FAILED"
    previous_uri = mlflow.get_tracking_uri()
    try:
        provenance.stamp(uri, run_id, "ensemble", data, context="evaluation")
        weights = [float(w) for w in ensemble.weights]
        for key, value in {**params, **_flat_params(members, weights)}.items():
            client.log_param(run_id, key, str(value)[:6000])
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        with tempfile.TemporaryDirectory() as folder:
            listing = Path(folder) / "members.json"
            listing.write_text(json.dumps({"weights": weights, "members": members}, indent=2))
            client.log_artifact(run_id, str(listing))
        client.log_artifact(run_id, str(artifact))
        mlflow.set_tracking_uri(uri)
        model_uri = _log_pytorch_model(run_id, ensemble, example)
        status = "FINISHED"
        return run_id, model_uri
    finally:
        client.set_terminated(run_id, status)
        mlflow.set_tracking_uri(previous_uri)


def _log_pytorch_model(run_id: str, ensemble: WeightedEnsemble, example: torch.Tensor | None):
    """`mlflow.pytorch.log_model` with an explicit signature and requirements (no inference)."""
    import mlflow

    # mlflow warns about pickle on every save; the weights-only file is logged beside it
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    signature = None
    if example is not None:
        with torch.inference_mode():
            output = ensemble.eval()(example)
        signature = mlflow.models.infer_signature(
            example.numpy(), output.numpy().astype(np.float32)
        )
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            ensemble,
            name="model",
            signature=signature,
            serialization_format="pickle",  # loads back as a WeightedEnsemble (pt2: a graph)
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "lightning-prune"],
        )
    return info.model_uri
