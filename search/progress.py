"""The study-level progress bar: it polls the storage, so it counts every worker's trials.

One incremental read per poll; polls back off from `interval` to `max_interval` while
nothing changes (a long trial), and return to `interval` when a trial starts or ends.
"""

from __future__ import annotations

import threading
import time

import optuna
from lightning_prune.search.contract import best_trials, state_counts
from lightning_prune.search.quota import TrialQuota
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StudyProgress:
    """`with StudyProgress(study, quota): ...` shows this command's trials done out of its
    `n_trials`, the study's finished / pruned / failed, best so far and elapsed time, read
    from the storage every `interval` seconds, backing off
    to every `max_interval` seconds while nothing changes."""

    def __init__(
        self,
        study: optuna.Study,
        quota: TrialQuota,
        enabled: bool = True,
        interval: float = 1.0,
        console: Console | None = None,
        max_interval: float = 10.0,
    ) -> None:
        self.study, self.quota, self.enabled, self.interval = study, quota, enabled, interval
        self.max_interval = max(interval, max_interval)
        self._shown: tuple[int, str] | None = None
        self.console = console or Console(stderr=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress: Progress | None = None
        self._task = None

    def describe(self) -> tuple[int, str]:
        trials = self.study.get_trials(deepcopy=False)
        counts = state_counts(self.study, trials)
        done = self.quota.finished_mine(trials)
        best = best_trials(self.study, trials)
        shown = "best -"
        if best:
            top = best[0]
            shown = f"best val_acc {top.values[0]:.4f} (#{top.number})"
            if len(self.study.directions) > 1:
                shown = f"front {len(best)} trials"
        text = (
            f"finished {counts['complete']} · pruned {counts['pruned']} · "
            f"failed {counts['fail']} · running {counts['running']} · {shown}"
        )
        return done, text

    def _refresh(self) -> bool:
        """Read and show the study; True when something changed."""
        try:
            shown = self.describe()
        except Exception:  # the storage is busy: try again next tick
            return False
        done, text = shown
        done = min(done, self.quota.n_trials)
        self._progress.update(self._task, completed=done, description=text)
        changed, self._shown = shown != self._shown, shown
        return changed

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval if self._refresh() else min(2 * wait, self.max_interval)

    def __enter__(self) -> StudyProgress:
        if not self.enabled:
            return self
        self._progress = Progress(
            TextColumn("[bold]study"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("starting", total=self.quota.n_trials)
        self._progress.start()
        self._refresh()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._refresh()
        time.sleep(0.05)
        self._progress.stop()
