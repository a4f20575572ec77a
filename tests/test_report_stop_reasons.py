"""The report says why each stopped trial was stopped: a status cell in the trials table (cut
in the terminal, whole in report.md) and, in the history figure, one legend entry per kind
of reason. The reasons are the ones the search's own writers produce."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
from lightning_prune.search.bound_pruner import CannotWinPruner
from lightning_prune.search.contract import TrialAttr
from lightning_prune.search.pruners import SparsityMatchedPruner, stop_kind, stop_reason
from lightning_prune.search.reporter import TrialReporter
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from lightning_prune.report import build_report, print_report, trials_table
from lightning_prune.report.figures import history_figure
from lightning_prune.report.study_report import history_points
from lightning_prune.report.tables import COLUMNS, STATUS_WIDTH


def _reason(pruner: optuna.pruners.BasePruner, finished: list[list[float]], own: list[float]):
    """The `pruned_reason` the search writes when `pruner` stops a trial reporting `own`."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in finished:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        study.tell(trial, curve[-1])
    trial = study.ask()
    for step, value in enumerate(own):
        trial.report(value, step)
    assert trial.should_prune()
    return stop_reason(study, trial.number)


FINISHED = [[0.80, 0.90], [0.82, 0.91], [0.84, 0.92]]
MATCHED = _reason(SparsityMatchedPruner(1, n_min_trials=1), FINISHED, [0.50, 0.55])
BOUND = _reason(CannotWinPruner(1, margin=0.0), FINISHED, [0.40, 0.45])
DIVERGED = _reason(SparsityMatchedPruner(1, n_min_trials=1), FINISHED, [0.5, math.nan])
MEDIAN = _reason(optuna.pruners.MedianPruner(1), FINISHED, [0.50, 0.55])
DEMAND = TrialReporter(None, pruning=SimpleNamespace(target_sparsity=0.5), min_sparsity=0.8)
DEMAND = DEMAND._hopeless()


def test_each_writers_reason_has_its_kind():
    assert stop_kind(MATCHED) == "below matched median"
    assert stop_kind(BOUND) == "cannot beat best"
    assert stop_kind(DIVERGED) == "non-finite value (diverged)"
    assert stop_kind(DEMAND) == "target below demand"
    assert stop_kind(MEDIAN) == "below MedianPruner's threshold"
    assert stop_kind("") == stop_kind(None) == "no reason recorded"
    assert stop_kind("something new") == "other"


def _study(tmp_path) -> optuna.Study:
    """3 complete trials (one infeasible), 4 stopped ones, 1 failed one that wrote a reason."""
    study = optuna.create_study(
        study_name="why", storage=f"sqlite:///{tmp_path}/study.db", direction="maximize"
    )
    dist = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def add(number, state, value, reason=None, feasible=True, curve=(0.5,)):
        attrs = {TrialAttr.VAL_ACC: value, TrialAttr.SPARSITY: 0.9, TrialAttr.NONZERO_PARAMS: 1000}
        if reason is not None:
            attrs[TrialAttr.PRUNED_REASON] = reason
        if state == TrialState.FAIL:
            attrs[TrialAttr.FAIL_REASON] = "RuntimeError: the worker crashed"
        study.add_trial(create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            params={"lr": 0.001 * (number + 1)}, distributions=dist, user_attrs=attrs,
            intermediate_values=dict(enumerate([*curve[:-1], value])),
            constraints={"min_sparsity": 0.0 if feasible else 0.1},
        ))  # fmt: skip

    add(0, TrialState.COMPLETE, 0.90)
    add(1, TrialState.PRUNED, 0.55, reason=MATCHED + "\nsecond line")
    add(2, TrialState.COMPLETE, 0.92)
    add(3, TrialState.PRUNED, 0.45, reason=BOUND)
    add(4, TrialState.FAIL, 0.60, reason=MEDIAN)  # failed after its reason was written
    add(5, TrialState.PRUNED, math.nan, reason=DIVERGED)
    add(6, TrialState.COMPLETE, 0.95, feasible=False)
    add(7, TrialState.PRUNED, 0.70, reason=DEMAND)
    return study


def _rows(text: str) -> dict[str, list[str]]:
    """The table's cells by the trial number in the first one."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0].isdigit():
            rows[cells[0]] = cells
    return rows


def _cut(reason: str) -> str:
    text = f"stopped: {reason.splitlines()[0]}"
    return text if len(text) <= STATUS_WIDTH else text[: STATUS_WIDTH - 1].rstrip() + "…"


def test_the_terminal_table_shows_why_each_stopped_trial_stopped(tmp_path):
    study = _study(tmp_path)
    console = Console(record=True, width=400)
    console.print(trials_table(study, top_k=5))
    text = console.export_text()
    assert "top 2 feasible trials and the 4 best stopped" in text
    rows = _rows(text)
    status = {number: cells[COLUMNS.index("status")] for number, cells in rows.items()}
    assert status["0"] == status["2"] == "complete"
    for number, reason in (("1", MATCHED), ("3", BOUND), ("5", DIVERGED), ("7", DEMAND)):
        assert status[number] == _cut(reason)
    assert status["1"] == "stopped: below the matched median at validation 1: best so…"
    assert status["7"] == "stopped: infeasible: target sparsity 0.5000 < demand 0.8"
    assert all(len(cell) <= STATUS_WIDTH for cell in status.values())
    assert "second line" not in text
    # best feasible first, then best stopped first: 0.70, 0.55, 0.45, then the diverged one;
    # neither the failed trial (4) nor the infeasible one (6)
    assert list(rows) == ["2", "0", "7", "1", "3", "5"]
    assert set(_rows(text)) == set(_rows(_printed(study)))
    console = Console(record=True, width=400)
    console.print(trials_table(study, top_k=1))
    assert list(_rows(console.export_text())) == ["2", "7"]  # top_k bounds both parts


def _printed(study: optuna.Study) -> str:
    console = Console(record=True, width=400)
    print_report(study, top_k=5, console=console)
    return console.export_text()


def test_only_stopped_trials_are_shown_before_any_trial_completes(tmp_path):
    study = optuna.create_study(study_name="early", storage=f"sqlite:///{tmp_path}/s.db")
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.3},
                                 user_attrs={TrialAttr.PRUNED_REASON: BOUND}))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={
        TrialAttr.PRUNED_REASON: BOUND, TrialAttr.FAIL_REASON: "crashed"}))  # fmt: skip
    text = _printed(study)
    assert "no feasible complete trial yet" in text
    assert list(_rows(text)) == ["0"] and _cut(BOUND) in _rows(text)["0"]


@pytest.fixture
def report(tmp_path):
    return build_report(_study(tmp_path), tmp_path / "report", log_to_mlflow=False)


def test_report_md_holds_each_reason_whole(report):
    markdown = report.markdown.read_text()
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()}  # fmt: skip
    assert sorted(lines, key=int) == ["0", "1", "2", "3", "5", "7"]
    assert f"| stopped: {MATCHED}<br>second line |" in lines["1"]
    assert f"| stopped: {BOUND} |" in lines["3"]
    assert f"| stopped: {DIVERGED} |" in lines["5"]
    assert f"| stopped: {DEMAND} |" in lines["7"]
    assert "| complete |" in lines["0"]
    assert "stopped" not in markdown.split("## Figures")[1]
    assert "history" in report.figures and report.figures["history"].stat().st_size > 0


def test_history_legend_groups_stopped_trials_by_reason_kind(report):
    by_number = {row["number"]: row for row in report.rows}
    assert by_number[4]["state"] == "FAIL" and by_number[4]["stop_reason"] is None
    figure = history_figure(history_points(report.rows))
    _, labels = figure.axes[0].get_legend_handles_labels()
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == labels
    assert labels == [
        "complete",
        "complete (infeasible)",
        "failed",
        "stopped: below matched median",
        "stopped: cannot beat best",
        "stopped: non-finite value (diverged)",
        "stopped: target below demand",
        "best feasible so far",
    ]  # the failed trial's leftover reason (MedianPruner's) makes no stopped group
