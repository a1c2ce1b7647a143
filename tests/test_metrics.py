"""/metrics (hub/metrics.py): Prometheus' text format, computed from the database at each scrape,
readable from METRICS_ALLOWED_IPS and by staff only."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Job, PeerReport, Round
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db

ELSEWHERE = "203.0.113.7"


def scrape(client: Client | None = None, **extra) -> dict:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_values_match_the_database():
    owner = make_user("owner")
    online = make_node(owner, "fast", online=True, hardware={"cpu": "x", "cores": 8, "ram_gb": 32.0, "gpus": []})
    offline = make_node(owner, "gone")
    offline.last_seen = timezone.now() - timedelta(hours=1)
    offline.save()
    job = Job.objects.create(owner=owner, name="j", status=Job.Status.RUNNING)
    Job.objects.create(owner=owner, name="k", status=Job.Status.SETTLED)
    Job.objects.create(owner=owner, name="l", status=Job.Status.SETTLED)
    closed = Round.objects.create(job=job, number=1, status=Round.Status.CLOSED, deadline=timezone.now())
    Round.objects.create(job=job, number=2, deadline=timezone.now())
    for node in (online, offline):
        PeerReport.objects.create(
            round=closed, node=node, train_loss=1, eval_loss=1, accuracy=0.5, samples=1, eval_samples=1, model_hash="0"
        )
    m = scrape()
    assert m[("dfl_reports_accepted_total", ())] == 2
    assert m[("dfl_rounds_closed_total", ())] == 1
    assert m[("dfl_payouts_confirmed_total", ())] == 0
    assert m[("dfl_jobs", (("status", "running"),))] == 1
    assert m[("dfl_jobs", (("status", "settled"),))] == 2
    assert m[("dfl_jobs", (("status", "failed"),))] == 0
    assert m[("dfl_nodes_online", ())] == 1
    fast = (("name", "fast"), ("node", str(online.id)))
    gone = (("name", "gone"), ("node", str(offline.id)))
    assert m[("dfl_node_online", fast)] == 1 and m[("dfl_node_online", gone)] == 0
    assert m[("dfl_node_cores", fast)] == 8 and m[("dfl_node_ram_gb", fast)] == 32.0
    assert m[("dfl_node_last_seen_age_seconds", fast)] < 60
    assert 3500 < m[("dfl_node_last_seen_age_seconds", gone)] < 3700
    # A new report shows at the next scrape, whichever process stored it.
    PeerReport.objects.filter(node=offline).delete()
    assert scrape()[("dfl_reports_accepted_total", ())] == 1


def test_other_addresses_are_refused_unless_staff(settings):
    response = Client().get("/metrics", REMOTE_ADDR=ELSEWHERE)
    assert response.status_code == 403
    user = Client()
    user.force_login(make_user("someone"))
    assert user.get("/metrics", REMOTE_ADDR=ELSEWHERE).status_code == 403
    staff = Client()
    staff_user = make_user("staff")
    staff_user.is_staff = True
    staff_user.save()
    staff.force_login(staff_user)
    assert ("dfl_nodes_online", ()) in scrape(staff, REMOTE_ADDR=ELSEWHERE)
    settings.METRICS_ALLOWED_IPS = ["203.0.113.0/24"]
    assert ("dfl_nodes_online", ()) in scrape(REMOTE_ADDR=ELSEWHERE)
    assert Client().get("/metrics").status_code == 403  # 127.0.0.1 no longer listed
