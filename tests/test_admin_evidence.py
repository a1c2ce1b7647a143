"""The Django admin keeps audit evidence read-only (issue 11): peer reports, scores, consents,
rounds and everything that went on chain can be viewed, searched and filtered, never added,
edited or deleted; a job's state is the orchestration's; wallet keys are never shown."""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.utils import timezone

from jobs.models import CohortMember, Consent, Job, PeerReport, Round
from ledger.models import (
    WEI_PER_TOKEN,
    ContractDeployment,
    ContributionScore,
    Escrow,
    Payout,
    PayoutBatch,
    RoundSettlement,
    Wallet,
)
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db
CIPHERTEXT = "gAAAAABsecret-wallet-key-ciphertext-must-never-show"
ADDRESS = "0x" + "ab" * 20
TX = "0x" + "cd" * 32


@pytest.fixture
def evidence():
    """A job with a closed round: two reports, scores, a consent, a settlement and a payout."""
    owner = make_user("creator")
    job = Job.objects.create(owner=owner, name="digits", reward_per_round=10, rounds=2, status=Job.Status.FINISHED)
    other = Job.objects.create(owner=owner, name="mnist elsewhere", rounds=1)
    alice, bob = make_node(make_user("alice"), "alice-box"), make_node(make_user("bob"), "bob-box")
    rnd = Round.objects.create(
        job=job, number=2, status=Round.Status.CLOSED, deadline=timezone.now() + timedelta(minutes=1)
    )
    reports = {}
    for node in (alice, bob):
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
        CohortMember.objects.create(job=job, node=node, position=node.id)
        reports[node.name] = PeerReport.objects.create(
            round=rnd,
            node=node,
            train_loss=1.0,
            eval_loss=1.0,
            accuracy=0.5,
            samples=10,
            eval_samples=10,
            model_hash="ab" * 32,
        )
        ContributionScore.objects.create(round=rnd, node=node, score_ppm=500_000, source="validator")
    Escrow.objects.create(job=job, budget_wei=20 * WEI_PER_TOKEN, config_hash=TX, status=Escrow.Status.FUNDED)
    settlement = RoundSettlement.objects.create(
        job=job,
        round=rnd,
        number=2,
        model_hash=TX,
        contribution_root=TX,
        reward_root=TX,
        total_wei=10 * WEI_PER_TOKEN,
        scoring="validator",
        tx_hash=TX,
    )
    PayoutBatch.objects.create(settlement=settlement, chunk=0, tx_hash=TX)
    payout = Payout.objects.create(
        job=job, round=rnd, settlement=settlement, node=alice, index=0, address=ADDRESS, amount_wei=5 * WEI_PER_TOKEN
    )
    wallet = Wallet.objects.create(user=owner, address="0x" + "ef" * 20, key_ciphertext=CIPHERTEXT)
    ContractDeployment.objects.create(
        name="RewardToken", chain_id=31337, address=ADDRESS, tx_hash=TX, block_number=1, bytecode_sha256="0" * 64
    )
    return {"job": job, "other": other, "round": rnd, "reports": reports, "payout": payout, "wallet": wallet}


def url(obj, view: str = "change") -> str:
    meta = obj._meta
    base = f"/admin/{meta.app_label}/{meta.model_name}/"
    return base if view == "changelist" else f"{base}{obj.pk}/{view}/" if view != "add" else f"{base}add/"


def found(client, changelist: str, **params) -> list:
    """The rows a changelist shows for these search and filter parameters."""
    response = client.get(changelist, params)
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_reports_and_consents_read_like_what_they_are(evidence):
    report = evidence["reports"]["alice-box"]
    job, node = evidence["job"], report.node
    assert str(report) == f"job {job.id} round 2 node {node.id}"
    assert str(Consent.objects.get(job=job, node=node)) == f"job {job.id} node {node.id}: granted"


def test_evidence_cannot_be_changed_added_or_deleted_in_the_admin(evidence, admin_client):
    report = evidence["reports"]["alice-box"]
    rows = [
        report,
        evidence["payout"],
        ContributionScore.objects.first(),
        Consent.objects.first(),
        evidence["round"],
        RoundSettlement.objects.first(),
        PayoutBatch.objects.first(),
        Escrow.objects.first(),
        evidence["wallet"],
        ContractDeployment.objects.first(),
    ]
    for row in rows:
        page = admin_client.get(url(row))
        assert page.status_code == 200, row  # viewable ...
        text = page.content.decode()
        assert 'name="_save"' not in text and 'class="deletelink"' not in text, row  # ... not editable
        assert admin_client.post(url(row), {"accuracy": "1.0", "amount_wei": "1"}).status_code == 403, row
        assert admin_client.get(url(row, "delete")).status_code == 403, row
        assert admin_client.post(url(row, "delete"), {"post": "yes"}).status_code == 403, row
        assert admin_client.get(url(row, "add")).status_code == 403, row
        assert type(row).objects.filter(pk=row.pk).exists(), row
    assert PeerReport.objects.get(pk=report.pk).accuracy == 0.5
    assert int(Payout.objects.get(pk=evidence["payout"].pk).amount_wei) == 5 * WEI_PER_TOKEN

    # The bulk delete action is gone too.
    changelist = url(report, "changelist")
    assert "delete_selected" not in admin_client.get(changelist).content.decode()
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [report.pk], "post": "yes"})
    assert PeerReport.objects.filter(pk=report.pk).exists()


def test_a_jobs_state_is_read_only_and_a_job_with_evidence_is_not_deletable(evidence, admin_client):
    job = evidence["job"]
    page = admin_client.get(url(job)).content.decode()
    assert 'name="name"' in page  # its settings stay editable
    for field in ("status", "current_round", "started_at", "finished_at", "failure"):
        assert f'name="{field}"' not in page, field
    assert admin_client.get(url(job, "delete")).status_code == 403
    assert admin_client.post(url(job, "delete"), {"post": "yes"}).status_code == 403
    assert Job.objects.filter(pk=job.pk).exists()
    assert "delete_selected" not in admin_client.get(url(job, "changelist")).content.decode()
    other = evidence["other"]  # no round, no escrow: a mistake may still go
    assert admin_client.get(url(other, "delete")).status_code == 200


def test_every_list_searches_and_filters(evidence, admin_client):
    mine = [m for m, a in admin.site._registry.items() if m._meta.app_label in {"jobs", "ledger", "nodes", "accounts"}]
    assert {PeerReport, Payout, ContributionScore, Wallet, Escrow, RoundSettlement, ContractDeployment} <= set(mine)
    for model in mine:
        model_admin = admin.site._registry[model]
        assert model_admin.search_fields and model_admin.list_filter, model
        for q in ("digits", str(evidence["job"].id), "0xab"):
            assert (
                admin_client.get(f"/admin/{model._meta.app_label}/{model._meta.model_name}/", {"q": q}).status_code
                == 200
            )

    reports = admin_client.get("/admin/jobs/peerreport/", {"q": "bob-box"}).content.decode()
    assert str(evidence["reports"]["bob-box"]) in reports and str(evidence["reports"]["alice-box"]) not in reports
    assert "PeerReport object" not in reports
    assert found(admin_client, "/admin/ledger/payout/", q=ADDRESS) == [evidence["payout"]]
    assert found(admin_client, "/admin/ledger/payout/", q="0x" + "99" * 20) == []
    assert found(admin_client, "/admin/ledger/contributionscore/", q="alice-box") == list(
        ContributionScore.objects.filter(node__name="alice-box")
    )
    assert found(admin_client, "/admin/ledger/payout/", status__exact="failed") == []
    jobs = admin_client.get("/admin/jobs/job/", {"q": "mnist"}).content.decode()
    assert "mnist elsewhere" in jobs and ">digits<" not in jobs
    assert found(admin_client, "/admin/jobs/peerreport/", diverged__exact="1") == []
    assert len(found(admin_client, "/admin/jobs/peerreport/", diverged__exact="0")) == 2


def test_the_wallet_admin_never_shows_the_key(evidence, admin_client):
    wallet = evidence["wallet"]
    for page in (url(wallet), url(wallet, "changelist"), url(wallet, "history")):
        response = admin_client.get(page)
        assert response.status_code == 200 and CIPHERTEXT not in response.content.decode(), page
    assert wallet.address in admin_client.get(url(wallet)).content.decode()
    # Nor can it be found by searching for (a piece of) it.
    assert found(admin_client, url(wallet, "changelist"), q=CIPHERTEXT[:20]) == []
