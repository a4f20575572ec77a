"""A worker: ask the shared study for trials and run them until `n_trials` are done.

The same loop runs in the main process (workers=1), in local worker processes, and on
other machines joined through the same storage. `n_trials` counts the study's total, so
a resumed or joined study stops where it should; trials of dead workers are failed and
re-queued (heartbeats, or a local liveness check) and their copies run to completion.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import optuna
from lightning_prune.search import space
from lightning_prune.search.objective import SearchContext, SearchInterrupted, run_trial
from lightning_prune.search.pruners import build_pruner
from lightning_prune.search.storage import (
    _journal_path,
    counted_trials,
    fail_stale,
    file_lock,
    make_storage,
    quiet_experimental,
)
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lightning_prune.config import ConfigError

try:  # private in Optuna, but the only way to beat for trials run through ask/tell
    from optuna.storages._heartbeat import get_heartbeat_thread
except ImportError:  # pragma: no cover
    get_heartbeat_thread = None

POLL_S = 1.0


def directions(search: DictConfig) -> list[str]:
    if search.objective == "accuracy":
        return ["maximize"]
    if search.objective == "pareto":
        if search.pareto_with not in ("sparsity", "latency"):
            raise ConfigError(
                f"search.pareto_with must be sparsity or latency, got {search.pareto_with!r}"
            )
        return ["maximize", "maximize" if search.pareto_with == "sparsity" else "minimize"]
    raise ConfigError(f"search.objective must be accuracy or pareto, got {search.objective!r}")


def make_sampler(search: DictConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    seed = None if search.seed is None else int(search.seed) + offset
    if search.sampler == "tpe":
        with quiet_experimental():
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                n_startup_trials=min(10, max(4, search.n_trials // 4)),
            )
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    raise ConfigError(f"search.sampler must be tpe, random or nsga2, got {search.sampler!r}")


def make_pruner(search: DictConfig) -> optuna.pruners.BasePruner:
    """The configured pruner; none for multi-objective studies (Optuna cannot prune them)."""
    p = search.pruner
    if search.objective == "pareto":
        return optuna.pruners.NopPruner()
    try:
        return build_pruner(p.kind, int(p.n_startup_trials), int(p.n_warmup_steps))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def open_study(cfg: DictConfig, offset: int = 0, create: bool = False) -> optuna.Study:
    """Create or load `search.study_name` on `search.storage` with this config's sampler."""
    search = cfg.search
    storage = make_storage(
        search.storage, search.heartbeat_interval, search.grace_period, search.max_retry
    )
    sampler, pruner = make_sampler(search, offset), make_pruner(search)
    wanted = directions(search)
    if not create:
        return optuna.load_study(
            study_name=search.study_name, storage=storage, sampler=sampler, pruner=pruner
        )
    study = optuna.create_study(
        storage=storage,
        study_name=search.study_name,
        directions=wanted,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    found = [d.name.lower() for d in study.directions]
    if found != wanted:
        raise ConfigError(
            f"study {search.study_name!r} in {search.storage} optimises {found}, but "
            f"search.objective={search.objective} needs {wanted}; pick another "
            "search.study_name"
        )
    return study


@contextlib.contextmanager
def _ask_lock(storage_url: str) -> Iterator[None]:
    """Serialise count-then-ask among local processes sharing a journal file."""
    path = _journal_path(storage_url)
    if path is None:
        yield
        return
    with file_lock(f"{path}.ask.lock"):
        yield


def _surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Two machines may ask at once for the last slot; the later trial gives it back."""
    if (
        "failed_trial" in study._storage.get_trial(trial._trial_id).system_attrs
    ):  # a retry replaces a failed trial
        return False
    trials = counted_trials(study.get_trials(deepcopy=False))
    return sum(t.number < trial.number for t in trials) >= n_trials


def _tell_failed(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    with contextlib.suppress(Exception):
        trial.set_user_attr("fail_reason", reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _run_one(study: optuna.Study, ctx: SearchContext, n_trials: int) -> None:
    with _ask_lock(ctx.cfg.search.storage):
        trial = study.ask()
    if _surplus(study, trial, n_trials):
        trial.set_user_attr("surplus", True)
        _tell_failed(study, trial, "surplus: n_trials was reached by other workers")
        return
    beat = get_heartbeat_thread(trial._trial_id, study._storage) if get_heartbeat_thread else None
    with beat or contextlib.nullcontext():
        try:
            values = run_trial(trial, ctx)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except SearchInterrupted:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except KeyboardInterrupt:
            _tell_failed(study, trial, "interrupted (second Ctrl-C)")
            raise
        except Exception as err:  # TrialFailed, or a failure before the trial's own handler
            reason = trial.user_attrs.get("fail_reason") or f"{type(err).__name__}: {err}"
            _tell_failed(study, trial, reason)
        else:
            study.tell(trial, values)


def work(study: optuna.Study, ctx: SearchContext, deadline: float | None = None) -> str:
    """Run trials until the study holds `n_trials`; returns done / interrupted / timeout."""
    search = ctx.cfg.search
    n_trials = int(search.n_trials)
    while True:
        if ctx.stop_event.is_set():
            return "interrupted"
        if deadline is not None and time.time() >= deadline:
            return "timeout"
        fail_stale(study, search.max_retry)
        trials = counted_trials(study.get_trials(deepcopy=False))
        if sum(t.state.is_finished() for t in trials) >= n_trials:
            return "done"
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if len(trials) >= n_trials and not waiting:  # the rest run elsewhere: wait for them
            time.sleep(POLL_S)
            continue
        try:
            _run_one(study, ctx, n_trials)
        except SearchInterrupted:
            return "interrupted"


def torch_threads(search: DictConfig) -> int:
    """Threads per worker: oversubscribed cores make small models many times slower."""
    if search.get("torch_threads"):
        return int(search.torch_threads)
    return max(1, (os.cpu_count() or 1) // int(search.workers))


def install_sigint(stop_event: threading.Event, announce: bool = True, abort: bool = True):
    """First Ctrl-C: finish by recording the running trial; second: abort at once
    (`abort=False` in worker processes: only their parent decides to abort)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop_event.is_set() and abort:
            raise KeyboardInterrupt
        stop_event.set()
        if announce:
            print(
                "\nCtrl-C: stopping after the running trial is recorded (press again to abort)",
                flush=True,
            )

    return signal.signal(signal.SIGINT, handler)


def worker_main(cfg_dict: dict, parent_run_id: str, index: int, deadline: float | None) -> None:
    """Entry point of a local worker process (spawned: fresh interpreter, own threads)."""
    import logging

    import torch

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = OmegaConf.create(cfg_dict)
    torch.set_num_threads(torch_threads(cfg.search))
    ctx = SearchContext(cfg, space.parse_space(cfg), parent_run_id)
    install_sigint(ctx.stop_event, announce=False, abort=False)
    study = open_study(cfg, offset=index)
    outcome = work(study, ctx, deadline)
    raise SystemExit(130 if outcome == "interrupted" else 0)
