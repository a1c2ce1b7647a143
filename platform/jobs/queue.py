"""The background work orchestration queues, looked up by task name instead of imported.

`jobs.tasks` wraps orchestration's steps as Celery tasks, so it imports `jobs.orchestration`;
orchestration importing `jobs.tasks` (and `ledger.tasks`) back to queue them made import cycles.
It queues them through this module instead, which names the tasks the way beat's schedule in
`hub.settings` does, so the imports point one way: jobs.tasks -> jobs.orchestration -> jobs.queue.
`.importlinter` keeps it so.

A task runs as `.delay()` always ran it: eagerly in the embedded demo, through the broker
otherwise.
"""

from importlib import import_module

from celery import current_app

START_JOB = "jobs.tasks.start_job"
CLOSE_ROUND = "jobs.tasks.close_round_task"
SETTLE_JOB = "ledger.tasks.settle_job"


def task(name: str):
    """The registered Celery task `name` ("module.function", Celery's default naming). In a
    process that has not imported that module yet (daphne, a test) it is imported now, as
    orchestration's lazy imports of it used to do, and only that one: `ledger.tasks` brings in web3."""
    registry = current_app.tasks
    if name not in registry:
        import_module(name.rpartition(".")[0])  # its @shared_task decorators register it
    return registry[name]  # celery.exceptions.NotRegistered if that module does not define it


def start_job(job_id: int) -> None:
    task(START_JOB).delay(job_id)


def close_round(round_id: int) -> None:
    task(CLOSE_ROUND).delay(round_id)


def settle_job(job_id: int) -> None:
    task(SETTLE_JOB).delay(job_id)
