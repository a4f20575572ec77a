"""Choosing ensemble members: the top-k finished, feasible trials of an Optuna study.

Read-only on the study: trials are listed and their checkpoints loaded, nothing is
written back. Diversity can favour distinct recipes or members that disagree on
validation data, because averaging near-identical models gains nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from lightning_prune.ensembles.predictions import accuracy, agreement, collect_log_probs
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from lightning_prune.checkpoint import load_model

DIVERSITIES = ("none", "recipe", "agreement")
MEMBER_ATTRS = ("mlflow_run_id", "sparsity", "nonzero_params", "flops", "val_acc", "test_acc")


class SelectionError(ValueError):
    """The study cannot provide the requested members (named study, trial or file)."""


@dataclass
class Member:
    """One loaded ensemble member and the trial it came from."""

    trial: int
    values: list[float]
    params: dict[str, Any]
    attrs: dict[str, Any]
    checkpoint: Path
    model: nn.Module
    model_config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"trial {self.trial}"

    def summary(self) -> dict[str, Any]:
        """Plain-typed description (for the artifact, MLflow and tables)."""
        return {"trial": self.trial, "values": list(self.values), "params": dict(self.params),
                **{k: self.attrs[k] for k in MEMBER_ATTRS if k in self.attrs}}  # fmt: skip


@dataclass
class Selection:
    """The chosen members, plus notes the user should read (e.g. fewer trials than k)."""

    members: list[Member]
    notes: list[str] = field(default_factory=list)


def _local_file(storage: str) -> tuple[Path | None, bool]:
    """(file, is_journal) of a local storage, as `search.storage` spells it; (None, False)."""
    for prefix in ("journal:///", "journal://"):
        if storage.startswith(prefix):
            return Path(storage.removeprefix(prefix)), True
    if "://" not in storage and storage.endswith(".journal"):
        return Path(storage), True
    if storage.startswith("sqlite:///"):
        return Path(storage.removeprefix("sqlite:///")), False
    return None, False


def _storage(storage: str) -> str | optuna.storages.BaseStorage:
    """The storage as Optuna takes it; a missing local file is an error, not a new study."""
    path, journal = _local_file(storage)
    if path is not None and not path.exists():
        raise SelectionError(f"no Optuna storage at {storage} (run `lightning-prune search` first)")
    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return storage


def open_study(storage: str, study_name: str | None) -> optuna.Study:
    """Load an existing study (never create one); errors name the studies that exist.

    `storage`: sqlite:///..., journal:///... (or a path ending in .journal), postgresql://...
    """
    opened = _storage(storage)
    names = optuna.study.get_all_study_names(storage=opened)
    if study_name is None:
        if len(names) != 1:
            raise SelectionError(
                f"set ensemble.study_name: storage {storage} holds studies {names}"
            )
        study_name = names[0]
    if study_name not in names:
        raise SelectionError(f"no study {study_name!r} in {storage}; studies there: {names}")
    return optuna.load_study(study_name=study_name, storage=opened)


def is_feasible(trial: FrozenTrial) -> bool:
    """Feasible when every constraint value (Optuna's `trial.set_constraint`) is <= 0."""
    return all(value <= 0 for value in trial.constraints.values())


def _oriented(trial: FrozenTrial, directions: list[StudyDirection]) -> tuple[float, ...]:
    """Objective values turned so that larger is better for every objective."""
    sign = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    return tuple(s * v for s, v in zip(sign, trial.values, strict=True))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished, feasible trials, best first.

    Single objective: by value in the study's direction. Several objectives: by Pareto
    front (non-dominated first), then by the first objective (validation accuracy).
    """
    directions = list(study.directions)
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and all(math.isfinite(v) for v in t.values) and is_feasible(t)
    ]  # fmt: skip
    scored = {t.number: _oriented(t, directions) for t in trials}
    front = {}
    for t in trials:
        front[t.number] = sum(_dominates(scored[o.number], scored[t.number]) for o in trials)
    if len(directions) == 1:
        return sorted(trials, key=lambda t: (-scored[t.number][0], t.number))
    return sorted(trials, key=lambda t: (front[t.number] > 0, -scored[t.number][0], t.number))


def recipe_key(trial: FrozenTrial) -> tuple:
    """The recipe of a trial: its categorical choices (criterion, granularity, schedule...).

    Without categorical parameters, all parameters rounded to 2 significant digits.
    """
    categorical = {
        name: trial.params[name]
        for name, dist in trial.distributions.items()
        if isinstance(dist, CategoricalDistribution)
    }
    if categorical:
        return tuple(sorted(categorical.items()))
    return tuple(sorted((k, f"{v:.2g}" if isinstance(v, float) else v)
                        for k, v in trial.params.items()))  # fmt: skip


def _by_recipe(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """Best trial of each distinct recipe first, then the next best to fill k."""
    seen, distinct, rest = set(), [], []
    for trial in trials:
        key = recipe_key(trial)
        (rest if key in seen else distinct).append(trial)
        seen.add(key)
    return (distinct + rest)[:k]


def resolve_checkpoint(trial: FrozenTrial, tracking_uri: str | None, download_dir: Path) -> Path:
    """The trial's model.pt: the recorded local path, else its MLflow artifact, else an error."""
    local = trial.user_attrs.get("checkpoint")
    if local and Path(local).is_file():
        return Path(local)
    run_id = trial.user_attrs.get("mlflow_run_id")
    problem = f"local file {local!r} is missing" if local else "no `checkpoint` user attr"
    if not run_id or not tracking_uri:
        raise SelectionError(
            f"trial {trial.number}: checkpoint not found ({problem}; no MLflow run to download "
            f"from: mlflow_run_id={run_id!r}, tracking_uri={tracking_uri!r})"
        )
    import mlflow

    target = download_dir / f"trial-{trial.number}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model.pt", tracking_uri=tracking_uri, dst_path=str(target)
        )
    except Exception as err:  # MLflow raises several types for a missing run or file
        raise SelectionError(
            f"trial {trial.number}: checkpoint not found ({problem}; MLflow run {run_id} at "
            f"{tracking_uri} has no model.pt artifact: {type(err).__name__}: {err})"
        ) from None
    return Path(path)


def load_member(trial: FrozenTrial, tracking_uri: str | None, download_dir: Path) -> Member:
    """Load one trial's pruned checkpoint as a Member."""
    path = resolve_checkpoint(trial, tracking_uri, download_dir)
    try:
        model, info = load_model(path)
    except Exception as err:
        raise SelectionError(f"trial {trial.number}: cannot load {path}: {err}") from None
    return Member(
        trial=trial.number,
        values=list(trial.values),
        params=dict(trial.params),
        attrs=dict(trial.user_attrs),
        checkpoint=path,
        model=model,
        model_config=info["model_config"],
    )


def _by_agreement(
    members: list[Member], val_loader: Iterable, k: int, weight: float
) -> list[Member]:
    """Greedy: start from the best; add the member with the best val accuracy minus
    `weight` x its mean prediction agreement with those already chosen."""
    log_probs, labels = collect_log_probs(
        [m.model for m in members], val_loader, [m.name for m in members]
    )
    acc = accuracy(log_probs, labels)
    agree = agreement(log_probs.argmax(-1))
    chosen = [0]
    while len(chosen) < min(k, len(members)):
        left = [i for i in range(len(members)) if i not in chosen]
        score = {i: float(acc[i] - weight * agree[i, chosen].mean()) for i in left}
        chosen.append(max(left, key=lambda i: (score[i], -i)))
    return [members[i] for i in chosen]


def select_members(
    study: optuna.Study,
    k: int,
    *,
    diversity: str = "none",
    val_loader: Iterable | None = None,
    pool: int | None = None,
    diversity_weight: float = 1.0,
    tracking_uri: str | None = None,
    download_dir: str | Path = "runs/ensembles/downloads",
) -> Selection:
    """Top-k finished, feasible trials of `study`, loaded from their checkpoints.

    Args:
        k: number of members wanted (>= 1); fewer are used, with a note, when fewer exist.
        diversity: "none" (top-k by objective), "recipe" (distinct categorical choices
            first) or "agreement" (low prediction agreement on `val_loader`).
        pool: candidates considered for "agreement" (default 2k).
        diversity_weight: accuracy traded per unit of mean agreement ("agreement").
        tracking_uri: MLflow store to download checkpoints from when a local file is gone
            (default: the study's `tracking_uri` user attr).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise SelectionError(f"ensemble.k must be a positive integer, got {k!r}")
    if diversity not in DIVERSITIES:
        raise SelectionError(f"ensemble.diversity must be one of {DIVERSITIES}, got {diversity!r}")
    if diversity == "agreement" and val_loader is None:
        raise SelectionError("ensemble.diversity=agreement needs validation data (val_loader)")
    ranked = ranked_trials(study)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not ranked:
        raise SelectionError(
            f"study {study.study_name!r} has no finished feasible trials "
            f"({finished} finished, {len(study.trials)} in all): nothing to ensemble"
        )
    notes = []
    if len(ranked) < k:
        notes.append(f"asked for k={k} members but study {study.study_name!r} has only "
                     f"{len(ranked)} finished feasible trial(s); using {len(ranked)}")  # fmt: skip
    if finished > len(ranked):
        notes.append(f"skipped {finished - len(ranked)} finished trial(s) that are infeasible")
    uri = tracking_uri or study.user_attrs.get("tracking_uri")
    folder = Path(download_dir)
    if diversity == "agreement":
        candidates = ranked[: max(pool or 2 * k, k)]
        loaded = [load_member(t, uri, folder) for t in candidates]
        return Selection(_by_agreement(loaded, val_loader, k, diversity_weight), notes)
    chosen = _by_recipe(ranked, k) if diversity == "recipe" else ranked[:k]
    return Selection([load_member(t, uri, folder) for t in chosen], notes)
