"""MLflow tells the truth: curves start at the first validation, stopped trials
end KILLED, every run type has a telling name, the shared metric names and its provenance.

One tiny study drives it, as a user would: `search` with one COMPLETE trial, the study
resumed with a recipe that cannot learn (stopped by the median rule at its first
validation), resumed again (a second COMPLETE trial), a `train` and an `ensemble`; then the
SQLite store is read back with MlflowClient.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from lightning_prune.search import load_study
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_SOURCE_NAME
from optuna.trial import TrialState

from lightning_prune import __version__
from lightning_prune.cli import main
from lightning_prune.config import load_config
from lightning_prune.provenance import VERSION_TAG, data_digest, dataset, git_commit
from lightning_prune.run_metrics import SHARED
from lightning_prune.run_names import pruning_preset, train_run
from tests.conftest import needs_fmnist
from tests.search_helpers import tiny

STUDY = "truth"
ONLY_UNSTRUCTURED = "search.space.granularity.choices=[unstructured]"  # n:m fixes sparsity


def _git_repo(folder) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=folder, check=True, capture_output=True, text=True,
                              timeout=30).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "start")
    return git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The study, train and ensemble runs of one store; the commands' exit codes."""
    tmp = tmp_path_factory.mktemp("truth")
    commit = _git_repo(tmp)
    args = tiny(tmp, f"search.study_name={STUDY}", ONLY_UNSTRUCTURED)
    first = ["search.n_trials=1"]
    stopped = [  # a learning rate that cannot learn, judged against the first trial
        "search.n_trials=1", "search.pruner.kind=median", "search.pruner.n_startup_trials=1",
        "search.space.lr.low=1.0e-9", "search.space.lr.high=2.0e-9",
    ]  # fmt: skip
    resumed = ["search.n_trials=1"]
    train = tiny(tmp, "pruning=magnitude_gradual", "pruning.frequency=2")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        codes = {
            "first": main(["search", *args, *first]),
            "stopped": main(["search", *args, *stopped]),
            "search": main(["search", *args, *resumed]),
            "train": main(["train", *train]),
            "ensemble": main(["ensemble", *args, "ensemble.k=2", "ensemble.latency_batch=8"]),
        }  # fmt: skip
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lightning-prune").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    study = load_study(f"sqlite:///{tmp}/optuna.db", STUDY)
    return {"client": client, "runs": runs, "study": study, "codes": codes, "commit": commit}


def _by_job(store, job: str) -> list:
    return [r for r in store["runs"] if r.data.tags.get("job") == job]


def _steps(client: MlflowClient, run, name: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, name))


def test_the_commands_ran(store):
    assert store["codes"]["first"] == 0 and store["codes"]["search"] == 0
    assert store["codes"]["train"] == 0 and store["codes"]["ensemble"] == 0
    states = [t.state for t in store["study"].trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert all(r.info.status != "RUNNING" for r in store["runs"])


def test_trial_curves_start_at_the_first_validation_and_end_with_the_final_value(store):
    client = store["client"]
    for trial in store["study"].trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        curve = trial.user_attrs["curve"]
        steps = _steps(client, run, "val_acc")
        assert 0 not in steps and steps[0] == curve[0]["step"] > 0, (trial.number, steps)
        assert steps[-1] == curve[-1]["step"]  # the final value sits at the last step
        assert run.data.metrics["val_acc"] == pytest.approx(trial.user_attrs["val_acc"])
        assert run.data.metrics["sparsity"] == pytest.approx(trial.user_attrs["sparsity"])
        for loss in ("train_loss", "val_loss"):
            loss_steps = _steps(client, run, loss)
            assert loss_steps and 0 not in loss_steps, (trial.number, loss)
        assert len(_steps(client, run, "val_loss")) == len(curve)


def test_a_stopped_trial_ends_killed_with_its_state_and_reason(store):
    client = store["client"]
    first, stopped, last = store["study"].trials
    complete = [first, last]
    run = client.get_run(stopped.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["trial_state"] == "PRUNED"
    assert run.data.tags["stop_reason"] == stopped.user_attrs["pruned_reason"]
    assert "below MedianPruner's threshold at validation 0" in run.data.tags["stop_reason"]
    for trial in complete:
        done = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert (done.info.status, done.data.tags["trial_state"]) == ("FINISHED", "COMPLETE")
        assert "stop_reason" not in done.data.tags


def test_run_names_say_what_each_run_is(store):
    names = sorted(r.info.run_name for r in store["runs"])
    assert names == ["dense-reference", "ensemble-optimized-k2", f"study-{STUDY}",
                     "train-magnitude_gradual", "trial-0", "trial-1", "trial-2"]  # fmt: skip
    (parent,) = _by_job(store, "search")
    nested = [r for r in store["runs"] if r.data.tags.get("job") != "train"]
    assert all(r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id
               for r in nested if r is not parent)  # fmt: skip


def test_every_run_type_carries_the_shared_metric_names(store):
    client = store["client"]
    for job in ("search", "train", "ensemble", "dense-reference", "search-trial"):
        for run in _by_job(store, job):
            if run.data.tags.get("trial_state") == "PRUNED":  # never tested: no test_acc
                assert set(SHARED) - set(run.data.metrics) == {"test_acc"}
                continue
            assert set(SHARED) <= set(run.data.metrics), (job, sorted(run.data.metrics))
            if job != "ensemble":  # the one run type logged at a single step 0
                assert 0 not in _steps(client, run, "val_acc"), job


def test_the_parent_holds_the_best_feasible_trial_at_the_finished_trials_step(store):
    (parent,) = _by_job(store, "search")
    study, client = store["study"], store["client"]
    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    for name in SHARED:
        assert parent.data.metrics[name] == pytest.approx(best.user_attrs[name]), name
    assert _steps(client, parent, "val_acc") == [1, 2, 3]  # each search: its finished trials
    assert _steps(client, parent, "trials_pruned") == [1, 2, 3]  # one point per search
    assert not [name for name in parent.data.metrics if name.startswith("best_")]


def test_the_ensemble_run_sums_its_members_costs(store):
    (run,) = _by_job(store, "ensemble")
    client = store["client"]
    trials = {str(t.number): t for t in store["study"].trials}
    used = [trials[run.data.params[f"member_{i}_trial"]] for i in range(2)
            if float(run.data.params[f"member_{i}_weight"]) > 0]  # fmt: skip
    assert used
    for name in ("nonzero_params", "flops"):
        assert run.data.metrics[name] == pytest.approx(sum(t.user_attrs[name] for t in used))
    assert run.data.metrics["test_acc"] == run.data.metrics["ensemble_test_acc"]
    assert 0 <= run.data.metrics["val_acc"] <= 1 and 0 < run.data.metrics["sparsity"] < 1
    assert run.data.tags["study"] == STUDY
    assert _steps(client, run, "test_acc") == [0]


def test_every_run_records_its_source_commit_version_and_dataset(store):
    digests = set()
    for run in store["runs"]:
        tags, job = run.data.tags, run.data.tags["job"]
        command = {"train": "train", "ensemble": "ensemble"}.get(job, "search")
        assert tags[MLFLOW_SOURCE_NAME] == f"lightning-prune {command}", run.info.run_name
        assert tags[MLFLOW_GIT_COMMIT] == store["commit"]
        assert tags[VERSION_TAG] == __version__
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == "synthetic" and used.dataset.source_type == "code"
        context = {t.key: t.value for t in used.tags}["mlflow.data.context"]
        assert context == ("evaluation" if job == "ensemble" else "training")
        digests.add(used.dataset.digest)
    assert len(digests) == 1  # the same images everywhere: the same digest


def test_names_of_presets_and_a_users_run_name():
    assert pruning_preset(load_config(["pruning=dns", "pruning.frequency=10"]).pruning) == "dns"
    assert pruning_preset(load_config([]).pruning) == "dense"
    assert train_run(load_config(["pruning=structured"])) == "train-structured"
    assert train_run(load_config(["run_name=mine", "pruning=dns"])) == "mine"


def test_provenance_outside_git_and_digests_that_follow_the_data(tmp_path):
    assert git_commit(str(tmp_path)) is None
    options = dict(load_config(["data=synthetic"]).data)
    assert data_digest(options, []) == data_digest({**options, "batch_size": 1}, [])
    assert data_digest(options, []) != data_digest({**options, "num_train": 7}, [])


@needs_fmnist
def test_fashion_mnist_is_named_by_its_folder_and_digested_from_its_files():
    found = dataset(load_config([]).data)
    assert found.name == "fashion-mnist" and found.source._get_source_type() == "local"
    assert re.fullmatch(r"[0-9a-f]{12}", found.digest)
    assert dataset(load_config(["data.subset=100"]).data).digest != found.digest
