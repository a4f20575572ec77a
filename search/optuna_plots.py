"""Optuna's own plots of a study, drawn in one place: the search logs them to the study's
MLflow run when it ends, and the report (`lightning_prune.report`) saves them beside its own."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optuna


def _drawers(study: optuna.Study) -> dict[str, Callable[[], Any]]:
    from optuna.visualization import matplotlib as ovm

    # With several objectives, history and importances follow the first one (val_acc).
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    name = "val_acc" if target else "Objective Value"
    return {
        "optimization_history": lambda: ovm.plot_optimization_history(
            study, target=target, target_name=name
        ),
        "param_importances": lambda: ovm.plot_param_importances(study, target=target),
        "pareto_front": lambda: ovm.plot_pareto_front(study),
    }


def optuna_figures(study: optuna.Study, names: Iterable[str]) -> dict[str, Any]:
    """{name: matplotlib Figure} for each of `names` ("optimization_history",
    "param_importances", "pareto_front") that can be drawn; a plot that cannot (too few
    trials, one distinct value, ...) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.ticker import MaxNLocator

    drawers = _drawers(study)
    figures = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        for name in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    axes = drawers[name]()
            except Exception:  # too few trials, one distinct value, ...: not drawable yet
                continue
            if name == "optimization_history":  # x is the trial number: no 2.5
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figures[name] = figure
    finally:
        optuna.logging.set_verbosity(verbosity)
    return figures
