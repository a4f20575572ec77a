"""`lightning-prune report`: a study's summary table, figures and markdown, also in MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.report import figures


@dataclass
class Report:
    """Where the report went and what it said."""

    folder: Path
    markdown: Path
    figures: dict[str, Path] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def _feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def _accuracy(trial: FrozenTrial) -> float | None:
    value = trial.user_attrs.get("val_acc")
    if value is None and trial.values:
        value = trial.values[0]
    return value


def layer_sparsity_of(checkpoint: str | Path) -> dict[str, float]:
    """Zero fraction of each weight matrix/kernel in a saved model (no model code needed)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {
        name.removesuffix(".weight"): float((tensor == 0).float().mean())
        for name, tensor in saved["state_dict"].items()
        if name.endswith("weight") and tensor.dim() > 1
    }


def _trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        curve = trial.user_attrs.get("curve") or []
        value = _accuracy(trial) if trial.state == TrialState.COMPLETE else None
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        if value is None and curve:
            last = curve[-1]
            value = last.get("val_acc") if isinstance(last, dict) else None
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "value": value,
            "feasible": _feasible(trial),
            "sparsity": trial.user_attrs.get("sparsity"),
            "test_acc": trial.user_attrs.get("test_acc"),
            "nonzero": trial.user_attrs.get("nonzero_params"),
            "checkpoint": trial.user_attrs.get("checkpoint"),
            "params": dict(trial.params),
        })  # fmt: skip
    return rows


def _importances(study: optuna.Study) -> dict[str, float]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        return optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError):  # too few distinct values to fit the forest
        return {}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ranked = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"] and r["value"]]
    return max(ranked, key=lambda r: r["value"]) if ranked else None


def _markdown(study: optuna.Study, rows, best, dense, ensemble, images, top_k: int) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned early, "
        f"{counts['FAIL']} failed trials.",
        "",
    ]
    if dense:
        lines += [f"Dense reference: val_acc {dense.get('val_acc', float('nan')):.4f}, "
                  f"test_acc {dense.get('test_acc', float('nan')):.4f}.", ""]  # fmt: skip
    ranked = sorted(
        [r for r in rows if r["state"] == "COMPLETE" and r["feasible"] and r["value"]],
        key=lambda r: -r["value"],
    )[:top_k]
    lines += ["| trial | val_acc | test_acc | sparsity | nonzero | recipe |",
              "|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in ranked:
        recipe = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["params"].items())  # fmt: skip
        lines.append(
            f"| {r['number']} | {r['value']:.4f} | {r['test_acc'] or float('nan'):.4f} | "
            f"{r['sparsity'] or 0:.4f} | {r['nonzero'] or 0:,} | {recipe} |"
        )
    if best is None:
        lines.append("\nNo feasible complete trial yet.")
    if ensemble:
        lines += ["", "## Ensemble", "", "| model | test_acc | nonzero |", "|---|---:|---:|"]
        lines += [f"| {r['name']} | {r['test_acc']:.4f} | {r['nonzero']:,} |" for r in ensemble]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({path.name})" for name, path in images.items()]
    return "\n".join(lines) + "\n"


def build_report(
    study: optuna.Study,
    folder: str | Path,
    ensemble: list[dict[str, Any]] | None = None,
    top_k: int = 5,
    log_to_mlflow: bool = True,
) -> Report:
    """Write figures and `report.md` for `study` into `folder`; log them to its parent run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _trial_rows(study)
    best = _best(rows)
    dense = study.user_attrs.get("dense_reference")
    images: dict[str, Path] = {}
    finished = [r for r in rows if r["state"] == "COMPLETE" and r["sparsity"] is not None]
    if finished:
        points = [{"sparsity": r["sparsity"], "acc": r["value"], "feasible": r["feasible"]}
                  for r in finished if r["value"] is not None]  # fmt: skip
        images["accuracy_vs_sparsity"] = figures.accuracy_vs_sparsity(
            points, dense.get("val_acc") if dense else None, folder / "accuracy_vs_sparsity.png"
        )
    if best and best["checkpoint"] and Path(best["checkpoint"]).is_file():
        images["layer_sparsity"] = figures.layer_sparsity(
            layer_sparsity_of(best["checkpoint"]), folder / "layer_sparsity.png",
            f"Per-layer sparsity of the best trial (#{best['number']})",
        )  # fmt: skip
    if rows:
        images["history"] = figures.optimisation_history(rows, folder / "history.png")
    importances = _importances(study)
    if importances:
        images["importances"] = figures.parameter_importances(
            importances, folder / "importances.png"
        )
    if ensemble:
        images["ensemble"] = figures.ensemble_comparison(ensemble, folder / "ensemble.png")
    markdown = folder / "report.md"
    markdown.write_text(_markdown(study, rows, best, dense, ensemble, images, top_k))
    report = Report(folder=folder, markdown=markdown, figures=images, rows=rows)
    if log_to_mlflow:
        _log(study, report)
    return report


def _log(study: optuna.Study, report: Report) -> None:
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    uri = study.user_attrs.get("tracking_uri")
    if not run_id or not uri:
        return
    client = MlflowClient(uri)
    for path in [report.markdown, *report.figures.values()]:
        client.log_artifact(run_id, str(path), artifact_path="report")


def latest_ensemble(folder: Path, study_name: str) -> list[dict[str, Any]] | None:
    """Comparison rows of the newest saved ensemble of the study, if any."""
    files = sorted(folder.glob(f"{study_name}-*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    saved = torch.load(files[-1], map_location="cpu", weights_only=True)
    evaluation = saved.get("info", {}).get("evaluation")
    if not evaluation:
        return None
    costs = evaluation["costs"]
    rows = [{"name": f"ensemble ({saved['info'].get('weighting', '')})", "kind": "ensemble",
             "test_acc": evaluation["ensemble"]["test_acc"],
             "nonzero": int(costs["nonzero_params"])}]  # fmt: skip
    rows += [{"name": r["name"], "kind": "member", "test_acc": r["test_acc"],
              "nonzero": int(r["nonzero_params"])} for r in evaluation["rows"]]  # fmt: skip
    return rows


def run_report(cfg) -> Report:
    """The command: open the study named by `search.*`, write the report, log it."""
    from lightning_prune.search import load_study

    study = load_study(cfg.search.storage, cfg.search.study_name)
    ensemble = latest_ensemble(Path(cfg.output_dir) / "ensembles", study.study_name)
    dense = study.user_attrs.get("dense_reference")
    if ensemble and dense and dense.get("test_acc") is not None:
        ensemble.append({"name": "dense model", "kind": "dense", "test_acc": dense["test_acc"],
                         "nonzero": int(dense["params"])})  # fmt: skip
    folder = Path(cfg.output_dir) / "reports" / study.study_name
    return build_report(study, folder, ensemble=ensemble, top_k=int(cfg.search.top_k))
