"""Stakes and slashing on a real chain (anvil): an operator stakes to join a job, a node whose
owner did not stake is left out of the cohort, a flagged peer is paid nothing for the flagged
round and its stake is burnt with the evidence's hash on chain, honest stakes come back after the
job, and the audit checks all of it. Until the robustness work flags peers itself, the tests flag
a peer directly (ledger.staking.flag)."""

import secrets
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from jobs import orchestration
from jobs.models import Consent, Job, PeerReport, Round
from ledger import settlement, staking
from ledger.chain import Chain
from ledger.models import WEI_PER_TOKEN, ContributionScore, Flag, Stake
from ledger.wallets import wallet_for
from nodes.models import Node
from tests.factories import make_node, make_user

WEI = WEI_PER_TOKEN
pytestmark = pytest.mark.django_db


def make_job(reward_per_round=10, rounds=2, stake=20, status=Job.Status.RUNNING, **fields) -> Job:
    owner = get_user_model().objects.create_user(f"creator-{secrets.token_hex(3)}", password="pw-unused-123")
    return Job.objects.create(
        owner=owner,
        name="digits",
        reward_per_round=reward_per_round,
        rounds=rounds,
        stake=stake,
        status=status,
        **fields,
    )


def funded_job(**fields) -> Job:
    job = make_job(**fields)
    settlement.fund_with_test_tokens(job)
    return job


def give_tokens(user, tokens: int) -> str:
    chain = Chain.from_settings()
    wallet = wallet_for(user)
    chain.mint(wallet.address, tokens * WEI)
    chain.send_gas(wallet.address, 10**18)
    return wallet.address


def operator(tokens: int = 100, name: str = "n", online: bool = False) -> Node:
    """A node whose owner's custodial wallet (where rewards go too) holds `tokens`."""
    user = make_user()
    if tokens:
        give_tokens(user, tokens)
    return make_node(user, name, public_key=secrets.token_hex(32), online=online)


def add_round(job: Job, number: int, nodes: list[Node]) -> Round:
    rnd = Round.objects.create(
        job=job, number=number, deadline=timezone.now() + timedelta(minutes=1), status=Round.Status.CLOSED
    )
    for node in nodes:
        PeerReport.objects.create(
            round=rnd,
            node=node,
            train_loss=1.0,
            eval_loss=1.0,
            accuracy=0.5,
            samples=100,
            eval_samples=10,
            model_hash="ab" * 32,
        )
    return rnd


def balance(address: str) -> int:
    return Chain.from_settings().balance_of(address)


def wallet_of(node: Node) -> str:
    return wallet_for(node.owner).address


EVIDENCE = {"rule": "test: flagged directly", "update_norm": 1e6, "median_norm": 1.2}


# -- the attack -----------------------------------------------------------------------------------
def test_a_flagged_attacker_is_paid_nothing_for_the_flagged_round(chain_settings):
    """The attack: a peer caught poisoning round 1 was paid its equal share of round 1 anyway."""
    attacker, honest = operator(tokens=0), operator(tokens=0)
    job = funded_job(stake=0)
    first = add_round(job, 1, [attacker, honest])
    add_round(job, 2, [attacker, honest])
    staking.flag(job, first, attacker, "poisoned update", EVIDENCE)
    settlement.settle(job.id)
    assert balance(wallet_of(attacker)) == 5 * WEI  # round 2 only
    assert balance(wallet_of(honest)) == 15 * WEI  # round 1's whole pool and half of round 2's
    score = ContributionScore.objects.get(round=first, node=attacker)
    assert score.score_ppm == 0 and score.evidence["flagged"] is True


# -- staking --------------------------------------------------------------------------------------
def test_consent_stakes_exactly_the_stake_once_per_operator(chain_settings, client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the settlement worker's task, run in process
    job = funded_job(stake=25, status=Job.Status.WAITING, num_peers=3)
    node = operator(tokens=100)
    second = make_node(node.owner, "second", public_key=secrets.token_hex(32))
    address = wallet_of(node)
    ledger = Chain.from_settings().ledger()
    client.force_login(node.owner)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "This job asks a stake of 25 tokens per operator" in page
    response = client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"}, follow=True)
    assert "stake of 25 tokens is being placed" in response.content.decode()
    stake = Stake.objects.get(job=job, owner=node.owner)
    assert stake.status == Stake.Status.STAKED and stake.stake_tx_hash and int(stake.amount_wei) == 25 * WEI
    assert balance(address) == 75 * WEI
    assert ledger.functions.stakes(job.id, address).call() == [25 * WEI, True, False]
    client.post(f"/jobs/{job.id}/consent/", {"node": second.id, "grant": "yes"})  # same owner: one stake
    assert balance(address) == 75 * WEI and Stake.objects.filter(job=job).count() == 1
    assert "Your stake: Staked" in client.get(f"/jobs/{job.id}/").content.decode()


def test_a_wallet_without_the_tokens_gets_a_clear_error(chain_settings, client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    job = funded_job(stake=25, status=Job.Status.WAITING)
    node = operator(tokens=10)
    client.force_login(node.owner)
    client.post(f"/jobs/{job.id}/consent/", {"node": node.id, "grant": "yes"})
    stake = Stake.objects.get(job=job, owner=node.owner)
    assert stake.status == Stake.Status.FAILED and "holds 10 tokens" in stake.error
    assert balance(wallet_of(node)) == 10 * WEI
    assert "holds 10 tokens" in client.get(f"/jobs/{job.id}/").content.decode()


def test_a_stake_waits_for_the_deposit(chain_settings):
    job = make_job(stake=5, status=Job.Status.WAITING)
    node = operator(tokens=10)
    assert staking.stake_for(job, node.owner).status == Stake.Status.PENDING
    settlement.fund_with_test_tokens(job)
    assert [s.status for s in staking.stake_pending(job)] == [Stake.Status.STAKED]
    assert balance(wallet_of(node)) == 5 * WEI


@pytest.mark.django_db(transaction=True)
def test_a_node_whose_owner_did_not_stake_is_not_in_the_cohort(chain_settings):
    job = funded_job(stake=10, status=Job.Status.WAITING, num_peers=3)
    nodes = [operator(tokens=50, name=f"n{i}", online=True) for i in range(3)]
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    for node in nodes[:2]:
        staking.stake_for(job, node.owner)
    assert orchestration.eligible_nodes(job) == nodes[:2]
    assert not orchestration.start_job_if_ready(job.id)  # three consent, two staked
    Job.objects.filter(pk=job.pk).update(num_peers=2)
    assert orchestration.start_job_if_ready(job.id)
    assert set(job.cohort.values_list("node_id", flat=True)) == {nodes[0].id, nodes[1].id}


# -- slashing and release -------------------------------------------------------------------------
def test_a_flagged_peer_is_slashed_and_honest_stakes_come_back(chain_settings, capsys):
    job = funded_job(stake=20, reward_per_round=10, rounds=2)
    attacker, honest = operator(tokens=100), operator(tokens=100)
    for node in (attacker, honest):
        staking.stake_for(job, node.owner)
    first = add_round(job, 1, [attacker, honest])
    add_round(job, 2, [attacker, honest])
    flagged = staking.flag(job, first, attacker, "poisoned update", EVIDENCE)
    assert staking.flag(job, first, attacker, "again", {}).pk == flagged.pk  # once per (round, node)
    chain = Chain.from_settings()
    token, ledger = chain.token(), chain.ledger()
    supply = token.functions.totalSupply().call()
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)

    assert balance(wallet_of(attacker)) == (80 + 5) * WEI  # stake gone, round 2 paid
    assert balance(wallet_of(honest)) == (100 + 15) * WEI  # stake back in full, rewards
    flagged.refresh_from_db()
    assert int(flagged.slashed_wei) == 20 * WEI and flagged.slash_tx_hash and flagged.slashed_at
    assert token.functions.totalSupply().call() == supply - 20 * WEI  # burnt
    (event,) = ledger.events.Slashed().get_logs(from_block=0, argument_filters={"jobId": job.id})
    assert "0x" + bytes(event["args"]["evidenceHash"]).hex() == flagged.evidence_hash
    assert event["args"]["operator"] == wallet_of(attacker) and event["args"]["amount"] == 20 * WEI
    stakes = {s.owner_id: s for s in Stake.objects.filter(job=job)}
    assert stakes[honest.owner_id].status == Stake.Status.RELEASED
    assert int(stakes[honest.owner_id].released_wei) == 20 * WEI
    assert int(stakes[attacker.owner_id].released_wei) == 0 and int(stakes[attacker.owner_id].slashed_wei) == 20 * WEI
    assert Job.objects.get(pk=job.id).status == Job.Status.SETTLED

    settlement.settle(job.id)  # again: nothing slashed or released twice
    assert balance(wallet_of(honest)) == 115 * WEI and token.functions.totalSupply().call() == supply - 20 * WEI

    call_command("audit_chain", "--job", str(job.id))
    out = capsys.readouterr().out
    assert "match the chain" in out and "slash" in out and "stake release" in out

    # Someone edits the evidence after the fact.
    Flag.objects.filter(pk=flagged.pk).update(evidence={**EVIDENCE, "update_norm": 1.0})
    with pytest.raises(CommandError, match="do not match"):
        call_command("audit_chain", "--job", str(job.id))
    assert "MISMATCH" in capsys.readouterr().out


def test_a_stake_needs_a_job_with_rewards():
    from jobs.forms import JobForm

    form = JobForm({"name": "j", "model": "mlp", "dataset": "digits", "rounds": 2, "stake": 5, "reward_per_round": 0})
    assert not form.is_valid() and "A stake needs rewards" in str(form.errors["stake"])
