"""Figures a reader can trust: whole trial numbers on trial axes, an ensemble chart from a
round baseline that names it and shows each member's weight, titles that say which trials
are drawn, and benchmark figures whose titles differ and whose error bars are explained."""

from __future__ import annotations

import importlib.util
import math

import matplotlib.pyplot as plt
import optuna
import pytest
from lightning_prune.search import optuna_figures
from matplotlib.ticker import MaxNLocator

from lightning_prune.report import build_report
from lightning_prune.report.figures import (
    accuracy_baseline,
    ensemble_figure,
    history_figure,
    sparsity_figure,
)
from lightning_prune.report.study_report import ensemble_rows, history_points
from tests.conftest import REPO
from tests.test_output_width import _study

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _integer_ticks(axis) -> None:
    locator = axis.get_major_locator()
    assert isinstance(locator, MaxNLocator) and locator._integer
    lo, hi = axis.get_view_interval()
    ticks = [t for t in axis.get_ticklocs() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_history_has_whole_trial_numbers(tmp_path):
    report = build_report(_study(tmp_path), tmp_path / "r", log_to_mlflow=False)
    figure = history_figure(history_points(report.rows))  # trials 0-2: 0.5 steps by default
    _integer_ticks(figure.axes[0].xaxis)


def test_optuna_history_has_whole_trial_numbers():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    figure = optuna_figures(study, ["optimization_history"])["optimization_history"]
    _integer_ticks(figure.axes[0].xaxis)


POINTS = [
    {"sparsity": 0.90, "acc": 0.889, "feasible": True},
    {"sparsity": 0.95, "acc": 0.884, "feasible": True},
    {"sparsity": 0.60, "acc": 0.893, "feasible": False},
]


def test_sparsity_title_names_the_trials_drawn():
    only = sparsity_figure(POINTS[:2], 0.886).axes[0].get_title()
    assert only == "Accuracy vs sparsity: 2 feasible trials"
    both = sparsity_figure(POINTS, 0.886).axes[0].get_title()
    assert "3 complete trials, feasible and infeasible" in both
    none = sparsity_figure(POINTS[2:], None).axes[0].get_title()
    assert "infeasible trials (none feasible)" in none


def _saved_ensemble() -> dict:
    """A saved ensemble's info as `run_ensemble` writes it (three members, one unused)."""
    rows = [{"name": f"trial {n}", "weight": w, "test_acc": a, "test_nll": 0.3,
             "nonzero_params": 12_470} for n, w, a in ((3, 0.62, 0.8841), (7, 0.38, 0.8802),
                                                        (9, 0.0, 0.8755))]  # fmt: skip
    costs = {"nonzero_params": 24_940}
    evaluation = {"rows": rows, "ensemble": {"test_acc": 0.8903}, "costs": costs}
    return {"weighting": "optimized", "evaluation": evaluation}


def test_ensemble_chart_starts_at_a_round_named_baseline_and_shows_weights():
    rows = ensemble_rows(_saved_ensemble())
    rows.append({"name": "dense model", "kind": "dense", "test_acc": 0.8862, "nonzero": 266_610})
    ax = ensemble_figure(rows).axes[0]
    base = ax.get_xlim()[0]
    assert base == 85.0 == accuracy_baseline([100 * r["test_acc"] for r in rows])
    assert "axis starts at 85%" in ax.get_xlabel()
    assert all(math.isclose(bar.get_x(), base) for bar in ax.patches)  # bars grow from it
    ends = sorted(round(bar.get_x() + bar.get_width(), 2) for bar in ax.patches)
    assert ends == [87.55, 88.02, 88.41, 88.62, 89.03]
    labels = [t.get_text() for t in ax.texts]
    assert any("weight 0.62" in t for t in labels) and any("weight 0.38" in t for t in labels)
    assert any("weight 0.00 (unused)" in t for t in labels)
    assert ax.get_title() == "Test accuracy: ensemble, weighted members, one dense model"


def test_baseline_is_round_and_below_the_lowest_bar():
    assert accuracy_baseline([88.4, 89.1]) == 85.0
    assert accuracy_baseline([85.5, 89.1]) == 80.0  # at least a point of bar
    assert accuracy_baseline([3.0, 10.0]) == 0.0


def test_report_markdown_lists_member_weights(tmp_path):
    rows = ensemble_rows(_saved_ensemble())
    report = build_report(_study(tmp_path), tmp_path / "r", ensemble=rows, log_to_mlflow=False)
    text = report.markdown.read_text()
    assert "| model | weight | test_acc | nonzero |" in text
    assert "| trial 3 | 0.620 | 0.8841 | 12,470 |" in text
    assert report.figures["ensemble"].exists()


def _peers_figure():
    spec = importlib.util.spec_from_file_location(
        "peers_figure", REPO / "benchmarks" / "peers_figure.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_figures_have_distinct_titles_and_explain_error_bars():
    peers = _peers_figure()
    titles = set()
    for name in ("peers", "peers_full", "peers_full_sgd"):
        table = REPO / "benchmarks" / "results" / f"{name}.md"
        settings, summary = peers.read_table(table.read_text())
        figure = peers.peers_figure(settings, summary)
        ax = figure.axes[0]
        titles.add(ax.get_title())
        seeds = peers.seeds_of(settings)
        notes = " ".join(t.get_text() for t in figure.texts)
        assert f"median test accuracy over {seeds} seeds" in notes
        assert "error bars: min to max" in notes
        assert len(ax.containers) == len(summary) - 1  # one errorbar per method, dense a line
        plt.close(figure)
    assert len(titles) == 3
    assert any("SGD 0.05" in t for t in titles)
    assert any("10,000 training images" in t for t in titles)
    assert "no error bars" in peers.error_note(1)
