"""A job's validator on the platform: its plans, the scores it posts (recomputed from their
evidence, from it alone), and rewards paid on them on a real chain: an attacker the validator
scored 0 is paid nothing, and the audit recomputes every score from the stored evidence."""

import json
import secrets
from datetime import timedelta

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from web3 import Web3

from jobs import orchestration
from jobs.models import Consent, Job, Round, ValidatorReport
from ledger import settlement
from ledger.chain import Chain
from ledger.models import WEI_PER_TOKEN, ContributionScore
from nodes.models import Node
from peers.protocol import ScoreReport, to_message
from peers.scoring import score_round
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db


def new_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


def a_job(members: int = 3, **fields):
    creator = make_user()
    validator = make_node(creator, "validation", public_key="ee" * 32, online=True)
    job = Job.objects.create(owner=creator, name="scored", num_peers=members, rounds=2, validator=validator, **fields)
    nodes = [
        make_node(make_user(payout_address=new_address()), f"n{i}", public_key=f"{i + 1:064x}", online=True)
        for i in range(members)
    ]
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    return job, validator, nodes


def evidence_for(nodes: list[Node], attacker: Node | None = None) -> dict:
    """Real evidence from peers.scoring on a toy problem: the honest peers step towards the
    optimum, the attacker sends noise."""
    target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    reference = {"w": torch.zeros(4)}
    generator = torch.Generator().manual_seed(0)
    updates = {}
    for i, node in enumerate(nodes):
        if node == attacker:
            updates[node.id] = {"w": torch.randn(4, generator=generator) * 50}
        else:
            updates[node.id] = {"w": target * (0.5 + 0.1 * i) + 0.05 * torch.randn(4, generator=generator)}
    scores = score_round(reference, updates, lambda s: float(((s["w"] - target) ** 2).sum()))
    return json.loads(json.dumps(scores.as_evidence()))


def post_scores(client, node: Node, job: Job, number: int, evidence: dict):
    message = to_message(
        ScoreReport(job_id=job.id, round=number, node_id=node.id, evidence=evidence, consensus_hash="ab" * 32)
    )
    return client.post(
        "/api/v1/reports",
        data=json.dumps(message),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {node.token}",
    )


def test_members_send_to_the_validator_and_it_gets_a_plan_of_its_own(exchange):
    job, validator, nodes = a_job()
    consenting_validator = validator
    Consent.objects.create(job=job, node=consenting_validator, granted=True, by=job.owner)  # never a member
    assert orchestration.start_job_if_ready(job.id)
    rnd = job.round_set.get(number=1)
    plans = {p.node_id: p for p in orchestration.signed_plans(rnd)}
    assert set(plans) == {n.id for n in nodes} | {validator.id}
    assert plans[validator.id].role == "validate" and plans[validator.id].self_weight == 0.0
    assert {n.node_id for n in plans[validator.id].neighbours} == {n.id for n in nodes}
    for node in nodes:
        assert plans[node.id].role == "train" and [v.node_id for v in plans[node.id].validators] == [validator.id]
    # The exchange lets every member send to the validator (and the validator send nowhere).
    grants = orchestration.exchange_grants({*(n.id for n in nodes), validator.id})
    assert all(validator.id in grants[n.id] for n in nodes) and grants[validator.id] == set()
    restart = orchestration.current_plans_for(validator)  # what a restarted validator peer gets
    assert restart["current_rounds"] == {str(job.id): 1} and len(restart["plans"]) == 1


def test_a_job_with_a_validator_waits_for_it_to_be_online(exchange):
    job, validator, _nodes = a_job()
    Node.objects.filter(pk=validator.pk).update(last_seen=None)
    assert not orchestration.start_job_if_ready(job.id)
    validator.touch()
    assert orchestration.start_job_if_ready(job.id)


def test_only_the_validator_posts_scores_and_only_consistent_ones(client, exchange):
    job, validator, nodes = a_job()
    assert orchestration.start_job_if_ready(job.id)
    good = evidence_for(nodes)
    assert post_scores(client, nodes[0], job, 1, good).status_code == 403  # a member is no validator
    forged = json.loads(json.dumps(good))
    forged["peers"][0]["agreement"] = "lots"  # not evidence any more
    assert post_scores(client, validator, job, 1, forged).status_code == 400
    stranger = make_node(make_user(), "stranger", public_key="dd" * 32)
    assert post_scores(client, validator, job, 1, evidence_for([*nodes[:2], stranger])).status_code == 400
    assert post_scores(client, validator, job, 9, good).status_code == 404
    assert post_scores(client, validator, job, 1, good).status_code == 201
    assert post_scores(client, validator, job, 1, good).status_code == 409  # once a round
    assert ValidatorReport.objects.get(round__job=job, round__number=1).evidence == good


def test_rewards_follow_the_validators_scores_and_an_attacker_is_paid_nothing(client, chain_settings, exchange):
    job, validator, nodes = a_job(reward_per_round=30)
    settlement.fund_with_test_tokens(job)
    assert orchestration.start_job_if_ready(job.id)
    attacker = nodes[2]
    evidence = evidence_for(nodes, attacker=attacker)
    rnd = job.round_set.get(number=1)
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.CLOSED, closed_at=timezone.now())
    settlement.settle(job.id)  # no scores yet: the round waits for them
    assert not rnd.scores.exists()
    assert post_scores(client, validator, job, 1, evidence).status_code == 201
    settlement.settle(job.id)

    chain = Chain.from_settings()
    paid = {n.id: chain.balance_of(n.owner.profile.payout_address) for n in nodes}
    assert paid[attacker.id] == 0
    assert paid[nodes[0].id] > 0 and paid[nodes[1].id] > 0
    assert sum(paid.values()) == 30 * WEI_PER_TOKEN
    assert ContributionScore.objects.get(round=rnd, node=attacker).score_ppm == 0
    assert {s.source for s in rnd.scores.all()} == {"validator"}

    call_command("audit_chain", "--job", str(job.id))  # every score recomputed from the evidence
    report = ValidatorReport.objects.get(round=rnd)
    tampered = json.loads(json.dumps(report.evidence))
    for row in tampered["peers"]:
        if row["node_id"] == nodes[0].id:
            row["agreement"] = 0.0  # as if nodes[0] had not helped: the paid split no longer follows
    ValidatorReport.objects.filter(pk=report.pk).update(evidence=tampered)
    with pytest.raises(CommandError):
        call_command("audit_chain", "--job", str(job.id))


def test_a_silent_validator_leaves_the_round_to_an_even_split_after_its_grace(chain_settings, exchange):
    job, _validator, nodes = a_job(reward_per_round=30, round_timeout_s=10)
    settlement.fund_with_test_tokens(job)
    assert orchestration.start_job_if_ready(job.id)
    rnd = job.round_set.get(number=1)
    for node in nodes:
        orchestration.accept_report(node, _report(job, node))
    orchestration.close_round(rnd.id)
    Round.objects.filter(pk=rnd.pk).update(closed_at=timezone.now() - timedelta(seconds=11))
    settlement.settle(job.id)
    scores = list(rnd.scores.all())
    assert {s.source for s in scores} == {"equal"} and all(
        "validator sent no scores" in s.evidence["rule"] for s in scores
    )


def _report(job, node):
    from tests.factories import peer_report

    return peer_report(job, node, 1, train_loss=1.0, eval_loss=0.9, samples=10, eval_samples=5)
