"""`lightning-prune report`: a study's figures and report.md, also logged to its MLflow run."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.checkpoint import load_weights
from lightning_prune.ensembles import SelectionError, ensemble_folder, latest_ensemble_info
from lightning_prune.ensembles.selection import resolve_checkpoint
from lightning_prune.report import figures
from lightning_prune.report.tables import (
    fmt,
    last_value,
    markdown_table,
    stop_reason_of,
    stopped_trials,
)
from lightning_prune.search import (
    StudyAttr,
    TrialAttr,
    checkpoint_path,
    checkpoint_roots,
    is_feasible,
    load_study,
    optuna_figures,
    ranked_trials,
    state_counts,
    tracking_of,
)
from lightning_prune.search.pruners import stop_kind

MIN_TRIALS_FOR_IMPORTANCES = 3  # fewer complete trials cannot tell parameters apart


@dataclass
class Report:
    """Where the report went and what it said."""

    folder: Path
    markdown: Path
    figures: dict[str, Path] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing or came from elsewhere


def layer_sparsity_of(checkpoint: str | Path) -> dict[str, float]:
    """Zero fraction of each weight matrix/kernel in a saved model (no model code needed)."""
    return {
        name.removesuffix(".weight"): float((tensor == 0).float().mean())
        for name, tensor in load_weights(checkpoint).items()
        if name.endswith("weight") and tensor.dim() > 1
    }


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain row per finished trial (complete, pruned or failed); `stop_reason` only for
    a pruned one."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        {"number": t.number, "state": t.state.name, "value": last_value(t),
         "feasible": is_feasible(t), "stop_reason": stop_reason_of(t),
         "sparsity": t.user_attrs.get(TrialAttr.SPARSITY),
         "test_acc": t.user_attrs.get(TrialAttr.TEST_ACC),
         "nonzero": t.user_attrs.get(TrialAttr.NONZERO_PARAMS),
         "checkpoint": t.user_attrs.get(TrialAttr.CHECKPOINT), "params": dict(t.params)}
        for t in study.get_trials(deepcopy=False, states=finished)
    ]  # fmt: skip


def history_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history figure's points: every trial with a value, grouped by how it ended and a
    stopped one by why (`stop_kind`); Optuna's own history draws complete trials only."""
    points = []
    for row in rows:
        if row["value"] is None:
            continue
        if row["state"] == "PRUNED":
            group = f"stopped: {stop_kind(row['stop_reason'])}"
        elif row["state"] == "COMPLETE":
            group = "complete" if row["feasible"] else "complete (infeasible)"
        else:
            group = "failed"
        points.append({"number": row["number"], "value": row["value"], "group": group})
    return points


def _optuna_images(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """Optuna's parameter importances (the same plot the search logs)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        return {}
    names = {"param_importances": "importances"}
    images = {}
    for name, figure in optuna_figures(study, names).items():
        images[names[name]] = figures.save(figure, folder / f"{names[name]}.png")
    return images


def _best_layers(
    study: optuna.Study, best: FrozenTrial, roots: list[Path], notes: list[str]
) -> dict[str, float]:
    """Per-layer sparsity of the best trial's model: the local file, else the copy on the
    tracking server (the trial may have run on another machine), else a note saying why not."""
    local = checkpoint_path(best, roots)
    uri = tracking_of(study).uri
    with tempfile.TemporaryDirectory(prefix="lp-report-") as scratch:
        try:
            path = resolve_checkpoint(best, uri, Path(scratch), roots)
        except SelectionError as err:
            notes.append(f"No per-layer sparsity figure: {err}")
            return {}
        if local and local.resolve() != path.resolve():
            run_id = best.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
            notes.append(
                f"Per-layer sparsity of trial #{best.number} read from MLflow run {run_id} at "
                f"{uri} (no local file {local})"
            )
        return layer_sparsity_of(path)


def _images(study, rows, best, dense, ensemble, folder: Path, roots, notes) -> dict[str, Path]:
    images: dict[str, Path] = {}
    done = [r for r in rows if r["state"] == "COMPLETE" and r["sparsity"] is not None]
    points = [{"sparsity": r["sparsity"], "acc": r["value"], "feasible": r["feasible"]}
              for r in done if r["value"] is not None]  # fmt: skip
    if points:
        images["accuracy_vs_sparsity"] = figures.accuracy_vs_sparsity(
            points, dense.get("val_acc") if dense else None, folder / "accuracy_vs_sparsity.png"
        )
    if best is not None:
        layers = _best_layers(study, best, roots, notes)
        if layers:
            images["layer_sparsity"] = figures.layer_sparsity(
                layers, folder / "layer_sparsity.png",
                f"Per-layer sparsity of the best trial (#{best.number})",
            )  # fmt: skip
    points = history_points(rows)
    if points:
        images["history"] = figures.study_history(points, folder / "history.png")
    if rows:
        images.update(_optuna_images(study, folder))
    if ensemble:
        images["ensemble"] = figures.ensemble_comparison(ensemble, folder / "ensemble.png")
    return images


def _markdown(study, ranked, dense, ensemble, images, top_k: int, notes) -> str:
    counts = state_counts(study)
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"{counts['complete']} complete, {counts['pruned']} pruned early, "
        f"{counts['fail']} failed trials.",
        "",
    ]
    if dense:
        lines += [f"Dense reference: val_acc {fmt(dense.get('val_acc'))}, "
                  f"test_acc {fmt(dense.get('test_acc'))}.", ""]  # fmt: skip
    lines += markdown_table(ranked[:top_k] + stopped_trials(study, top_k))
    if not ranked:
        lines.append("\nNo feasible complete trial yet.")
    if ensemble:
        lines += ["", "## Ensemble", "", "| model | weight | test_acc | nonzero |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r['name']} | {fmt(r.get('weight'), 3)} | {r['test_acc']:.4f} | "
                  f"{r['nonzero']:,} |" for r in ensemble]  # fmt: skip
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({path.name})" for name, path in images.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def build_report(
    study: optuna.Study,
    folder: str | Path,
    ensemble: list[dict[str, Any]] | None = None,
    top_k: int = 5,
    log_to_mlflow: bool = True,
    output_dir: str | Path | None = None,
) -> Report:
    """Write figures and `report.md` for `study` into `folder`; log them to its parent run.
    Checkpoints are looked up in the study folder under `output_dir` (a copied `runs/`)
    first, then where the search wrote them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    roots = checkpoint_roots(study, output_dir)
    rows = trial_rows(study)
    ranked = ranked_trials(study)
    dense = study.user_attrs.get(StudyAttr.DENSE_REFERENCE)
    notes: list[str] = []
    best = ranked[0] if ranked else None
    images = _images(study, rows, best, dense, ensemble, folder, roots, notes)
    markdown = folder / "report.md"
    markdown.write_text(_markdown(study, ranked, dense, ensemble, images, top_k, notes))
    report = Report(folder=folder, markdown=markdown, figures=images, rows=rows, notes=notes)
    if log_to_mlflow:
        _log(study, report)
    return report


def _log(study: optuna.Study, report: Report) -> None:
    tracking = tracking_of(study)
    if not tracking.parent_run_id or not tracking.uri:
        return
    client = MlflowClient(tracking.uri)
    for path in [report.markdown, *report.figures.values()]:
        client.log_artifact(tracking.parent_run_id, str(path), artifact_path="report")


def ensemble_rows(info: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Comparison rows (ensemble, then each member) from a saved ensemble's info."""
    evaluation = (info or {}).get("evaluation")
    if not evaluation:
        return None
    costs = evaluation["costs"]
    rows = [{"name": f"ensemble ({info.get('weighting', '')})", "kind": "ensemble",
             "test_acc": evaluation["ensemble"]["test_acc"],
             "nonzero": int(costs["nonzero_params"])}]  # fmt: skip
    rows += [{"name": r["name"], "kind": "member", "test_acc": r["test_acc"],
              "weight": r.get("weight"), "nonzero": int(r["nonzero_params"])}
             for r in evaluation["rows"]]  # fmt: skip
    return rows


def run_report(cfg, study: optuna.Study | None = None) -> Report:
    """The command: the study named by `search.*` (unless given) and its newest ensemble."""
    if study is None:
        study = load_study(cfg.search.storage, cfg.search.study_name)
    saved = latest_ensemble_info(ensemble_folder(cfg.output_dir), study.study_name)
    ensemble = ensemble_rows(saved)
    dense = study.user_attrs.get(StudyAttr.DENSE_REFERENCE)
    if ensemble and dense and dense.get("test_acc") is not None:
        ensemble.append({"name": "dense model", "kind": "dense", "test_acc": dense["test_acc"],
                         "nonzero": int(dense["params"])})  # fmt: skip
    folder = Path(cfg.output_dir) / "reports" / study.study_name
    report = build_report(study, folder, ensemble=ensemble, top_k=int(cfg.search.top_k),
                          output_dir=cfg.output_dir)  # fmt: skip
    for note in report.notes:
        print(f"lightning-prune report: note: {note}", file=sys.stderr)
    return report
