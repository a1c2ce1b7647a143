"""A job creator switches differential privacy on in the job form; the plan carries it to the
peers, their reports carry the epsilon they spent, and the job page shows it."""

import math

import pytest

from jobs.forms import JobForm
from jobs.orchestration import ReportRefused, accept_report, signed_plans
from tests.factories import make_running_job, make_user, peer_report
from tests.test_job_options import FORM

PRIVATE = {"dp_level": "sample", "dp_noise": 1.1, "dp_clip": 0.5, "dp_epsilon": 8}


@pytest.mark.django_db
def test_the_form_switches_dp_on_and_the_plans_carry_it():
    form = JobForm({**FORM, **PRIVATE})
    assert form.is_valid(), form.errors
    job = form.save(commit=False)
    job.owner = make_user()
    job.save()
    config = job.config()
    assert (config.dp_level, config.dp_noise, config.dp_clip, config.dp_epsilon) == ("sample", 1.1, 0.5, 8.0)
    assert JobForm(FORM).is_valid() and JobForm(FORM).save(commit=False).config().dp_noise == 0.0  # off by default
    assert JobForm(FORM).save(commit=False).config().secagg_dropout == 0.5  # SecAgg tolerates just under half
    assert JobForm({**FORM, "secagg_dropout": 0.25}).save(commit=False).config().secagg_dropout == 0.25


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"dp_noise": 1.0, "dp_clip": 0}, "dp_clip"),
        ({"dp_noise": -1}, "dp_noise"),
        ({"dp_noise": "nan"}, "dp_noise"),
        ({"dp_epsilon": "inf"}, "dp_epsilon"),
        ({"dp_level": "everything"}, "dp_level"),
        ({"secagg_dropout": 0.6}, "secagg_dropout"),
        ({"secagg_dropout": 0}, "secagg_dropout"),
        ({"secagg_dropout": "nan"}, "secagg_dropout"),
    ],
)
@pytest.mark.django_db
def test_numbers_a_peer_would_refuse_are_form_errors(changes, field):
    form = JobForm({**FORM, **changes})
    assert not form.is_valid() and field in form.errors, form.errors


@pytest.mark.django_db
def test_reports_keep_the_epsilon_spent_and_refuse_nonsense(client):
    owner = make_user()
    job, rnd, (a, b) = make_running_job(owner, dp_noise=1.0, dp_clip=1.0, dp_epsilon=10)
    assert all(plan.config.dp_noise == 1.0 for plan in signed_plans(rnd))
    stored = accept_report(a, peer_report(job, a, epsilon=2.5))
    assert stored.epsilon == 2.5 and stored.as_event()["epsilon"] == 2.5
    for bad in (-1.0, math.inf):
        with pytest.raises(ReportRefused, match="epsilon"):
            accept_report(b, peer_report(job, b, epsilon=bad))
    client.force_login(owner)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="job-epsilon"' in page and "budget 10.00" in page
    assert "client-level" in page.split('id="job-epsilon"')[1][:300]
    plain_job, _, _ = make_running_job(owner, name="plain")
    assert 'id="job-epsilon"' not in client.get(f"/jobs/{plain_job.id}/").content.decode()


@pytest.mark.django_db
def test_a_job_whose_privacy_budget_is_spent_finishes_instead_of_failing(exchange):
    """Peers stop when the job's budget allows no further round and say so in their report: the
    platform ends the job after that round, finished (before: the next round got no report and
    the job failed)."""
    from jobs import orchestration
    from jobs.models import Consent, Job
    from tests.factories import make_node, make_user, peer_report

    owner = make_user()
    job = Job.objects.create(owner=owner, name="private", num_peers=2, rounds=5, dp_noise=2.0, dp_epsilon=5.0)
    nodes = [make_node(make_user(), f"p{i}", public_key=f"{i + 1:064x}", online=True) for i in range(2)]
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    assert orchestration.start_job_if_ready(job.id)
    rnd = job.round_set.get(number=1)
    orchestration.accept_report(nodes[0], peer_report(job, nodes[0], 1, epsilon=4.2, budget_spent=True))
    orchestration.accept_report(nodes[1], peer_report(job, nodes[1], 1, epsilon=4.2, budget_spent=True))
    orchestration.close_round(rnd.id)
    job.refresh_from_db()
    assert job.status == Job.Status.FINISHED and not job.failure
    assert job.round_set.count() == 1 and "privacy budget" in job.ended_early and "after round 1" in job.ended_early

    # Every member is told, with the platform's signature, so none waits for another plan.
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from nodes.authority import platform_key
    from peers.protocol import JobEvent, event_bytes, from_message
    from peers.wire.signing import verify

    layer = get_channel_layer("peers")

    async def first_event(channel: str):
        """Read the inbox in one event loop (channels_redis re-delivers across loops) up to the event."""
        for _ in range(5):  # the round's plan first, then the event
            message = from_message(await layer.receive(channel))
            if isinstance(message, JobEvent):
                return message
        return None

    for node in nodes:
        event = async_to_sync(first_event)(node.channel)
        assert event is not None
        assert event.event == "ended" and event.job_id == job.id and "privacy budget" in event.detail["reason"]
        assert verify(platform_key().public_key_hex, event_bytes(job.id, "ended"), event.signature)
