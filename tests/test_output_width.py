"""What the commands print fits the terminal: the study bar keeps done/total, elapsed and an
ETA at 80 columns; tables stay inside 80 columns (and 100 when piped) with their numbers
whole; the ensemble table's dense row has the dense accuracy; the per-layer table of
`train` comes after Lightning's progress bar has stopped."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import optuna
import pytest
from lightning_prune.ensembles.evaluate import EnsembleReport, report_table
from lightning_prune.search.contract import TrialAttr
from lightning_prune.search.progress import EtaColumn, StudyProgress, study_display
from lightning_prune.search.quota import TrialQuota
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from pytorch_lightning.callbacks import RichProgressBar
from rich.console import Console

from lightning_prune import console as console_module
from lightning_prune.report import print_report, trials_table
from lightning_prune.train import fit_and_test
from tests.pruning_helpers import tiny_data

optuna.logging.set_verbosity(optuna.logging.WARNING)
STATUS = "finished 3 · pruned 1 · failed 0 · running 1 · best val_acc 0.9123 (#4)"


def _render(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text().splitlines()


def _fits(lines: list[str], width: int) -> None:
    assert lines and all(len(line) <= width for line in lines), max(map(len, lines))


def test_study_bar_shows_done_total_elapsed_and_eta_at_80_columns():
    display = study_display(Console(file=io.StringIO(), width=80))
    task = display.add_task("study", total=10, status=STATUS)
    display.update(task, completed=3)
    lines = _render(display.get_renderable())
    _fits(lines, 80)
    assert "3/10 trials" in lines[0] and "elapsed" in lines[0] and "eta " in lines[0]
    assert lines[1].strip().startswith("finished 3 · pruned 1")  # the counts: own line
    narrow = _render(display.get_renderable(), width=60)
    _fits(narrow, 60)
    assert "eta " in narrow[0] and narrow[1].endswith("…")  # the counts give way, not the ETA


def test_eta_is_elapsed_per_trial_times_the_trials_left():
    eta = EtaColumn()
    task = SimpleNamespace(finished=False, completed=2, total=10, elapsed=120.0)
    assert str(eta.render(task)) == "eta 0:08:00"
    assert str(eta.render(SimpleNamespace(**{**vars(task), "completed": 0}))) == "eta -:--:--"
    assert str(eta.render(SimpleNamespace(**{**vars(task), "finished": True}))) == "eta 0:00:00"


def test_study_progress_counts_this_commands_trials():
    study = optuna.create_study(direction="maximize")
    quota = TrialQuota(5)
    for value in (0.90, 0.93):
        trial = study.ask()
        quota.claim(trial)
        study.tell(trial, value)
    out = io.StringIO()
    with StudyProgress(study, quota, console=Console(file=out, width=80), interval=0.01):
        pass
    lines = out.getvalue().splitlines()
    _fits(lines, 80)
    assert "2/5 trials" in lines[0] and "eta " in lines[0]
    assert "best val_acc 0.9300 (#1)" in lines[1]


LONG_RECIPE = {
    "criterion": "hybrid", "granularity": "unstructured", "target_sparsity": 0.953,
    "schedule": "cubic", "tolerance": 0.0125, "lr": 0.00123,
}  # fmt: skip


def _study(tmp_path) -> optuna.Study:
    """Two complete trials with a six-parameter recipe and a stopped one with a long reason."""
    study = optuna.create_study(
        study_name="wide", storage=f"sqlite:///{tmp_path}/w.db", direction="maximize"
    )
    dist = {k: FloatDistribution(1e-5, 1.0) if isinstance(v, float) else
            CategoricalDistribution([v]) for k, v in LONG_RECIPE.items()}  # fmt: skip
    for number, (state, value) in enumerate(
        ((TrialState.COMPLETE, 0.9123), (TrialState.COMPLETE, 0.8876), (TrialState.PRUNED, 0.5))
    ):
        attrs = {TrialAttr.VAL_ACC: value, TrialAttr.TEST_ACC: value - 0.01,
                 TrialAttr.SPARSITY: 0.953, TrialAttr.NONZERO_PARAMS: 12_345 + number}  # fmt: skip
        if state == TrialState.PRUNED:
            attrs[TrialAttr.PRUNED_REASON] = "below the matched median at validation 3: " * 3
        study.add_trial(create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            params=LONG_RECIPE, distributions=dist, user_attrs=attrs,
            intermediate_values={0: value}, constraints={"min_sparsity": 0.0},
        ))  # fmt: skip
    return study


def test_trials_table_fits_80_columns_with_numbers_whole(tmp_path):
    lines = _render(trials_table(_study(tmp_path)))
    _fits(lines, 80)
    body = [line for line in lines if line.startswith("│")]
    assert all(line.endswith("│") for line in body)  # wrapped, not cut at the edge
    text = "\n".join(lines)
    for cell in ("0.9123", "0.8876", "12,345", "12,346", "0.9530"):
        assert cell in text


def test_piped_report_stays_under_100_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    print_report(_study(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    _fits(lines, console_module.PIPED_WIDTH)
    assert console_module.PIPED_WIDTH <= 100
    assert any("12,345" in line for line in lines)


def test_piped_console_is_100_wide_unless_columns_says_otherwise(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console_module.make_console(file=io.StringIO()).width == 100
    monkeypatch.setenv("COLUMNS", "72")
    assert console_module.make_console(file=io.StringIO()).width == 72


def _ensemble_report(dense: dict) -> EnsembleReport:
    rows = [
        {"name": f"trial {n} (hybrid, 95.3% sparse, lr 0.00123)", "weight": w, "test_acc": a,
         "test_nll": 0.31, "nonzero_params": 12_470}
        for n, w, a in ((3, 0.62, 0.8841), (7, 0.38, 0.8802), (9, 0.0, 0.8755))
    ]  # fmt: skip
    costs = {"nonzero_params": 24_940, "dense_params": 266_610, "flops": 49_880,
             "dense_flops": 532_400, "params_vs_dense": 0.0935, "flops_vs_dense": 0.0937,
             "latency_batch": 256, "latency_ms": 3.2, "dense_latency_ms": 1.9}  # fmt: skip
    ensemble = {"name": "ensemble", "test_acc": 0.8903, "test_nll": 0.29}
    return EnsembleReport(rows, ensemble, rows[0], costs, dense=dense)


def test_ensemble_table_fits_and_its_dense_row_has_the_dense_accuracy():
    lines = _render(report_table(_ensemble_report({"test_acc": 0.8862, "params": 266_610})))
    _fits(lines, 80)
    dense = next(line for line in lines if "one dense model" in line)
    assert "0.8862" in dense and "266,610" in dense
    text = "\n".join(lines)
    assert all(cell in text for cell in ("0.620", "0.380", "0.8903", "24,940"))
    without = _render(report_table(_ensemble_report({})))
    assert "-" in next(line for line in without if "one dense model" in line)


def test_train_result_table_fits_80_columns(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=out, width=80))
    result = SimpleNamespace(
        metrics={"test_acc": 0.8862, "test_loss": 0.31}, seconds=12.5, run_id="a" * 32,
        pruning={"sparsity": 0.953, "nonzero_params": 12_470, "total_params": 266_610},
        checkpoint="runs/models/" + "a" * 32 + "/model.pt",
    )  # fmt: skip
    console_module.print_train_result(result, "sqlite:///runs/mlflow.db", "lightning-prune")
    lines = out.getvalue().splitlines()
    _fits(lines, 80)
    assert any("266,610" in line for line in lines)


@pytest.mark.filterwarnings("ignore")
def test_per_layer_table_prints_after_the_rich_progress_bar_stopped(capsys):
    from lightning_prune.models import Classifier
    from lightning_prune.pruning import AdaptivePruning

    bar = RichProgressBar(console_kwargs={"file": sys.stdout, "width": 80})
    pruning = AdaptivePruning(target_sparsity=0.5)
    cfg = OmegaConf.create({"trainer": {
        "max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
        "enable_checkpointing": False, "enable_progress_bar": True,
    }})  # fmt: skip
    result = fit_and_test(cfg, callbacks=[bar], test=False,
                          components=(tiny_data(), Classifier(), pruning))  # fmt: skip
    out = capsys.readouterr().out
    table = out.index("AdaptivePruning: per-layer sparsity")
    assert out.rindex("Epoch 0/0") < table  # the bar's last frame, then the table
    assert out.count("AdaptivePruning: per-layer sparsity") == 1
    assert pruning.verbose and result.pruning["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_ensemble_takes_the_dense_accuracy_only_from_the_data_it_is_tested_on():
    from lightning_prune.ensembles.run import _dense_reference
    from lightning_prune.search.contract import StudyAttr

    study = optuna.create_study()
    study.set_user_attr(StudyAttr.CONFIG, {"data": {"_target_": "x.Data"}})
    study.set_user_attr(StudyAttr.DENSE_REFERENCE, {"test_acc": 0.8862, "params": 266_610})
    cfg = OmegaConf.create({"ensemble": {"data_from": "study"}, "data": {"_target_": "y.Data"}})
    assert _dense_reference(cfg, study)["test_acc"] == 0.8862
    cfg.ensemble.data_from = "config"  # tested on other data: the numbers would not compare
    assert _dense_reference(cfg, study) == {}


@pytest.mark.filterwarnings("ignore")
def test_in_a_users_own_trainer_the_table_prints_above_a_live_rich_bar():
    """The callback prints through the live bar's console: Rich clears the bar, prints the
    table, and draws the bar again below it (not the table inside the bar's frames)."""
    import pytorch_lightning as pl

    from lightning_prune.models import Classifier
    from lightning_prune.pruning import AdaptivePruning

    screen = io.StringIO()
    bar = RichProgressBar(console_kwargs={"file": screen, "width": 80, "force_terminal": True})
    trainer = pl.Trainer(max_epochs=1, callbacks=[AdaptivePruning(target_sparsity=0.5), bar],
                         logger=False, enable_checkpointing=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(Classifier(), datamodule=tiny_data())
    out = screen.getvalue()
    table = out.index("AdaptivePruning: per-layer sparsity")
    assert "\x1b[2K" in out[table - 40 : table]  # the bar's line erased just before
    assert out.count("AdaptivePruning: per-layer sparsity") == 1
