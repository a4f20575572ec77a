"""The study a search runs: its directions, sampler and pruner from `cfg.search`, created or
joined on `search.storage` (readers open studies with `contract.load_study` instead)."""

from __future__ import annotations

import numpy as np
import optuna
from lightning_prune.search.contract import make_storage, quiet_experimental
from lightning_prune.search.pruners import build_pruner
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from lightning_prune.config import ConfigError


def directions(search: DictConfig) -> list[str]:
    """maximize val_acc; in the Pareto mode also maximize sparsity or minimize latency."""
    if search.objective == "accuracy":
        return ["maximize"]
    if search.objective == "pareto":
        if search.pareto_with not in ("sparsity", "latency"):
            raise ConfigError(
                f"search.pareto_with must be sparsity or latency, got {search.pareto_with!r}"
            )
        return ["maximize", "maximize" if search.pareto_with == "sparsity" else "minimize"]
    raise ConfigError(f"search.objective must be accuracy or pareto, got {search.objective!r}")


SAMPLERS = ("tpe", "random", "nsga2")


def _build_sampler(search: DictConfig, seed: int | None) -> optuna.samplers.BaseSampler:
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
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number` of a study searched with `search.seed=seed`."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """The configured sampler, seeded afresh for each trial from (search.seed, trial number).

    Trial numbers are unique in a study (the storage hands them out), so no two trials share
    a random stream, whichever process or machine runs them and however often the search is
    resumed; the same fresh run with one worker still samples the same recipes. The samplers
    keep their state in the study, so a fresh instance per trial loses nothing.
    """

    def __init__(self, search: DictConfig) -> None:
        self.search, self.seed = search, int(search.seed)
        self._by_number: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_number:
            while len(self._by_number) >= 4:  # a process runs one trial at a time
                self._by_number.pop(next(iter(self._by_number)))
            seed = trial_seed(self.seed, trial.number)
            self._by_number[trial.number] = _build_sampler(self.search, seed)
        return self._by_number[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._by_number.clear()


def make_sampler(search: DictConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler. Seeding rule: with `search.seed` set, trial n samples from
    seed f(search.seed, n) (`PerTrialSeedSampler`): a fresh run with one worker is
    reproducible, and resumed runs, local workers and other machines never replay a recipe
    (each process reseeding with `seed + worker index` did). With `search.seed=null` each
    process seeds from the OS. `objective.run_trial` also refuses an exact repeat."""
    if search.sampler not in SAMPLERS:
        raise ConfigError(f"search.sampler must be tpe, random or nsga2, got {search.sampler!r}")
    if search.seed is None:
        return _build_sampler(search, None)
    return PerTrialSeedSampler(search)


def make_pruner(search: DictConfig) -> optuna.pruners.BasePruner:
    """The configured pruner. A Pareto study gets NopPruner whatever `search.pruner.kind`
    says: Optuna 5's `Trial.report` and `should_prune` raise in multi-objective studies, so
    its trials report nothing (see TrialReporter's `enable_pruning`)."""
    p = search.pruner
    if search.objective == "pareto":
        return optuna.pruners.NopPruner()
    try:
        return build_pruner(p.kind, int(p.n_startup_trials), int(p.n_warmup_steps))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def open_search_study(cfg: DictConfig) -> optuna.Study:
    """Create `search.study_name` on `search.storage`, or join it when it exists, with this
    config's sampler and pruner; a study that optimises other directions is refused."""
    search = cfg.search
    storage = make_storage(
        search.storage, search.heartbeat_interval, search.grace_period, search.max_retry
    )
    wanted = directions(search)
    study = optuna.create_study(
        storage=storage,
        study_name=search.study_name,
        directions=wanted,
        sampler=make_sampler(search),
        pruner=make_pruner(search),
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
