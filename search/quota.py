"""How many trials a search command adds: `search.n_trials` per invocation, as
`study.optimize(n_trials=...)` does, and at most `search.max_trials` in the whole study, as
Optuna's `MaxTrialsCallback` caps it.

Each command gets an id; its workers (local processes) stamp it on every trial they ask for,
so a command counts its own trials whatever other machines add to the same study. A
re-queued copy of a dead worker's trial counts for the command that runs it. Trials are
counted as `contract.counted_trials` does (retried, interrupted and duplicate ones aside).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import optuna
from lightning_prune.search.contract import TrialAttr, counted_trials, is_retry
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class TrialQuota:
    """`n_trials` for this invocation, `max_trials` (or None) for the study."""

    n_trials: int
    max_trials: int | None = None
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def mine(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if t.user_attrs.get(TrialAttr.INVOCATION) == self.invocation]

    def done(self, trials: list[FrozenTrial]) -> bool:
        """This command added its `n_trials`, or the study reached `max_trials` (finished)."""
        counted = counted_trials(trials)
        if sum(t.state.is_finished() for t in self.mine(counted)) >= self.n_trials:
            return True
        return self.capped(counted, finished=True)

    def full(self, trials: list[FrozenTrial]) -> bool:
        """Every slot is taken (some still running elsewhere) and no re-queued trial waits."""
        counted = counted_trials(trials)
        if any(t.state == TrialState.WAITING for t in counted):
            return False
        return len(self.mine(counted)) >= self.n_trials or self.capped(counted, finished=False)

    def capped(self, counted: list[FrozenTrial], finished: bool) -> bool:
        """The study holds `max_trials` (finished ones only, with `finished`)."""
        if self.max_trials is None:
            return False
        held = [t for t in counted if t.state.is_finished()] if finished else counted
        return len(held) >= self.max_trials

    def claim(self, trial: optuna.Trial) -> None:
        """Stamp an asked trial as this command's (a re-queued copy carries its original's)."""
        trial.set_user_attr(TrialAttr.INVOCATION, self.invocation)

    def surplus(self, study: optuna.Study, number: int) -> bool:
        """Two workers may ask at once for the last slot; the later trial gives it back."""
        trials = study.get_trials(deepcopy=False)
        asked = next(t for t in trials if t.number == number)
        if is_retry(asked):  # a retry replaces a failed trial
            return False
        earlier = [t for t in counted_trials(trials) if t.number < number]
        if len(self.mine(earlier)) >= self.n_trials:
            return True
        return self.max_trials is not None and len(earlier) >= self.max_trials

    def finished_mine(self, trials: list[FrozenTrial]) -> int:
        return sum(t.state.is_finished() for t in self.mine(counted_trials(trials)))


def quota_of(search) -> TrialQuota:
    """The quota of a new invocation of `search` (the `search` config group)."""
    cap = search.get("max_trials")
    return TrialQuota(int(search.n_trials), None if cap is None else int(cap))
