"""The background work orchestration queues, looked up by task name instead of imported.

`jobs.tasks` wraps orchestration's steps as Celery tasks, so it imports `jobs.orchestration`;
orchestration importing `jobs.tasks` (and `ledger.tasks`) back to queue them made import cycles.
It queues them through this module instead, which names the tasks the way beat's schedule in
`hub.settings` does, so the imports point one way: jobs.tasks -> jobs.orchestration -> jobs.queue.
`.importlinter` keeps it so.

A task runs eagerly in the embedded demo and through the broker otherwise. Queueing never
fails the caller: the state change it follows is already committed, and beat's periodic tasks
(start_ready_jobs, enforce_deadlines, settle_ended_jobs) pick up whatever could not be
queued, so a broker outage delays work instead of losing it or failing a peer's request.
"""

import logging
from importlib import import_module

from celery import current_app

log = logging.getLogger(__name__)
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

START_JOB = "jobs.tasks.start_job"
CLOSE_ROUND = "jobs.tasks.close_round_task"
SETTLE_JOB = "ledger.tasks.settle_job"
FUND_JOB = "ledger.tasks.fund_job"
GRANT_TEST_TOKENS = "ledger.tasks.grant_test_tokens"
REFRESH_WALLET = "ledger.tasks.refresh_wallet"
AUDIT_JOB = "ledger.tasks.audit_job_task"
STAKE_FOR_CONSENT = "ledger.tasks.stake_for_consent"
REGISTER_FINAL_MODEL = "ledger.tasks.register_final_model"


def task(name: str):
    """The registered Celery task `name` ("module.function", Celery's default naming). In a
    process that has not imported that module yet (daphne, a test) it is imported now, as
    orchestration's lazy imports of it used to do, and only that one: `ledger.tasks` brings in web3."""
    registry = current_app.tasks
    if name not in registry:
        import_module(name.rpartition(".")[0])  # its @shared_task decorators register it
    return registry[name]  # celery.exceptions.NotRegistered if that module does not define it


def _queue(name: str, *args) -> bool:
    """Queue a task; on failure log it and return False (beat retries the work)."""
    try:
        task(name).apply_async(args, retry=True, retry_policy=PUBLISH_RETRY)
    except Exception as exc:  # broker unreachable: the database already holds the state
        if current_app.conf.task_always_eager:
            raise  # in process, a failure is the task's own: let the caller see it
        log.warning("could not queue %s%s (%s); beat will pick it up", name, args, exc)
        return False
    return True


def start_job(job_id: int) -> bool:
    return _queue(START_JOB, job_id)


def close_round(round_id: int) -> bool:
    return _queue(CLOSE_ROUND, round_id)


def settle_job(job_id: int) -> bool:
    return _queue(SETTLE_JOB, job_id)


def fund_job(job_id: int) -> bool:
    return _queue(FUND_JOB, job_id)


def grant_test_tokens(user_id: int) -> bool:
    return _queue(GRANT_TEST_TOKENS, user_id)


def refresh_wallet(user_id: int) -> bool:
    return _queue(REFRESH_WALLET, user_id)


def audit_job(job_id: int) -> bool:
    return _queue(AUDIT_JOB, job_id)


def stake_for_consent(job_id: int, user_id: int) -> bool:
    return _queue(STAKE_FOR_CONSENT, job_id, user_id)


def register_final_model(final_model_id: int) -> bool:
    return _queue(REGISTER_FINAL_MODEL, final_model_id)
