"""MLflow run states follow Optuna trial states, whoever notices the change.

A trial's MLflow run is ended by the process running the trial (`runs.TrialRun.finish`). A
process killed mid-trial cannot, so the process that fails its trial ends the run instead
(search/retries.py), and every search command starting on or joining a study ends what is
still left RUNNING from earlier (`repair`): a rerun cleans up after any crash.

Optuna state -> MLflow status: COMPLETE -> FINISHED, PRUNED -> KILLED (stopped early: its
numbers are not a finished run's; the `trial_state` tag says PRUNED and `stop_reason` why),
FAIL -> FAILED, FAIL after Ctrl-C -> KILLED (`trial_state` FAIL).
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
from lightning_prune.search.contract import TrialAttr, tracking_of
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial

from lightning_prune import tracking


class Tag:
    """MLflow tags of a study's runs."""

    JOB = "job"  # "search" (parent), "search-trial", "dense-reference", "ensemble"
    STUDY = "study"  # the study name, on all of them
    TRIAL_NUMBER = "trial_number"
    STATE = "trial_state"  # the Optuna state the trial ended in
    STOP_REASON = "stop_reason"  # why a PRUNED trial was stopped (its `pruned_reason`)
    REASON = tracking.REASON_TAG
    ENDED_BY = tracking.ENDED_BY_TAG


STATUS_OF_STATE = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
UNKNOWN_REASON = "failed in Optuna with no recorded reason (its worker stopped or was killed)"


def mlflow_status(state: str, interrupted: bool = False) -> str:
    """The MLflow status of a run whose trial ended in Optuna `state`."""
    if state == "FAIL" and interrupted:
        return "KILLED"
    return STATUS_OF_STATE.get(state, "FAILED")


def stop_tags(state: str, user_attrs: dict) -> dict[str, str]:
    """The `trial_state` tag, plus `stop_reason` for a PRUNED trial that recorded one."""
    tags = {Tag.STATE: state}
    reason = user_attrs.get(TrialAttr.PRUNED_REASON)
    if state == "PRUNED" and reason:
        tags[Tag.STOP_REASON] = str(reason)[:5000]
    return tags


def end_trial_run(uri: str, run_id: str, trial: FrozenTrial, reason: str, ended_by: str) -> None:
    """End the run of a finished trial that its own process did not end."""
    state = trial.state.name
    tags = {**stop_tags(state, trial.user_attrs), Tag.ENDED_BY: ended_by}
    if state == "FAIL":
        worker = trial.user_attrs.get(TrialAttr.WORKER)
        fallback = f"{reason} (worker {worker})" if worker else reason
        tags[Tag.REASON] = trial.user_attrs.get(TrialAttr.FAIL_REASON) or fallback
    status = mlflow_status(state, bool(trial.user_attrs.get(TrialAttr.INTERRUPTED)))
    tracking.end_run(uri, run_id, status, tags)


def end_trial_runs(
    study: optuna.Study, trials: Iterable[FrozenTrial], reason: str, ended_by: str
) -> int:
    """End the still RUNNING runs of these finished trials (just failed by this process);
    `reason` is for a FAIL trial that carries none. Returns how many were ended."""
    where = tracking_of(study)
    uri = where.uri
    if not uri:
        return 0
    client = MlflowClient(uri)
    count = 0
    trials = [t for t in trials if t.state.is_finished()]
    unlinked = [t for t in trials if not t.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)]
    if unlinked and where.experiment:  # killed between creating its run and recording it
        for run in running_runs(uri, where.experiment, study.study_name):
            number = run.data.tags.get(Tag.TRIAL_NUMBER)
            for trial in unlinked:
                if run.data.tags.get(Tag.JOB) == "search-trial" and number == str(trial.number):
                    end_trial_run(uri, run.info.run_id, trial, reason, ended_by)
                    count += 1
    for trial in trials:
        run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
        if not run_id:
            continue
        try:
            run = tracking.retry(client.get_run, run_id)
        except MlflowException:  # recorded in another store, or deleted for good
            continue
        if run.info.status == "RUNNING" or _disagrees(run, trial):
            end_trial_run(uri, run_id, trial, reason, ended_by)
            count += 1
    return count


def _disagrees(run: Run, trial: FrozenTrial) -> bool:
    """A run ended by its worker in a state the trial never reached in Optuna: the worker
    was killed after ending its run and before Optuna recorded the result."""
    if trial.number != int(run.data.tags.get(Tag.TRIAL_NUMBER, -1)):
        return False  # a retry's inherited run id: the original's run is the original's
    return run.data.tags.get(Tag.STATE) not in (None, trial.state.name)


def running_runs(uri: str, experiment: str, study_name: str) -> list[Run]:
    """RUNNING runs of the study in the experiment, deleted ones included."""
    client = MlflowClient(uri)
    experiment_id = tracking.retry(tracking.ensure_experiment, uri, experiment)
    found: list[Run] = []
    token = None
    while True:
        page = tracking.retry(
            client.search_runs,
            [experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        found += [run for run in page if run.data.tags.get(Tag.STUDY) == study_name]
        token = page.token
        if not token:
            return found


def _trial_of(run: Run, by_run_id: dict, by_number: dict, parent_run_id: str):
    """The trial a run records: by the trial's recorded run id, else (a run created just
    before its worker died) by its trial number under this study's parent run."""
    trial = by_run_id.get(run.info.run_id)
    number = run.data.tags.get(Tag.TRIAL_NUMBER, "")
    if trial is None and run.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent_run_id:
        trial = by_number.get(int(number)) if number.isdigit() else None
    return trial


def repair(
    study: optuna.Study, uri: str, experiment: str, parent_run_id: str, ended_by: str
) -> dict[str, int]:
    """End the study's leftover RUNNING runs: a trial's run whose trial is finished gets the
    trial's state; a deleted run (a duplicate parent of an earlier race) is KILLED.

    Runs of RUNNING trials are left alone: their workers may be alive elsewhere (heartbeats
    or the dead-process check fail them, and then `end_trial_runs` ends their runs)."""
    trials = study.get_trials(deepcopy=False)
    by_run_id: dict[str, FrozenTrial] = {}
    for trial in trials:  # a retry inherits its original's run id until it makes its own
        run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
        if run_id and trial.state.is_finished():
            by_run_id.setdefault(run_id, trial)
    by_number = {t.number: t for t in trials}
    counts = {"trial_runs": 0, "deleted_runs": 0}
    for run in running_runs(uri, experiment, study.study_name):
        run_id = run.info.run_id
        if run_id == parent_run_id:
            continue
        if run.info.lifecycle_stage == "deleted":
            reason = "deleted while RUNNING (e.g. the duplicate parent run of an earlier race)"
            tracking.end_run(uri, run_id, "KILLED", {Tag.REASON: reason, Tag.ENDED_BY: ended_by})
            counts["deleted_runs"] += 1
            continue
        trial = _trial_of(run, by_run_id, by_number, parent_run_id)
        if trial is not None and trial.state.is_finished():
            end_trial_run(uri, run_id, trial, UNKNOWN_REASON, ended_by)
            counts["trial_runs"] += 1
    return counts
