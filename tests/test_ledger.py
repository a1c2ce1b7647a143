"""Rewards on a real chain: split exactness, exactly-once payouts on anvil, and eth-tester."""

import secrets
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import Profile
from jobs.models import Job, PeerReport, Round
from ledger.chain import Chain
from ledger.models import ContractDeployment, Payout, tokens_text
from ledger.services import NO_ADDRESS, pay_rewards, settle, split_rewards
from nodes.models import Node
from tests.factories import make_node, make_user

WEI = 10**18
pytestmark = pytest.mark.django_db


def new_address() -> str:
    return "0x" + secrets.token_hex(20)


def make_job(reward_per_round=100, status=Job.Status.FINISHED) -> Job:
    owner = get_user_model().objects.create_user(f"job-owner-{secrets.token_hex(3)}", password="pw-unused-123")
    return Job.objects.create(owner=owner, name="digits", reward_per_round=reward_per_round, status=status)


def add_round(job: Job, number: int, samples: dict[Node, int], closed: bool = True) -> Round:
    rnd = Round.objects.create(
        job=job,
        number=number,
        deadline=timezone.now() + timedelta(minutes=1),
        status=Round.Status.CLOSED if closed else Round.Status.OPEN,
    )
    for node, n in samples.items():
        PeerReport.objects.create(
            round=rnd,
            node=node,
            train_loss=1.0,
            eval_loss=1.0,
            accuracy=0.5,
            samples=n,
            eval_samples=10,
            model_hash="0" * 64,
        )
    return rnd


def test_split_rewards_is_exact_and_proportional():
    a, b, c = make_node(make_user(), "a"), make_node(make_user(), "b"), make_node(make_user(), "c")
    job = make_job(reward_per_round=100)
    add_round(job, 1, {a: 500, b: 300, c: 200})  # divides evenly
    add_round(job, 2, {a: 1, b: 1, c: 1})  # 100e18 / 3: one wei left over, to the lowest id
    add_round(job, 3, {a: 7, c: 9})  # c has most samples and takes the remainder
    add_round(job, 4, {a: 1000, b: 1000}, closed=False)  # still open: not paid
    split = split_rewards(job)

    budget = 100 * WEI
    third = budget // 3
    assert split[a.id] == budget * 5 // 10 + third + 1 + budget * 7 // 16
    assert split[b.id] == budget * 3 // 10 + third
    assert split[c.id] == budget * 2 // 10 + third + budget * 9 // 16 + (budget - budget * 7 // 16 - budget * 9 // 16)
    assert sum(split.values()) == 3 * budget


def test_pay_rewards_on_anvil(chain_settings):
    nodes = [make_node(make_user(), f"n{i}") for i in range(3)]
    job = make_job()
    items = [(node, new_address(), (i + 1) * 10 * WEI + i) for i, node in enumerate(nodes)]
    payouts = pay_rewards(job, items)

    chain = Chain.from_settings()
    assert chain.chain_id == 31337
    assert [p.node_id for p in payouts] == [n.id for n in nodes]
    for payout, (_, address, amount) in zip(payouts, items):
        assert payout.status == Payout.Status.CONFIRMED
        assert payout.amount_wei == amount and payout.amount_text == tokens_text(amount)
        assert chain.balance_of(address) == amount
        receipt = chain.receipt(payout.tx_hash)
        assert receipt["status"] == 1
        assert payout.block_number == receipt["blockNumber"] > 0 and payout.confirmed_at is not None


def test_settle_pays_exactly_once(chain_settings):
    a, b = (
        make_node(make_user(payout_address=new_address()), "a"),
        make_node(make_user(payout_address=new_address()), "b"),
    )
    job = make_job(reward_per_round=10)
    add_round(job, 1, {a: 3, b: 1})
    add_round(job, 2, {a: 1, b: 1})

    first = settle(job)
    assert job.status == Job.Status.SETTLED
    chain = Chain.from_settings()
    balances = {p.address: chain.balance_of(p.address) for p in first}
    assert sum(balances.values()) == 20 * WEI
    operator = chain.balance_of(chain.operator_address)

    job.status = Job.Status.FINISHED  # even a re-opened settlement must not pay again
    job.save(update_fields=["status"])
    second = settle(job)
    assert [p.tx_hash for p in second] == [p.tx_hash for p in first]
    assert {p.address: chain.balance_of(p.address) for p in second} == balances
    assert chain.balance_of(chain.operator_address) == operator
    assert Payout.objects.filter(job=job).count() == 2


def test_node_without_address_fails_until_one_is_set(chain_settings):
    paid, unpaid = make_node(make_user(payout_address=new_address()), "paid"), make_node(make_user(), "unpaid")
    job = make_job(reward_per_round=10)
    add_round(job, 1, {paid: 1, unpaid: 1})

    payouts = {p.node_id: p for p in settle(job)}
    assert payouts[unpaid.id].status == Payout.Status.FAILED
    assert payouts[unpaid.id].error == NO_ADDRESS and not payouts[unpaid.id].tx_hash
    assert payouts[paid.id].status == Payout.Status.CONFIRMED
    assert job.status == Job.Status.FINISHED  # not every payout confirmed

    # The owner sets an address: the next settlement pays it, and only it.
    address = new_address()
    Profile.objects.filter(user=unpaid.owner).update(payout_address=address)
    again = {p.node_id: p for p in settle(job)}
    assert again[unpaid.id].status == Payout.Status.CONFIRMED
    assert again[paid.id].tx_hash == payouts[paid.id].tx_hash
    assert Chain.from_settings().balance_of(address) == 5 * WEI
    assert job.status == Job.Status.SETTLED


def test_token_is_redeployed_when_the_chain_lost_it(chain_settings):
    chain = Chain.from_settings()
    first = chain.token().address
    ContractDeployment.objects.filter(name="RewardToken", chain_id=chain.chain_id).update(address=new_address())
    second = chain.token().address
    assert second != first
    row = ContractDeployment.objects.get(name="RewardToken", chain_id=chain.chain_id)
    assert row.address == second and row.block_number > 0 and len(row.bytecode_sha256) == 64
    assert chain.balance_of(chain.operator_address) == 10**9 * WEI


def test_eth_tester_deploys_and_transfers(settings):
    settings.CHAIN_RPC_URL = "eth-tester"
    node = make_node(make_user(), "tester")
    job = make_job()
    address = new_address()
    [payout] = pay_rewards(job, [(node, address, 42 * WEI)])
    chain = Chain.from_settings()
    assert chain.chain_id != 31337
    assert payout.status == Payout.Status.CONFIRMED and payout.block_number is not None
    assert chain.balance_of(address) == 42 * WEI
    assert chain.receipt(payout.tx_hash)["status"] == 1


def test_payouts_page_shows_only_what_the_user_may_see(client):
    mine, theirs = (
        make_node(make_user(payout_address=new_address()), "mine"),
        make_node(make_user(payout_address=new_address()), "theirs"),
    )
    job = make_job()
    Payout.objects.create(job=job, node=mine, address=new_address(), amount_wei=3 * WEI, tx_hash="0x" + "ab" * 32)
    Payout.objects.create(job=job, node=theirs, address=new_address(), amount_wei=5 * WEI)

    assert client.get("/payouts/").status_code == 302  # login required
    client.force_login(mine.owner)
    page = client.get("/payouts/").content.decode()
    assert "mine" in page and "theirs" not in page and "0x" + "ab" * 32 in page

    client.force_login(job.owner)  # the job's owner sees every payout of the job
    page = client.get("/payouts/").content.decode()
    assert "mine" in page and "theirs" in page and f"/jobs/{job.id}/" in page

    staff = get_user_model().objects.create_user("staff", password="pw-unused-123", is_staff=True)
    client.force_login(staff)
    assert client.get("/payouts/").context["payouts"].count() == 2


def _signed_but_never_broadcast(job, node, address, amount):
    """What a settlement leaves behind when it dies between storing and broadcasting."""
    chain = Chain.from_settings()
    tx_hash, raw = chain.sign_transfer(address, amount)
    return Payout.objects.create(
        job=job, node=node, address=address, amount_wei=amount, status=Payout.Status.SENT, tx_hash=tx_hash, raw_tx=raw
    )


def test_crash_before_broadcast_rebroadcasts_the_same_transaction(chain_settings):
    address = new_address()
    node = make_node(make_user(payout_address=address), "crash")
    job = make_job(reward_per_round=5)
    add_round(job, 1, {node: 10})
    stored = _signed_but_never_broadcast(job, node, address, 5 * WEI)
    chain = Chain.from_settings()
    assert chain.receipt(stored.tx_hash) is None and chain.balance_of(address) == 0

    [payout] = settle(job)
    assert payout.status == Payout.Status.CONFIRMED and payout.tx_hash == stored.tx_hash
    assert chain.balance_of(address) == 5 * WEI
    settle(job)  # and again: nothing more
    assert chain.balance_of(address) == 5 * WEI


def test_stored_transaction_whose_nonce_was_taken_is_signed_anew_once(chain_settings):
    address = new_address()
    node = make_node(make_user(payout_address=address), "replaced")
    job = make_job(reward_per_round=7)
    add_round(job, 1, {node: 10})
    stored = _signed_but_never_broadcast(job, node, address, 7 * WEI)
    chain = Chain.from_settings()
    chain.wait(chain.transfer(new_address(), 1))  # takes the stored transaction's nonce

    [payout] = settle(job)
    assert payout.status == Payout.Status.CONFIRMED and payout.tx_hash != stored.tx_hash
    assert chain.receipt(stored.tx_hash) is None  # the stored one can never be mined
    assert chain.balance_of(address) == 7 * WEI


def test_no_operator_key_means_no_payouts_not_a_well_known_key(anvil, settings):
    """An empty CHAIN_PRIVATE_KEY used to fall back to anvil's public dev key on any chain id 31337."""
    from django.core.exceptions import ImproperlyConfigured

    settings.CHAIN_PRIVATE_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="CHAIN_PRIVATE_KEY is not set"):
        Chain._connect(anvil)
