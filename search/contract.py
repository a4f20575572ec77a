"""The study contract: what the search writes and what the ensembles, the report and the CLI read.

Written once, here: storage URLs, opening a study, the attribute keys of trials and studies,
which trials count, which are feasible and how they rank, and where the study's MLflow runs
are. Every reader goes through this module, so the two sides cannot drift apart.

What a study holds:

- `trial.value` (one objective) is the final `val_acc`; a Pareto study's `trial.values` are
  [val_acc, sparsity] (or [val_acc, latency_ms]).
- Feasibility uses Optuna's constraints: `trial.constraints` maps each stated demand
  (`min_sparsity`, `max_nonzero_params`, `max_flops`, `max_latency_ms`) to a violation,
  feasible when every value is <= 0 (also stored as `TrialAttr.FEASIBLE`).
- User attributes of each trial and of the study: `TrialAttr` and `StudyAttr` below.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from lightning_prune.search.storage import (  # noqa: F401  (re-exported: the contract's storage part)
    DEFAULT_STORAGE,
    SERVER_SCHEMES,
    StorageURL,
    check_storage,
    has_heartbeats,
    make_storage,
    parse_storage,
    quiet_experimental,
)
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryFailedTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.tracking import sqlite_file

CHECKPOINT_NAME = "model.pt"  # a trial's pruned model: in its folder and as its MLflow artifact

# Optuna warns on every call of these public (but "experimental") accessors; we rely on them.
warnings.filterwarnings(
    "ignore", r".*Callback\.(retry_history|retried_trial_number) is experimental",
    ExperimentalWarning,
)  # fmt: skip


class TrialAttr:
    """Keys of `trial.user_attrs`.

    A COMPLETE trial has CHECKPOINT (its `model.pt`, saved with
    `lightning_prune.checkpoint.save_model`), MLFLOW_RUN_ID, the measured results (`RESULTS`),
    FEASIBLE, CURVE, EPOCHS, DURATION_S and WORKER. A PRUNED trial has the same minus
    CHECKPOINT and TEST_ACC, plus PRUNED_AT_STEP and PRUNED_REASON. A FAIL trial has
    FAIL_REASON (and INTERRUPTED after Ctrl-C, SURPLUS when other workers filled the study,
    DUPLICATE_OF when its sampled parameters repeated an earlier trial's).

    CHECKPOINT is relative to the study's folder (`trial_7/model.pt` under `study_root`), so a
    copied `runs/` folder still opens; older studies hold absolute paths. Read it with
    `checkpoint_path`.

    Read the curve with `curve_of`: while a trial runs it is stored one point per validation
    (`curve/0000`, `curve/0001`, ...: a write that does not grow with the curve), and once
    its fit ends also whole under CURVE.
    """

    CHECKPOINT = "checkpoint"
    MLFLOW_RUN_ID = "mlflow_run_id"
    SPARSITY = "sparsity"
    NONZERO_PARAMS = "nonzero_params"
    FLOPS = "flops"
    LATENCY_MS = "latency_ms"  # only when a demand or the Pareto objective needs it
    MACS_FRACTION = "macs_fraction"  # gated trials: mean executed MACs / the ungated model's
    VAL_ACC = "val_acc"
    TEST_ACC = "test_acc"
    FEASIBLE = "feasible"
    CURVE = "curve"  # one `CurvePoint` dict per validation, written when the fit ends
    CURVE_POINT = "curve/"  # + 4-digit validation index: one `CurvePoint`, while it runs
    EPOCHS = "epochs"
    DURATION_S = "duration_s"
    WORKER = "worker"  # host:pid of the process that ran it
    PRUNED_AT_STEP = "pruned_at_step"
    PRUNED_REASON = "pruned_reason"
    FAIL_REASON = "fail_reason"
    INTERRUPTED = "interrupted"
    SURPLUS = "surplus"
    DUPLICATE_OF = "duplicate_of"  # number of the earlier trial with the same parameters
    INVOCATION = "invocation"  # id of the search command that ran it (its `search.n_trials`)

    RESULTS = (MLFLOW_RUN_ID, SPARSITY, NONZERO_PARAMS, FLOPS, VAL_ACC, TEST_ACC)


class CurvePoint:
    """Keys of one point of `TrialAttr.CURVE`; the monitored metric is keyed by its own name."""

    STEP = "step"  # the trainer's global step
    EPOCH = "epoch"
    SPARSITY = "sparsity"
    RAMP_PROGRESS = "ramp_progress"


def curve_point_key(index: int) -> str:
    """The user attribute of validation `index`'s curve point, e.g. `curve/0007`."""
    return f"{TrialAttr.CURVE_POINT}{index:04d}"


def curve_of(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A trial's curve: the whole `curve` attribute once written, else the points so far."""
    attrs = trial.user_attrs
    if attrs.get(TrialAttr.CURVE):
        return list(attrs[TrialAttr.CURVE])
    points = {
        int(key.removeprefix(TrialAttr.CURVE_POINT)): value
        for key, value in attrs.items()
        if key.startswith(TrialAttr.CURVE_POINT) and key[len(TrialAttr.CURVE_POINT) :].isdigit()
    }
    return [points[index] for index in sorted(points)]


class StudyAttr:
    """Keys of `study.user_attrs`."""

    MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"
    TRACKING_URI = "tracking_uri"
    TRACKING_CWD = "tracking_cwd"  # the folder a relative TRACKING_URI was given from
    EXPERIMENT = "experiment"
    CONFIG = "config"  # the whole resolved config of the search
    DENSE_REFERENCE = "dense_reference"  # {val_acc, test_acc, params, seconds}
    LAST_OUTCOME = "last_outcome"  # done | interrupted | terminated | timeout | incomplete | failed


# --- where a trial's checkpoint is -------------------------------------------------------


def study_root(output_dir: str | Path, study_name: str) -> Path:
    """A study's folder, `<output_dir>/studies/<study_name>`, holding `trial_<n>/model.pt`.
    Checkpoints are recorded relative to it, so a copied `runs/` folder still opens."""
    return Path(output_dir) / "studies" / study_name


def checkpoint_roots(study: optuna.Study, output_dir: str | Path | None = None) -> list[Path]:
    """Study folders to look in: under the reader's `output_dir` first (where a copied
    folder is now), then under the `output_dir` the search recorded."""
    recorded = (study.user_attrs.get(StudyAttr.CONFIG) or {}).get("output_dir")
    roots = [study_root(d, study.study_name) for d in (output_dir, recorded) if d]
    return list(dict.fromkeys(roots))


def checkpoint_path(trial: FrozenTrial, roots: list[Path]) -> Path | None:
    """The trial's `model.pt` on this machine; None when it recorded none.

    A relative record is joined to the first root holding the file. An absolute one (older
    studies) is kept while the file exists, else its `trial_<n>/model.pt` tail is looked up
    under the roots. With no file anywhere, the first candidate (for the error message).
    """
    stored = trial.user_attrs.get(TrialAttr.CHECKPOINT)
    if not stored:
        return None
    path = Path(stored)
    if path.is_absolute():
        if path.is_file() or not roots:
            return path
        path = Path(path.parent.name, path.name)
    candidates = [root / path for root in roots] or [path]
    return next((c for c in candidates if c.is_file()), candidates[0])


# --- opening a study ---------------------------------------------------------------------


class StudyNotFoundError(KeyError):
    """No storage at the URL, or no such study in it; the message names the studies there."""

    def __str__(self) -> str:
        return str(self.args[0])


def load_study(
    storage: str, study_name: str | None = None, *, create_storage: bool = True
) -> optuna.Study:
    """Open an existing study (never create one); `study_name=None` takes the storage's only
    study. Raises StudyNotFoundError (a KeyError) naming the studies there.

    A missing local storage file is created empty, as Optuna does, unless `create_storage` is
    False (then it is an error). Creating it lets a reader poll for a study that a search is
    about to create without racing that search for the new database's schema.
    """
    location = parse_storage(storage)
    if not create_storage and location.path is not None and not location.path.exists():
        raise StudyNotFoundError(
            f"no Optuna storage at {storage} (run `lightning-prune search` first)"
        )
    opened = make_storage(storage, heartbeat_interval=None)
    names = optuna.study.get_all_study_names(storage=opened)
    if study_name is None:
        if len(names) != 1:
            raise StudyNotFoundError(f"name the study: storage {storage} holds studies {names}")
        study_name = names[0]
    if study_name not in names:
        raise StudyNotFoundError(f"no study {study_name!r} in {storage}; studies there: {names}")
    return optuna.load_study(study_name=study_name, storage=opened)


# --- which trials count, are feasible, and win -------------------------------------------


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of FAIL trials that were queued again (their retry stands in for them)."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(RetryFailedTrialCallback.retry_history(trial))
    return numbers


def is_retry(trial: FrozenTrial) -> bool:
    """True for a copy queued in place of a failed trial."""
    return RetryFailedTrialCallback.retried_trial_number(trial) is not None


def _rerun(trial: FrozenTrial) -> bool:
    """A FAIL trial that never trained: interrupted, or its recipe repeated an earlier one."""
    attrs = trial.user_attrs
    return bool(attrs.get(TrialAttr.INTERRUPTED)) or TrialAttr.DUPLICATE_OF in attrs


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up `n_trials`: finished, pruned, running, queued, and failed ones
    that were not retried, interrupted or duplicates (those are re-run or re-sampled)."""
    retried = retried_numbers(trials)
    return [
        t for t in trials
        if not (t.state == TrialState.FAIL and (t.number in retried or _rerun(t)))
    ]  # fmt: skip


def state_counts(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> dict[str, int]:
    """complete / pruned / fail / running / waiting among counted trials, plus retried and
    duplicates (re-sampled repeats); `trials`: the study's trials when already read."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    counts = {name: 0 for name in ("complete", "pruned", "fail", "running", "waiting")}
    for trial in counted_trials(trials):
        key = trial.state.name.lower()
        if key in counts:
            counts[key] += 1
    counts["retried"] = len(retried_numbers(trials))
    counts["duplicates"] = sum(TrialAttr.DUPLICATE_OF in t.user_attrs for t in trials)
    return counts


def repeated_recipe(trials: list[FrozenTrial], number: int, params: dict) -> FrozenTrial | None:
    """The earliest trial before `number` that trained, trains or was pruned with exactly
    `params` (a replayed sampler seed); failed ones do not count (their retries repeat them)."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return next(
        (t for t in trials if t.number < number and t.state in live and t.params == params), None
    )


def is_feasible(trial: FrozenTrial) -> bool:
    """Feasible when every constraint value (Optuna's `trial.set_constraint`) is <= 0."""
    return all(value <= 0 for value in trial.constraints.values())


def _oriented(trial: FrozenTrial, directions: list[StudyDirection]) -> tuple[float, ...]:
    """Objective values turned so that larger is better for every objective."""
    sign = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    return tuple(s * v for s, v in zip(sign, trial.values, strict=True))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def _ranked(
    study: optuna.Study, trials: list[FrozenTrial] | None = None
) -> list[tuple[FrozenTrial, int]]:
    """(trial, how many trials dominate it) for finished feasible trials, best first."""
    directions = list(study.directions)
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = [
        t for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None
        and all(math.isfinite(v) for v in t.values) and is_feasible(t)
    ]  # fmt: skip
    scored = {t.number: _oriented(t, directions) for t in trials}
    beaten = {t.number: sum(_dominates(scored[o.number], scored[t.number]) for o in trials)
              for t in trials}  # fmt: skip
    if len(directions) == 1:
        order = sorted(trials, key=lambda t: (-scored[t.number][0], t.number))
    else:
        order = sorted(trials, key=lambda t: (beaten[t.number] > 0, -scored[t.number][0], t.number))
    return [(t, beaten[t.number]) for t in order]


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished, feasible trials, best first: by value in the study's direction; with several
    objectives the Pareto front (non-dominated) first, then by the first objective (val_acc)."""
    return [trial for trial, _ in _ranked(study)]


def best_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The winners: `ranked_trials` with one objective; the feasible Pareto front with several
    (`trials`: the study's trials when already read)."""
    ranked = _ranked(study, trials)
    if len(study.directions) == 1:
        return [trial for trial, _ in ranked]
    return [trial for trial, beaten in ranked if beaten == 0]


# --- where the study's runs are ----------------------------------------------------------


@dataclass(frozen=True)
class StudyTracking:
    """Where a study's MLflow runs are: one parent run, one child run per trial."""

    uri: str | None
    experiment: str | None
    parent_run_id: str | None


def tracking_of(study: optuna.Study) -> StudyTracking:
    """The tracking store, experiment and parent run the search recorded on the study.

    A relative SQLite store is read from the current folder when it is there (a study folder
    copied elsewhere and run from inside), else from the folder the search ran in."""
    attrs = study.user_attrs
    uri, base = attrs.get(StudyAttr.TRACKING_URI), attrs.get(StudyAttr.TRACKING_CWD)
    path = sqlite_file(uri) if uri else None
    moved = path is not None and not path.is_absolute() and not path.exists() and base
    if moved and (Path(base) / path).exists():
        uri = f"sqlite:///{Path(base) / path}"
    return StudyTracking(
        uri,
        attrs.get(StudyAttr.EXPERIMENT),
        attrs.get(StudyAttr.MLFLOW_PARENT_RUN_ID),
    )


def record_tracking(study: optuna.Study, tracking: StudyTracking) -> None:
    """Write where the study's runs are (the search does, once per parent run)."""
    study.set_user_attr(StudyAttr.MLFLOW_PARENT_RUN_ID, tracking.parent_run_id)
    study.set_user_attr(StudyAttr.TRACKING_URI, tracking.uri)
    study.set_user_attr(StudyAttr.TRACKING_CWD, os.getcwd())
    study.set_user_attr(StudyAttr.EXPERIMENT, tracking.experiment)
