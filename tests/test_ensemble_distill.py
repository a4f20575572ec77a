"""`ensemble.distill=true`: one pruned student learns from the ensemble's soft predictions."""

from __future__ import annotations

import math

import optuna
import pytest
from lightning_prune.ensembles import run_ensemble
from lightning_prune.ensembles.distill import STUDENT_ROW
from lightning_prune.ensembles.run import print_ensemble_result
from mlflow import MlflowClient

from lightning_prune.config import ConfigError, load_config
from lightning_prune.console import console
from lightning_prune.pruning.stats import nonzero_params
from tests.ensemble_helpers import make_study, mlflow_parent, train_member

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_student_is_pruned_to_the_target_and_reported(tmp_path_factory, in_tmp):
    folder = tmp_path_factory.mktemp("members")
    members = [train_member(folder, seed) for seed in range(2)]
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    parent = mlflow_parent(uri, "exp")
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    make_study(storage, members, name="s", extra_attrs={
        "mlflow_parent_run_id": parent, "tracking_uri": uri, "experiment": "exp"})  # fmt: skip
    cfg = load_config([f"ensemble.storage={storage}", "ensemble.study_name=s", "ensemble.k=2",
                       "ensemble.latency_batch=16", "ensemble.distill=true",
                       "ensemble.distill_sparsity=0.9", "ensemble.distill_epochs=3"])  # fmt: skip
    result = run_ensemble(cfg)
    student = result.distilled
    assert student is not None
    assert abs(student.sparsity - 0.9) <= 0.01
    assert math.isfinite(student.test_acc) and 0.0 <= student.test_acc <= 1.0
    assert student.nonzero_params == nonzero_params(student.student)[0]
    assert student.nonzero_params < 0.2 * nonzero_params(student.student)[1]
    used = sum(nonzero_params(m)[0] for m in result.ensemble.members)
    assert used == result.report.costs["nonzero_params"]  # the members were left as they were
    with console.capture() as captured:
        print_ensemble_result(result)
    assert STUDENT_ROW in captured.get()
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics
    assert metrics["student_test_acc"] == pytest.approx(student.test_acc)
    assert metrics["student_sparsity"] == pytest.approx(student.sparsity)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ensemble.distill_epochs=0", "ensemble.distill_epochs must be an integer >= 1"),
        ("ensemble.distill_epochs=1.5", "ensemble.distill_epochs must be int"),
        ("ensemble.distill_sparsity=1.0", r"ensemble.distill_sparsity must be in \[0, 1\)"),
        ("ensemble.distill_sparsity=half", r"ensemble.distill_sparsity must be in \[0, 1\)"),
    ],
)
def test_bad_distill_options_fail_before_the_study_is_opened(in_tmp, override, message):
    """The config's own type check (1.5) or `_check_options` names the option."""
    missing = f"sqlite:///{in_tmp / 'none.db'}"
    with pytest.raises(ConfigError, match=message):
        run_ensemble(
            load_config([f"ensemble.storage={missing}", "ensemble.distill=true", override])
        )
