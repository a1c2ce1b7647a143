"""The job form offers exactly what the peers implement, rejects impossible combinations, and
the dynamic topology routes around links that missed a deadline."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from jobs import models as job_models
from jobs.forms import JobForm
from jobs.models import CohortMember, Consent, Job, PeerReport, Round
from jobs.orchestration import build_plans, close_round
from nodes.models import Node
from peers import topology
from peers.models import MODEL_CHOICES
from peers.protocol import SERVER_RULES, from_message
from peers.rules import RULES
from peers.training import LR_SCHEDULES
from peers.wire.compression import get_compressor

FORM = {
    "name": "j",
    "description": "",
    "is_public": "on",
    "dataset": "digits",
    "model": "mlp",
    "hidden": 32,
    "topology": "ring",
    "degree": 4,
    "redraw_every": 5,
    "rule": "mean",
    "byzantine_f": 0,
    "clip_norm": 10,
    "compression": "none",
    "num_peers": 8,
    "rounds": 5,
    "local_steps": 10,
    "lr": 0.1,
    "batch_size": 32,
    "round_timeout_s": 60,
    "min_vram_gb": 0,
    "reward_per_round": 10,
}


def test_platform_choices_exist_on_the_peer_side():
    assert {k for k, _ in job_models.MODEL_CHOICES} == set(MODEL_CHOICES)
    assert {k for k, _ in job_models.TOPOLOGY_CHOICES} <= set(topology.TOPOLOGIES)
    assert {k for k, _ in job_models.RULE_CHOICES} == set(RULES) | set(SERVER_RULES)
    assert {k for k, _ in job_models.LR_SCHEDULE_CHOICES} == set(LR_SCHEDULES)
    for spec, _ in job_models.COMPRESSION_CHOICES:
        get_compressor(spec)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"rule": "krum", "byzantine_f": 1}, "rule"),  # ring: 3 inputs, Krum f=1 needs 5
        ({"rule": "bulyan", "byzantine_f": 1, "topology": "torus"}, "rule"),  # 5 inputs, needs 7
        ({"topology": "expander", "degree": 9}, "topology"),  # degree >= number of peers
        ({"rule": "norm_clip", "clip_norm": 0}, "clip_norm"),
    ],
)
def test_impossible_combinations_are_refused(changes, field):
    form = JobForm({**FORM, **changes})
    assert not form.is_valid() and field in form.errors


@pytest.mark.parametrize(
    "changes",
    [
        {"rule": "krum", "byzantine_f": 1, "topology": "complete"},
        {"rule": "bulyan", "byzantine_f": 1, "topology": "complete"},
        {"topology": "dynamic", "degree": 3, "compression": "topk:0.1", "rule": "median"},
        {"topology": "star", "dataset": "synthetic", "model": "logreg"},
    ],
)
def test_possible_combinations_are_accepted(changes):
    form = JobForm({**FORM, **changes})
    assert form.is_valid(), form.errors


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v3_small", "cnn"])
def test_image_models_need_an_image_dataset(model):
    form = JobForm({**FORM, "dataset": "digits", "model": model})
    assert form.is_valid(), form.errors
    assert form.instance.config().model == model
    form = JobForm({**FORM, "dataset": "synthetic", "model": model})
    assert not form.is_valid()
    assert "is an image model" in form.errors["model"][0] and "tabular" in form.errors["model"][0]


def test_model_choices_carry_their_description():
    choices = dict(JobForm().fields["model"].choices)
    assert choices["resnet18"].startswith("ResNet-18 — ") and "GroupNorm" in choices["resnet18"]
    assert choices["mobilenet_v3_small"].startswith("MobileNetV3-Small — ")
    assert Job(model="resnet18").get_model_display() == "ResNet-18"  # tables show the short label


def test_dp_sgd_refuses_a_batchnorm_model(monkeypatch):
    """No model of the zoo keeps BatchNorm today; one that did could not train with DP-SGD."""
    monkeypatch.setitem(job_models.MODEL_ZOO, "resnet18", job_models.MODEL_ZOO["resnet18"]._replace(batch_norm=True))
    dp = {"dp_level": "sample", "dp_noise": 1.0, "dp_clip": 1.0}
    form = JobForm({**FORM, "model": "resnet18", **dp})
    assert not form.is_valid() and "BatchNorm" in form.errors["model"][0]
    assert JobForm({**FORM, "model": "resnet18", **dp, "dp_level": "client"}).is_valid()
    monkeypatch.undo()
    assert JobForm({**FORM, "model": "resnet18", **dp}).is_valid()


@pytest.mark.django_db
def test_dynamic_topology_cuts_links_that_missed_the_deadline():
    owner = User.objects.create_user("o")
    job = Job.objects.create(owner=owner, name="d", topology="dynamic", degree=3, num_peers=8, rounds=3)
    nodes = []
    for i in range(8):
        node = Node(owner=owner, name=f"n{i}", public_key=f"{i:064x}", last_seen=timezone.now())
        node.issue_token()
        node.save()
        nodes.append(node)
        CohortMember.objects.create(job=job, node=node, position=i)
        Consent.objects.create(job=job, node=node, granted=True, by=owner)
    job.status = Job.Status.RUNNING
    job.save()
    first = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=5))
    plan = dict(build_plans(first))[nodes[0].channel]
    slow = plan["neighbours"][0]["node_id"]
    for node in nodes:
        PeerReport.objects.create(
            round=first,
            node=node,
            train_loss=1,
            eval_loss=1,
            accuracy=0.5,
            samples=10,
            eval_samples=5,
            model_hash="ab" * 32,
            rejected=[{"sender": slow, "reason": "no weights before the deadline"}] if node == nodes[0] else [],
        )
    close_round(first.id)
    job.refresh_from_db()
    assert sorted([nodes[0].id, slow]) in job.cut_links
    second = Round.objects.get(job=job, number=2)
    plans = dict(build_plans(second))
    assert slow not in {n["node_id"] for n in plans[nodes[0].channel]["neighbours"]}
    assert len(plans[nodes[0].channel]["neighbours"]) == 3  # still 3-regular: reconnected elsewhere
    assert job.spectral_gap() > 0


def test_learning_rate_schedule_defaults_to_cosine_and_reaches_the_plan():
    form = JobForm(FORM)  # a client that leaves the schedule out
    assert form.is_valid(), form.errors
    assert form.cleaned_data["lr_schedule"] == "cosine"
    form = JobForm({**FORM, "lr_schedule": "constant"})
    assert form.is_valid() and form.cleaned_data["lr_schedule"] == "constant"
    assert Job(lr_schedule="constant").config().lr_schedule == "constant"
    form = JobForm({**FORM, "lr_schedule": "step"})
    assert not form.is_valid() and "lr_schedule" in form.errors


STAR = {**FORM, "topology": "star", "num_peers": 4}


@pytest.mark.parametrize(
    "changes, field, says",
    [
        ({**FORM, "rule": "fedavg"}, "topology", "choose the star topology"),  # ring
        ({**FORM, "rule": "fedadam", "topology": "complete"}, "topology", "choose the star topology"),
        ({**STAR, "rule": "fedavg", "secure_aggregation": "on", "num_peers": 3}, "secure_aggregation", "3 leaves"),
        ({**STAR, "rule": "fedprox", "dp_noise": 1.0, "dp_clip": 1.0}, "dp_noise", "without differential privacy"),
        ({**STAR, "rule": "fedprox", "prox_mu": -0.5}, "prox_mu", "between 0 and 100"),
        ({**STAR, "rule": "fedadam", "server_lr": 0}, "server_lr", "greater than 0"),
    ],
)
def test_centralized_baselines_refuse_what_cannot_work(changes, field, says):
    form = JobForm(changes)
    assert not form.is_valid()
    assert says in str(form.errors[field]), form.errors


def test_centralized_baselines_on_the_star_reach_the_job_config():
    for rule, extra, params in (
        ("fedavg", {}, {}),
        ("fedprox", {"prox_mu": 0.2}, {"mu": 0.2}),
        ("fedadam", {"server_lr": 0.05}, {"server_lr": 0.05}),
        ("fedprox", {}, {"mu": 0.01}),  # a client that leaves mu out gets the default
    ):
        form = JobForm({**STAR, "rule": rule, "compression": "int8", **extra})
        assert form.is_valid(), (rule, form.errors)
        config = form.instance.config()
        assert (config.rule, config.rule_params) == (rule, params)
    form = JobForm({**STAR, "rule": "mean"})  # gossip over the star stays possible
    assert form.is_valid(), form.errors


@pytest.mark.django_db
def test_the_job_form_page_offers_the_baselines_and_refuses_them_off_the_star(client):
    owner = User.objects.create_user("creator")
    client.force_login(owner)
    page = client.get("/jobs/new/").content.decode()
    assert "FedAvg (centralized baseline on a star)" in page and 'name="server_lr"' in page
    refused = client.post("/jobs/new/", {**FORM, "rule": "fedavg", "action": "draft"})
    assert refused.status_code == 200 and not Job.objects.exists()
    assert "choose the star topology" in refused.content.decode()
    saved = client.post("/jobs/new/", {**STAR, "rule": "fedprox", "prox_mu": 0.3, "action": "draft"})
    assert saved.status_code == 302
    job = Job.objects.get()
    assert (job.rule, job.config().rule_params) == ("fedprox", {"mu": 0.3})


@pytest.mark.django_db
def test_the_signed_plans_of_a_star_baseline_name_its_centre_the_aggregator():
    owner = User.objects.create_user("o")
    job = Job.objects.create(
        owner=owner, name="s", topology="star", rule="fedadam", server_lr=0.05, num_peers=4, rounds=2
    )
    nodes = []
    for i in range(4):
        node = Node(owner=owner, name=f"n{i}", public_key=f"{i + 1:064x}", last_seen=timezone.now())
        node.issue_token()
        node.save()
        nodes.append(node)
        CohortMember.objects.create(job=job, node=node, position=i)
        Consent.objects.create(job=job, node=node, granted=True, by=owner)
    job.status = Job.Status.RUNNING
    job.save()
    first = Round.objects.create(job=job, number=1, deadline=timezone.now() + timedelta(minutes=5))
    plans = {channel: from_message(message) for channel, message in build_plans(first)}
    assert {plan.aggregator for plan in plans.values()} == {nodes[0].id}  # position 0: the star's centre
    assert {n.node_id for n in plans[nodes[0].channel].neighbours} == {n.id for n in nodes[1:]}
    assert [n.node_id for n in plans[nodes[2].channel].neighbours] == [nodes[0].id]
    assert plans[nodes[1].channel].config.rule_params == {"server_lr": 0.05}
