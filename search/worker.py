"""A worker: ask the shared study for trials and run them until its command's quota is met.

The same loop runs in the main process (workers=1), in local worker processes, and on
other machines joined through the same storage. A command adds `search.n_trials` trials
and the study holds at most `search.max_trials` (search/quota.py); trials of dead workers
are failed and re-queued (search/retries.py) and their copies run to completion.

A worker with nothing left to run waits for the others' trials, polling the storage with
backoff (1 s doubling to 10 s, back to 1 s when the study changes): 100 idle workers cost a
few reads per second, not 100. Each poll is one incremental read (Optuna's cached storage
re-reads only unfinished and new trials).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import optuna
from lightning_prune.search import space
from lightning_prune.search.contract import (
    TrialAttr,
)
from lightning_prune.search.locks import ask_lock
from lightning_prune.search.objective import (
    DuplicateRecipe,
    SearchContext,
    SearchInterrupted,
    StopRequest,
    run_trial,
)
from lightning_prune.search.optuna_private import heartbeat
from lightning_prune.search.quota import TrialQuota
from lightning_prune.search.retries import fail_stale
from lightning_prune.search.study_factory import open_search_study
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

POLL_MIN_S, POLL_MAX_S = 1.0, 10.0
MAX_REPEATS = 20  # duplicate recipes in a row before the space is called exhausted


def _tell_failed(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    with contextlib.suppress(Exception):
        trial.set_user_attr(TrialAttr.FAIL_REASON, reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _run_one(study: optuna.Study, ctx: SearchContext) -> bool:
    """Ask for a trial and run it; False when its sampled recipe repeated an earlier one."""
    with ask_lock(ctx.cfg.search.storage):
        trial = study.ask()
        ctx.quota.claim(trial)
    if ctx.quota.surplus(study, trial.number):
        trial.set_user_attr(TrialAttr.SURPLUS, True)
        _tell_failed(study, trial, "surplus: the quota was filled by other workers")
        return True
    with heartbeat(study, trial):
        try:
            values = run_trial(trial, ctx)
        except DuplicateRecipe as err:
            _tell_failed(study, trial, str(err))
            return False
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except SearchInterrupted:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except KeyboardInterrupt:
            _tell_failed(study, trial, "interrupted (second Ctrl-C)")
            raise
        except Exception as err:  # TrialFailed, or a failure before the trial's own handler
            reason = trial.user_attrs.get(TrialAttr.FAIL_REASON) or f"{type(err).__name__}: {err}"
            _tell_failed(study, trial, reason)
        else:
            study.tell(trial, values)
    return True


def work(study: optuna.Study, ctx: SearchContext, deadline: float | None = None) -> str:
    """Run trials until the command's quota is met; returns done / interrupted / timeout, or
    incomplete when the sampler keeps repeating recipes (a small space, exhausted)."""
    search, quota = ctx.cfg.search, ctx.quota
    poll, seen, repeats = POLL_MIN_S, None, 0
    while True:
        if ctx.stop_event.is_set():
            return "interrupted"
        if deadline is not None and time.time() >= deadline:
            return "timeout"
        fail_stale(study, search)
        trials = study.get_trials(deepcopy=False)
        if quota.done(trials):
            return "done"
        if quota.full(trials):  # the rest run elsewhere: wait for them
            shown = len(trials), quota.finished_mine(trials)
            poll = POLL_MIN_S if shown != seen else min(2 * poll, POLL_MAX_S)
            seen = shown
            ctx.stop_event.wait(poll)
            continue
        try:
            repeats = 0 if _run_one(study, ctx) else repeats + 1
        except SearchInterrupted:
            return "interrupted"
        if repeats >= MAX_REPEATS:
            print(
                f"search: {repeats} sampled recipes in a row repeated earlier trials; the "
                "search space looks exhausted, stopping this worker",
                flush=True,
            )
            return "incomplete"


def torch_threads(search: DictConfig) -> int:
    """Threads per worker: oversubscribed cores make small models many times slower."""
    if search.get("torch_threads"):
        return int(search.torch_threads)
    return max(1, (os.cpu_count() or 1) // int(search.workers))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_signals(stop: StopRequest, announce: bool = True, abort: bool = True) -> dict:
    """First Ctrl-C or SIGTERM: stop, recording the running trial and ending its MLflow run;
    second: abort at once (`abort=False` in worker processes: only their parent decides).
    Returns the previous handlers, for `restore_signals`."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame):
        if stop.is_set() and abort:
            raise KeyboardInterrupt
        stop.signum = stop.signum or signum
        stop.set()
        if announce:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{what}: stopping after the running trial is recorded (Ctrl-C again to "
                  "abort)", flush=True)  # fmt: skip

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def worker_main(
    cfg_dict: dict, parent_run_id: str, quota: TrialQuota, index: int, deadline: float | None
) -> None:
    """Entry point of a local worker process (spawned: fresh interpreter, own threads);
    `index` numbers it for the supervisor (sampler seeds come from trial numbers instead)."""
    import logging

    import torch

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = OmegaConf.create(cfg_dict)
    torch.set_num_threads(torch_threads(cfg.search))
    ctx = SearchContext(cfg, space.parse_space(cfg), parent_run_id, quota)
    install_stop_signals(ctx.stop_event, announce=False, abort=False)
    study = open_search_study(cfg)
    outcome = work(study, ctx, deadline)
    raise SystemExit(130 if outcome == "interrupted" else 0)
