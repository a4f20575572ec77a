"""Choosing ensemble members: the top-k finished, feasible trials of an Optuna study.

Read-only on the study: trials are listed and their checkpoints loaded, nothing is
written back. Diversity can favour distinct recipes or members that disagree on
validation data, because averaging near-identical models gains nothing. Duplicates are
never taken: a member whose weights (or, with "agreement", whose validation predictions)
equal a chosen one's is left out with a note, and the next-ranked trial is taken.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning_prune.ensembles.predictions import accuracy, agreement, collect_log_probs
from lightning_prune.search.contract import (
    CHECKPOINT_NAME,
    StudyNotFoundError,
    TrialAttr,
    checkpoint_path,
    checkpoint_roots,
    load_study,
    ranked_trials,
    tracking_of,
)
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from lightning_prune.checkpoint import load_model

DIVERSITIES = ("none", "recipe", "agreement")


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
                **{k: self.attrs[k] for k in TrialAttr.RESULTS if k in self.attrs}}  # fmt: skip


@dataclass
class Selection:
    """The chosen members, plus notes the user should read (e.g. fewer trials than k)."""

    members: list[Member]
    notes: list[str] = field(default_factory=list)


def open_study(storage: str, study_name: str | None) -> optuna.Study:
    """Load an existing study (never create one); errors name the studies that exist.

    `storage`: sqlite:///..., journal://rel/x.journal or journal:///abs/x.journal (or a path
    ending in .journal), postgresql://...
    """
    try:
        return load_study(storage, study_name, create_storage=False)
    except StudyNotFoundError as err:
        raise SelectionError(str(err)) from None


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


def resolve_checkpoint(
    trial: FrozenTrial, tracking_uri: str | None, download_dir: Path, roots: list[Path]
) -> Path:
    """The trial's model.pt: the local file (under one of the study folders `roots`, see
    `checkpoint_path`), else its MLflow artifact (the trial ran on another machine), else an
    error. MLflow comes second: its artifact URIs are absolute, so a copied folder's are not."""
    local = checkpoint_path(trial, roots)
    if local is not None and local.is_file():
        return local
    run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
    problem = f"local file {str(local)!r} is missing" if local else "no `checkpoint` user attr"
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
            run_id=run_id,
            artifact_path=CHECKPOINT_NAME,
            tracking_uri=tracking_uri,
            dst_path=str(target),
        )
    except Exception as err:  # MLflow raises several types for a missing run or file
        raise SelectionError(
            f"trial {trial.number}: checkpoint not found ({problem}; MLflow run {run_id} at "
            f"{tracking_uri} has no {CHECKPOINT_NAME} artifact: {type(err).__name__}: {err})"
        ) from None
    return Path(path)


def load_member(
    trial: FrozenTrial,
    tracking_uri: str | None,
    download_dir: Path,
    allow: list[str] | None = None,
    roots: list[Path] | None = None,
) -> Member:
    """Load one trial's pruned checkpoint as a Member (`allow`: extra `_target_` patterns;
    `roots`: the study folders to find it in, `checkpoint_roots`)."""
    path = resolve_checkpoint(trial, tracking_uri, download_dir, roots or [])
    try:
        model, info = load_model(path, allow=allow)
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


def fingerprint(model: nn.Module) -> str:
    """A digest of every tensor in the model's state dict: equal digests, equal models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _duplicate_note(left_out: int, kept: Member, same_params: bool, what: str) -> str:
    why = f"same parameters and {what}" if same_params else what
    return (
        f"left out trial {left_out}: a duplicate of trial {kept.trial} ({why}); "
        "took the next-ranked trial instead"
    )


def _distinct(trials: list[FrozenTrial], limit: int, load, notes: list[str]) -> list[Member]:
    """Load `trials` in order (`load(trial)`) until `limit` members with distinct weights."""
    kept: dict[str, Member] = {}
    for trial in trials:
        if len(kept) == limit:
            break
        member = load(trial)
        key = fingerprint(member.model)
        if key in kept:
            same = kept[key].params == member.params
            notes.append(_duplicate_note(trial.number, kept[key], same, "identical weights"))
            continue
        kept[key] = member
    return list(kept.values())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal log-probabilities up to float rounding (e.g. the same network, units reordered)."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _by_agreement(
    members: list[Member], val_loader: Iterable, k: int, weight: float, notes: list[str]
) -> list[Member]:
    """Greedy: start from the best; add the member with the best val accuracy minus
    `weight` x its mean prediction agreement with those already chosen. A member that
    predicts exactly what a chosen one does is never added."""
    log_probs, labels = collect_log_probs(
        [m.model for m in members], val_loader, [m.name for m in members]
    )
    acc = accuracy(log_probs, labels)
    agree = agreement(log_probs.argmax(-1))
    chosen, copies = [0], set()
    while len(chosen) < min(k, len(members) - len(copies)):
        left = [i for i in range(len(members)) if i not in chosen and i not in copies]
        score = {i: float(acc[i] - weight * agree[i, chosen].mean()) for i in left}
        pick = max(left, key=lambda i: (score[i], -i))
        twin = next((j for j in chosen if _same(log_probs[pick], log_probs[j])), None)
        if twin is None:
            chosen.append(pick)
            continue
        copies.add(pick)
        same = members[pick].params == members[twin].params
        notes.append(
            _duplicate_note(members[pick].trial, members[twin], same, "identical predictions")
        )
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
    allow: list[str] | None = None,
    output_dir: str | Path | None = None,
) -> Selection:
    """Top-k finished, feasible trials of `study`, loaded from their checkpoints.

    Args:
        k: number of members wanted (>= 1); fewer are used, with a note, when fewer distinct
            ones exist.
        diversity: "none" (top-k by objective), "recipe" (distinct categorical choices
            first) or "agreement" (low prediction agreement on `val_loader`).
        pool: candidates considered for "agreement" (default 2k).
        diversity_weight: accuracy traded per unit of mean agreement ("agreement").
        tracking_uri: MLflow store to download checkpoints from when a local file is gone
            (default: the study's `tracking_uri` user attr).
        allow: `_target_` patterns the checkpoints may build besides the project's own.
        output_dir: the reader's `output_dir`: checkpoints are looked up in its study folder
            first (a copied `runs/`), then in the one the search recorded.
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
    uri = tracking_uri or tracking_of(study).uri
    folder = Path(download_dir)
    roots = checkpoint_roots(study, output_dir)

    def load(trial: FrozenTrial) -> Member:
        return load_member(trial, uri, folder, allow, roots)

    if diversity == "agreement":
        loaded = _distinct(ranked, max(pool or 2 * k, k), load, notes)
        chosen = _by_agreement(loaded, val_loader, k, diversity_weight, notes)
    else:
        order = _by_recipe(ranked, len(ranked)) if diversity == "recipe" else ranked
        chosen = _distinct(order, k, load, notes)
    if len(ranked) >= k > len(chosen):
        notes.append(
            f"asked for k={k} members but study {study.study_name!r} has only {len(chosen)} "
            f"distinct finished feasible trial(s); using {len(chosen)}"
        )
    return Selection(chosen, notes)
