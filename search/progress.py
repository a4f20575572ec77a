"""The study-level progress bar: it polls the storage, so it counts every worker's trials.

One incremental read per poll; polls back off from `interval` to `max_interval` while
nothing changes (a long trial), and return to `interval` when a trial starts or ends.
"""

from __future__ import annotations

import datetime
import threading
import time

import optuna
from lightning_prune.search.contract import best_trials, state_counts
from lightning_prune.search.quota import TrialQuota
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

BAR_WIDTH = 24  # with done/total, elapsed and ETA the first line fits in 80 columns


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class EtaColumn(ProgressColumn):
    """Time left at this command's pace so far (elapsed / done x left). Rich's own estimate
    reads only the last 30 s of progress, and one trial takes minutes, so it would show
    nothing for most of a search."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("eta 0:00:00", style="progress.remaining")
        if not task.completed or task.elapsed is None or task.total is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = task.elapsed / task.completed * (task.total - task.completed)
        return Text(f"eta {_clock(left)}", style="progress.remaining")


class StudyDisplay(Progress):
    """The bar on the first line (done/total, elapsed, ETA) and the study's counts on a
    second one, cut to the terminal width: on one line at 80 columns the counts pushed the
    timings off the end."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        status = self.tasks[0].fields.get("status", "") if self.tasks else ""
        if status:
            yield Text(f"  {status}", no_wrap=True, overflow="ellipsis")


def study_display(console: Console | None = None) -> StudyDisplay:
    """`study ━━━━ 3/10 trials  0:04:12 elapsed  eta 0:09:48`, then the counts."""
    return StudyDisplay(
        TextColumn("[bold]study"),
        BarColumn(bar_width=BAR_WIDTH),
        TextColumn("{task.completed}/{task.total} trials"),
        TimeElapsedColumn(),
        TextColumn("elapsed"),
        EtaColumn(),
        console=console,
    )


class StudyProgress:
    """`with StudyProgress(study, quota): ...` shows this command's trials done out of its
    `n_trials`, elapsed time and an ETA, then the study's finished / pruned / failed and
    best so far, read from the storage every `interval` seconds, backing off to every
    `max_interval` seconds while nothing changes."""

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
        self._progress: StudyDisplay | None = None
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
        self._progress.update(self._task, completed=done, status=text)
        changed, self._shown = shown != self._shown, shown
        return changed

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval if self._refresh() else min(2 * wait, self.max_interval)

    def __enter__(self) -> StudyProgress:
        if not self.enabled:
            return self
        self._progress = study_display(self.console)
        self._task = self._progress.add_task("study", total=self.quota.n_trials, status="")
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
