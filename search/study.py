"""`run_search(cfg)`: validate, open the study, run the workers, show progress, record.

Everything that can be wrong with the request (space, storage, objective, sampler,
pruner) is checked before the first trial; then the study runs in this process
(workers=1) or in `search.workers` spawned processes (threads would share one GIL).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import optuna
import torch
from lightning_prune.search import runs, space
from lightning_prune.search.contract import (
    StudyAttr,
    TrialAttr,
    check_storage,
    counted_trials,
    parse_storage,
)
from lightning_prune.search.demand import shape_space
from lightning_prune.search.dense import ensure_dense_reference
from lightning_prune.search.objective import DEMANDS, SearchContext
from lightning_prune.search.progress import StudyProgress
from lightning_prune.search.quota import TrialQuota, quota_of
from lightning_prune.search.retries import fail_stale
from lightning_prune.search.storage import check_heartbeats
from lightning_prune.search.study_factory import (
    directions,
    make_pruner,
    make_sampler,
    open_search_study,
)
from lightning_prune.search.worker import (
    install_stop_signals,
    restore_signals,
    torch_threads,
    work,
    worker_main,
)
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lightning_prune.config import ConfigError
from lightning_prune.preflight import (
    PreflightError,
    check_data,
    check_database,
    check_folder,
    check_name,
    check_sqlite_file,
    check_tracking,
    check_trainer,
    check_writable_file,
    first_line,
)
from lightning_prune.train import build_data, build_dynamic


def validate(cfg: DictConfig) -> list[space.Param]:
    """Every check that needs no training; raises ConfigError naming the entry."""
    if "search" not in cfg:
        raise ConfigError("no `search` config group; add `- search: default` to the defaults")
    search = cfg.search
    check_name(search.study_name, "search.study_name")
    params = space.parse_space(cfg)
    check_storage(search.storage, search.workers)
    if not isinstance(search.n_trials, int) or search.n_trials < 1:
        raise ConfigError(f"search.n_trials must be an integer >= 1, got {search.n_trials!r}")
    cap = search.get("max_trials")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"search.max_trials must be an integer >= 1 or null, got {cap!r}")
    threads = search.get("torch_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"search.torch_threads must be an integer >= 1 or null, got {threads!r}")
    if search.timeout is not None and float(search.timeout) <= 0:
        raise ConfigError(f"search.timeout must be > 0 seconds or null, got {search.timeout!r}")
    check_heartbeats(search.heartbeat_interval, search.grace_period, search.max_retry)
    check_top_k(search.top_k)
    demand = dict(search.demand or {})
    for key, value in demand.items():
        if key not in DEMANDS:
            raise ConfigError(f"search.demand.{key} is unknown; allowed: {', '.join(DEMANDS)}")
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"search.demand.{key} must be a positive number, got {value!r}")
    if demand.get("min_sparsity") is not None and not demand["min_sparsity"] < 1:
        raise ConfigError(f"search.demand.min_sparsity must be < 1, got {demand['min_sparsity']}")
    make_sampler(search)
    make_pruner(search)
    directions(search)
    build_dynamic(cfg)  # the gating options (dynamic=gated), checked as `train` does
    return params


def check_top_k(top_k: object) -> None:
    """The rows of the results table (`search` and `report`): at least one."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"search.top_k must be an integer >= 1, got {top_k!r}")


def check_storage_usable(url: str, option: str = "search.storage") -> None:
    """The study storage opens: a SQLite file is a database, a server answers, the folder of
    a local file is writable. Creates nothing."""
    location = parse_storage(url)
    if location.kind == "rdb":
        check_database(location.url, option)  # as opened (the driver may be rewritten)
    elif location.kind == "sqlite" and location.path is not None:
        check_sqlite_file(location.path, option, url, "studies", "an Optuna storage")
    elif location.kind == "journal":
        check_folder(location.path.parent, option)
        if location.path.is_dir():
            raise PreflightError(f"{option}={url}: {location.path} is a folder, not a file")


def preflight(cfg: DictConfig) -> None:
    """What the trials need besides valid options, checked before the study is opened:
    storage, output folder, accelerator, readable data, tracking store."""
    check_storage_usable(cfg.search.storage)
    stored = parse_storage(cfg.search.storage).path
    if stored is not None:
        check_writable_file(stored, "search.storage", cfg.search.storage)
    check_folder(Path(cfg.output_dir) / "studies" / cfg.search.study_name, "output_dir")
    check_trainer(cfg.trainer)
    check_data(build_data(cfg))
    check_tracking(cfg.tracking.uri)  # last: it creates the folder of a local store


def _open_study(cfg: DictConfig) -> optuna.Study:
    """`open_search_study`, with a storage that fails to open named in one line."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return open_search_study(cfg)
    except (SQLAlchemyError, OSError, RuntimeError) as err:
        cause = getattr(err, "orig", None) or err
        raise PreflightError(
            f"search.storage={cfg.search.storage}: cannot open study "
            f"{cfg.search.study_name!r}: {first_line(cause)}"
        ) from None


def _spawn(cfg: DictConfig, ctx: SearchContext, index: int, deadline: float | None):
    """One worker process; spawned, not forked: a fresh interpreter with its own threads."""
    context = multiprocessing.get_context("spawn")
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    proc = context.Process(
        target=worker_main,
        args=(cfg_dict, ctx.parent_run_id, ctx.quota, index, deadline),
        name=f"search-worker-{index}",
    )
    proc.start()
    return proc


def _supervise(
    cfg: DictConfig, study: optuna.Study, procs: list, ctx: SearchContext, deadline: float | None
) -> str:
    """Wait for the workers; replace one that died (its trial is re-queued) until done."""
    respawns_left = int(cfg.search.workers) * (int(cfg.search.max_retry) + 1)
    forwarded, stop = False, ctx.stop_event
    while any(p.is_alive() for p in procs):
        time.sleep(0.5)
        if stop.is_set():
            if not forwarded:  # `kill -INT <pid>` reaches only us; a terminal reaches all
                for proc in procs:
                    if proc.is_alive() and proc.pid:
                        os.kill(proc.pid, signal.SIGINT)
                forwarded = True
            continue
        for i, proc in enumerate(procs):
            if proc.exitcode not in (None, 0, 130) and respawns_left > 0:
                fail_stale(study, cfg.search)
                respawns_left -= 1
                procs[i] = _spawn(cfg, ctx, i + len(procs), deadline)
    if stop.is_set() or any(p.exitcode == 130 for p in procs):
        return "interrupted"
    return _outcome(study, ctx.quota, deadline)


def _outcome(study: optuna.Study, quota: TrialQuota, deadline: float | None) -> str:
    if quota.done(study.get_trials(deepcopy=False)):
        return "done"
    return "timeout" if deadline is not None and time.time() >= deadline else "incomplete"


def _judged(study: optuna.Study, outcome: str, quota: TrialQuota) -> str:
    """`failed` when the study holds no COMPLETE trial, or every trial this command finished
    (surplus ones aside) failed: a search with nothing to show for this run is not `done`."""
    if outcome not in ("done", "timeout"):
        return outcome
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return "failed"
    new = [t for t in quota.mine(counted_trials(trials)) if t.state.is_finished()
           and not t.user_attrs.get(TrialAttr.SURPLUS)]  # fmt: skip
    return "failed" if new and all(t.state == TrialState.FAIL for t in new) else outcome


def _what_it_did(study: optuna.Study, quota: TrialQuota) -> str:
    """One line: the trials this command added, and what the study holds now."""
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in quota.mine(counted_trials(trials)) if t.state.is_finished()]
    by_state = {s: sum(t.state.name == s for t in mine) for s in ("COMPLETE", "PRUNED", "FAIL")}
    held = len([t for t in counted_trials(trials) if t.state.is_finished()])
    cap = "" if quota.max_trials is None else f" of search.max_trials={quota.max_trials}"
    return (
        f"search: this run added {len(mine)} of search.n_trials={quota.n_trials} trials "
        f"({by_state['COMPLETE']} complete, {by_state['PRUNED']} stopped early, "
        f"{by_state['FAIL']} failed); study {study.study_name!r} now holds {held}{cap}"
    )


DRIFT_GROUPS = ("model", "data", "trainer")  # what makes trials of two runs comparable
DISPLAY_ONLY = ("trainer.enable_", "trainer.log_every_n_steps", "data.num_workers")


def config_drift(study: optuna.Study, cfg: DictConfig) -> str | None:
    """What of the model, data and trainer a resumed study was started with differs now: its
    trials and dense reference came from those, so new trials are not alike."""
    stored = study.user_attrs.get(StudyAttr.CONFIG) or {}
    now = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True), default=str))
    old = {k: v for g in DRIFT_GROUPS for k, v in runs.flat_params(g, stored.get(g), {}).items()}
    new = {k: v for g in DRIFT_GROUPS for k, v in runs.flat_params(g, now.get(g), {}).items()}
    changed = sorted(
        k for k in old.keys() & new.keys() if old[k] != new[k] and not k.startswith(DISPLAY_ONLY)
    )
    if not stored or not changed:
        return None
    was = ", ".join(f"{k}={old[k]}" for k in changed[:6])
    has = ", ".join(f"{k}={new[k]}" for k in changed[:6])
    return (
        f"study {study.study_name!r} was started with {was}; this run has {has}. Its earlier "
        "trials and dense reference came from the first settings: use a new "
        "search.study_name to compare like with like"
    )


def run_search(cfg: DictConfig) -> optuna.Study:
    """Run (or resume, or join) the study described by `cfg.search`; return it.

    Its `StudyAttr.LAST_OUTCOME` says how this invocation ended: done, interrupted (Ctrl-C),
    terminated (SIGTERM), timeout, incomplete, or failed (no COMPLETE trial in the study, or
    every trial this run finished failed).

    Single objective: `trial.value` is val_acc; `trial.constraints` hold one value per
    stated demand (feasible when all <= 0), so `study.best_trial` is the best feasible one.
    Pareto: `trial.values` = [val_acc, sparsity] (or [val_acc, latency_ms]).
    """
    validate(cfg)
    cfg, changes = shape_space(cfg)  # only what can meet the demand is sampled
    params = space.parse_space(cfg)
    for change in changes:
        print(f"search space: {change}", file=sys.stderr)
    preflight(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(cfg)
    drift = config_drift(study, cfg)
    if drift:
        print(f"search: warning: {drift}", file=sys.stderr)
    quota = quota_of(cfg.search)
    if quota.capped(counted_trials(study.get_trials(deepcopy=False)), finished=True):
        print(f"search: study {study.study_name!r} already holds search.max_trials="
              f"{quota.max_trials} finished trials; nothing to add (raise search.max_trials "
              "to add more)", file=sys.stderr)  # fmt: skip
        study.set_user_attr(StudyAttr.LAST_OUTCOME, "done")
        return study
    parent_run_id = runs.start_parent(cfg, study)
    try:
        if cfg.search.get("dense_reference", True):
            ensure_dense_reference(cfg, study, parent_run_id)
    except BaseException as err:
        stopped = isinstance(err, KeyboardInterrupt)  # Ctrl-C while the dense model trains
        runs.finish_parent(cfg, study, parent_run_id, interrupted=stopped, failed=not stopped)
        raise
    ctx = SearchContext(cfg, params, parent_run_id, quota)
    timeout = cfg.search.timeout
    deadline = time.time() + float(timeout) if timeout is not None else None
    previous = install_stop_signals(ctx.stop_event)
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads(cfg.search))
    progress = StudyProgress(study, quota, enabled=bool(cfg.search.progress))
    outcome = "interrupted"
    try:
        with progress:
            if int(cfg.search.workers) == 1:
                outcome = work(study, ctx, deadline)
            else:
                workers = range(int(cfg.search.workers))
                procs = [_spawn(cfg, ctx, i, deadline) for i in workers]
                outcome = _supervise(cfg, study, procs, ctx, deadline)
        outcome = _judged(study, outcome, quota)
        if outcome == "interrupted" and ctx.stop_event.signum == signal.SIGTERM:
            outcome = "terminated"
    except Exception:
        outcome = "error"
        raise
    finally:
        torch.set_num_threads(threads)
        restore_signals(previous)
        runs.finish_parent(
            cfg, study, parent_run_id, interrupted=outcome in ("interrupted", "terminated"),
            failed=outcome in ("error", "failed"),
        )  # fmt: skip
    study.set_user_attr(StudyAttr.LAST_OUTCOME, outcome)
    print(_what_it_did(study, quota), file=sys.stderr)
    return study
