"""The study a search runs: its directions, sampler and pruner from `cfg.search`, created or
joined on `search.storage` (readers open studies with `contract.load_study` instead)."""

from __future__ import annotations

import optuna
from lightning_prune.search.contract import make_storage, quiet_experimental
from lightning_prune.search.pruners import build_pruner
from omegaconf import DictConfig

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


def make_sampler(search: DictConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; worker `offset` shifts the seed so workers do not repeat."""
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


def open_search_study(cfg: DictConfig, offset: int = 0) -> optuna.Study:
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
        sampler=make_sampler(search, offset),
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
