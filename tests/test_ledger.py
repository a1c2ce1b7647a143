"""Rewards on a real chain (anvil): the creator's deposit, per-round commits and payouts, paying
exactly once, failed jobs, the audit. Each attack the issue reported is reproduced first."""

import secrets
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from web3 import Web3

from jobs.models import Job, PeerReport, Round
from ledger import settlement
from ledger.chain import Chain
from ledger.escrow import open_escrow
from ledger.models import (
    WEI_PER_TOKEN,
    ContractDeployment,
    ContributionScore,
    Escrow,
    Payout,
    RoundSettlement,
    TxStatus,
)
from ledger.rewards import split_amount, split_ppm
from ledger.wallets import private_key, wallet_for
from nodes.models import Node
from tests.factories import make_node, make_user

WEI = WEI_PER_TOKEN
pytestmark = pytest.mark.django_db


def new_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


def make_job(reward_per_round=100, rounds=3, status=Job.Status.RUNNING, **fields) -> Job:
    owner = get_user_model().objects.create_user(f"creator-{secrets.token_hex(3)}", password="pw-unused-123")
    return Job.objects.create(
        owner=owner, name="digits", reward_per_round=reward_per_round, rounds=rounds, status=status, **fields
    )


def give_tokens(user, tokens: int) -> str:
    chain = Chain.from_settings()
    wallet = wallet_for(user)
    chain.mint(wallet.address, tokens * WEI)
    chain.send_gas(wallet.address, 10**18)
    return wallet.address


def funded_job(**fields) -> Job:
    job = make_job(**fields)
    settlement.fund_with_test_tokens(job)
    return job


def add_round(job: Job, number: int, samples: dict[Node, int], closed: bool = True, diverged=()) -> Round:
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
            model_hash="ab" * 32,
            diverged=node in diverged,
        )
    return rnd


def balance(address: str) -> int:
    return Chain.from_settings().balance_of(address)


def nodes_with_addresses(n: int) -> list[Node]:
    return [make_node(make_user(payout_address=new_address()), f"n{i}") for i in range(n)]


def address_of(node: Node) -> str:
    return node.owner.profile.payout_address


# -- splitting ------------------------------------------------------------------------------------
def test_split_is_exact_and_sums_to_the_pool():
    assert sum(split_ppm({1: 1.0, 2: 1.0, 3: 1.0}).values()) == 1_000_000
    assert split_ppm({1: 0.0, 2: 0.0}) == {1: 0, 2: 0}
    ppm = split_ppm({5: 3.0, 2: 1.0, 9: 0.0})
    assert ppm == {5: 750_000, 2: 250_000, 9: 0}
    amounts = split_amount(100 * WEI, {1: 333_334, 2: 333_333, 3: 333_333})
    assert sum(amounts.values()) == 100 * WEI and amounts[1] > amounts[2] == amounts[3]


def test_a_peer_claiming_two_billion_samples_gets_an_equal_share(chain_settings):
    """Reported: samples=2147483647 took 199.99992 of a 200-token round. Self-reported numbers
    play no part in the split now."""
    liar, honest = nodes_with_addresses(2)
    job = funded_job(reward_per_round=200, rounds=1)
    add_round(job, 1, {liar: 2_147_483_647, honest: 100})
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    assert balance(address_of(liar)) == balance(address_of(honest)) == 100 * WEI


# -- the deposit ------------------------------------------------------------------------------------
def test_a_job_with_rewards_does_not_start_before_its_budget_is_deposited(chain_settings):
    """Reported: a 10^9-token-a-round job paid 999,999,000 tokens out of the operator's treasury.
    Now the creator deposits the budget from their own wallet first, and cannot without the tokens."""
    from jobs.orchestration import start_job_if_ready

    job = make_job(reward_per_round=10**9, rounds=1, status=Job.Status.WAITING, num_peers=1)
    chain = Chain.from_settings()
    treasury = chain.balance_of(chain.operator_address)
    give_tokens(job.owner, 10)  # a faucet's worth, not a billion
    with pytest.raises(settlement.FundingError, match="get test tokens"):
        settlement.fund(job)
    assert Escrow.objects.get(job=job).status == Escrow.Status.UNFUNDED
    assert not start_job_if_ready(job.id)
    assert chain.balance_of(chain.operator_address) == treasury


def test_funding_moves_the_budget_from_the_creator_into_the_ledger(chain_settings):
    job = make_job(reward_per_round=5, rounds=4)
    creator = give_tokens(job.owner, 50)
    escrow = settlement.fund(job)
    ledger = Chain.from_settings().ledger()
    assert escrow.status == Escrow.Status.FUNDED and escrow.fund_tx_hash
    assert balance(creator) == 30 * WEI and balance(ledger.address) >= 20 * WEI
    assert settlement.fund(job).fund_tx_hash == escrow.fund_tx_hash  # again: nothing more
    assert balance(creator) == 30 * WEI


def test_wallet_keys_are_encrypted_at_rest():
    user = make_user()
    wallet = wallet_for(user)
    key = private_key(wallet)
    assert Web3().eth.account.from_key(key).address == wallet.address
    assert key[2:] not in wallet.key_ciphertext and wallet.address not in wallet.key_ciphertext
    assert wallet_for(user).pk == wallet.pk


# -- rounds, payouts, exactly once ------------------------------------------------------------------
def test_each_closed_round_is_committed_and_paid_while_the_job_runs(chain_settings):
    a, b = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=3)
    add_round(job, 1, {a: 1, b: 1})
    settlement.settle(job.id)
    first = RoundSettlement.objects.get(job=job, number=1)
    assert first.status == TxStatus.CONFIRMED and first.gas_used > 0
    assert balance(address_of(a)) == balance(address_of(b)) == 5 * WEI
    add_round(job, 2, {a: 1})
    settlement.settle(job.id)
    assert balance(address_of(a)) == 15 * WEI
    assert Job.objects.get(pk=job.id).status == Job.Status.RUNNING  # not closed while it runs
    assert Escrow.objects.get(job=job).status == Escrow.Status.FUNDED


def test_a_diverged_peer_is_paid_nothing(chain_settings):
    good, bad = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=1)
    add_round(job, 1, {good: 1, bad: 1}, diverged={bad})
    settlement.settle(job.id)
    assert balance(address_of(good)) == 10 * WEI and balance(address_of(bad)) == 0
    assert ContributionScore.objects.get(node=bad).score_ppm == 0


@pytest.mark.django_db(transaction=True)
def test_overlapping_settlement_runs_pay_once_while_a_receipt_is_pending(chain_settings, anvil):
    """Reported: the finish task and beat's retry, overlapping while a receipt was pending, paid
    one payout twice (5 owed, 10 received)."""
    a, b = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=1)
    add_round(job, 1, {a: 1, b: 1})
    job.status = Job.Status.FINISHED
    job.save()
    w3 = Chain.from_settings().w3
    w3.provider.make_request("evm_setAutomine", [False])
    errors = []

    def run():
        from django.db import connection

        try:
            settlement.settle(job.id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    runs = [threading.Thread(target=run) for _ in range(2)]
    try:
        for t in runs:
            t.start()
        deadline = time.monotonic() + 60
        while any(t.is_alive() for t in runs) and time.monotonic() < deadline:
            time.sleep(0.3)
            w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    for t in runs:
        t.join(30)
    assert not errors
    assert balance(address_of(a)) == balance(address_of(b)) == 5 * WEI
    assert Payout.objects.filter(job=job).count() == 2
    assert set(Payout.objects.filter(job=job).values_list("status", flat=True)) == {TxStatus.CONFIRMED}
    assert Job.objects.get(pk=job.id).status == Job.Status.SETTLED


def test_a_run_that_lost_the_race_never_sends_its_transaction(chain_settings):
    """Without the lock (two processes that both saw 'pending'), compare-and-set lets only the
    first stored transaction exist; the loser's signed bytes are dropped unsent."""
    from ledger import signing

    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=10, rounds=1)
    rnd = add_round(job, 1, {a: 1})
    from ledger.rewards import prepare_round

    row = prepare_round(job, rnd)
    stale = RoundSettlement.objects.get(pk=row.pk)  # the second run's view: still pending
    chain = Chain.from_settings()
    ledger = chain.ledger()

    def commit():
        return ledger.functions.commitRound(
            job.id,
            1,
            bytes(32),
            bytes.fromhex(row.contribution_root[2:]),
            bytes.fromhex(row.reward_root[2:]),
            int(row.total_wei),
        )

    signing.submit(chain, row, commit)
    signing.submit(chain, stale, commit)  # signs, loses the compare-and-set, sends nothing
    assert stale.tx_hash == row.tx_hash
    signing.confirm(chain, row)
    assert RoundSettlement.objects.get(pk=row.pk).status == TxStatus.CONFIRMED


def test_a_failed_job_pays_its_completed_rounds_and_returns_the_rest(chain_settings):
    """Reported: a job failing in round 3 paid nothing for rounds 1 and 2."""
    a, b = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=5)
    creator = wallet_for(job.owner).address
    add_round(job, 1, {a: 1, b: 1})
    add_round(job, 2, {a: 1, b: 1})
    add_round(job, 3, {})  # nobody reported: the job failed here
    job.status, job.failure = Job.Status.FAILED, "no peer reported in round 3"
    job.save()
    settlement.settle(job.id)
    assert balance(address_of(a)) == balance(address_of(b)) == 10 * WEI
    escrow = Escrow.objects.get(job=job)
    assert escrow.status == Escrow.Status.CLOSED and int(escrow.refunded_wei) == 30 * WEI
    assert balance(creator) == 30 * WEI
    assert Job.objects.get(pk=job.id).status == Job.Status.FAILED


def test_a_job_that_burns_its_remainder(chain_settings):
    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=10, rounds=3, burn_unspent=True)
    creator = wallet_for(job.owner).address
    token = Chain.from_settings().token()
    supply = token.functions.totalSupply().call()
    add_round(job, 1, {a: 1})
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    escrow = Escrow.objects.get(job=job)
    assert int(escrow.burnt_wei) == 20 * WEI and int(escrow.refunded_wei) == 0 and balance(creator) == 0
    assert token.functions.totalSupply().call() == supply - 20 * WEI
    assert Job.objects.get(pk=job.id).status == Job.Status.SETTLED


def test_a_crash_between_signing_and_broadcasting_rebroadcasts_the_same_commit(chain_settings):
    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=7, rounds=1)
    rnd = add_round(job, 1, {a: 1})
    from ledger.rewards import prepare_round

    row = prepare_round(job, rnd)
    chain = Chain.from_settings()
    ledger = chain.ledger()
    tx_hash, raw = chain.sign_call(
        ledger.functions.commitRound(
            job.id,
            1,
            bytes.fromhex(row.model_hash[2:]),
            bytes.fromhex(row.contribution_root[2:]),
            bytes.fromhex(row.reward_root[2:]),
            int(row.total_wei),
        )
    )
    RoundSettlement.objects.filter(pk=row.pk).update(status=TxStatus.SUBMITTED, tx_hash=tx_hash, raw_tx=raw)
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    assert RoundSettlement.objects.get(pk=row.pk).tx_hash == tx_hash
    assert chain.receipt(tx_hash)["status"] == 1 and balance(address_of(a)) == 7 * WEI


def test_a_stored_commit_whose_nonce_was_taken_is_signed_anew(chain_settings):
    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=7, rounds=1)
    rnd = add_round(job, 1, {a: 1})
    from ledger.rewards import prepare_round

    row = prepare_round(job, rnd)
    chain = Chain.from_settings()
    tx_hash, raw = chain.sign_call(chain.token().functions.transfer(new_address(), 1))
    RoundSettlement.objects.filter(pk=row.pk).update(status=TxStatus.SUBMITTED, tx_hash=tx_hash, raw_tx=raw)
    chain.wait(chain.transfer(new_address(), 1))  # takes that nonce
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)  # puts it back to pending
    settlement.settle(job.id)  # and signs the commit anew
    assert RoundSettlement.objects.get(pk=row.pk).status == TxStatus.CONFIRMED
    assert balance(address_of(a)) == 7 * WEI


def test_a_batch_paid_by_a_transaction_whose_row_update_was_lost_records_that_transaction(chain_settings):
    """A run broadcast the payBatch, then died before its row said so: the next run finds the leaves
    paid, and every payout names the transaction and block that paid it (read from the chain's
    RewardPaid logs), so its receipt is there for anyone to check."""
    a, b = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=1)
    rnd = add_round(job, 1, {a: 1, b: 1})
    from ledger import rewards

    row = rewards.prepare_round(job, rnd)
    settlement._commit(Chain.from_settings(), row)
    batch = settlement._batches(row)[0]
    chain = Chain.from_settings()
    payouts = list(batch.payouts.order_by("index"))
    tree = rewards.reward_tree(row)
    lost = chain.wait(
        chain._send(
            chain.ledger().functions.payBatch(
                job.id,
                1,
                [p.index for p in payouts],
                [Web3.to_checksum_address(p.address) for p in payouts],
                [int(p.amount_wei) for p in payouts],
                [tree.proof(p.index) for p in payouts],
            )
        )
    )
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    assert balance(address_of(a)) == balance(address_of(b)) == 5 * WEI  # paid once, not twice
    for payout in Payout.objects.filter(job=job):
        assert payout.status == TxStatus.CONFIRMED
        assert payout.tx_hash == lost["transactionHash"].to_0x_hex()
        assert payout.block_number == lost["blockNumber"]
        assert chain.receipt(payout.tx_hash)["status"] == 1
    batch.refresh_from_db()
    assert batch.tx_hash == lost["transactionHash"].to_0x_hex() and batch.block_number == lost["blockNumber"]


# -- audit ------------------------------------------------------------------------------------------
def test_audit_matches_then_fails_on_a_tampered_row(chain_settings, capsys):
    a, b, c = nodes_with_addresses(3)
    job = funded_job(reward_per_round=9, rounds=2)
    add_round(job, 1, {a: 1, b: 1, c: 1})
    add_round(job, 2, {a: 1, b: 1}, diverged={b})
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    call_command("audit_chain", "--job", str(job.id))
    out = capsys.readouterr().out
    assert "all" in out and "match the chain" in out and "reward root" in out

    # Someone edits the evidence: b did not diverge in round 2 after all.
    score = ContributionScore.objects.get(round__job=job, round__number=2, node=b)
    score.evidence = {**score.evidence, "diverged": False}
    score.save()
    with pytest.raises(CommandError, match="do not match"):
        call_command("audit_chain", "--job", str(job.id))
    assert "MISMATCH" in capsys.readouterr().out


def test_audit_fails_on_a_payout_amount_edited_in_the_database(chain_settings):
    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=9, rounds=1)
    add_round(job, 1, {a: 1})
    settlement.settle(job.id)
    Payout.objects.filter(job=job).update(amount_wei=90 * WEI)
    with pytest.raises(CommandError):
        call_command("audit_chain", "--job", str(job.id))


# -- pages ------------------------------------------------------------------------------------------
def test_faucet_and_wallet_page(chain_settings, client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the settlement worker's task, run in process
    user = make_user()
    assert client.get("/payouts/").status_code == 302  # login required
    client.force_login(user)
    page = client.get("/payouts/").content.decode()
    wallet = wallet_for(user)
    assert wallet.address in page and 'id="faucet"' in page
    assert client.post("/payouts/faucet/").status_code == 302
    assert balance(wallet.address) == 1000 * WEI
    assert '<b id="wallet-tokens">1,000</b>' in client.get("/payouts/").content.decode()
    client.post("/payouts/faucet/")  # too soon: refused
    assert balance(wallet.address) == 1000 * WEI
    assert "No test tokens: test tokens again from" in client.get("/payouts/").content.decode()


def test_creator_funds_from_the_job_page_and_sees_the_budget(chain_settings, client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    job = make_job(reward_per_round=10, rounds=2, status=Job.Status.WAITING)
    open_escrow(job)
    give_tokens(job.owner, 20)
    client.force_login(job.owner)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="fund-job"' in page and "20 tokens" in page
    other = make_user()
    client.force_login(other)
    assert client.post(f"/jobs/{job.id}/fund/").status_code == 404  # only its creator
    client.force_login(job.owner)
    client.post(f"/jobs/{job.id}/fund/")
    assert Escrow.objects.get(job=job).status == Escrow.Status.FUNDED
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="fund-job"' not in page and 'data-escrow="budget">20<' in page


def test_earnings_are_listed_per_job_and_round(chain_settings, client):
    a, b = nodes_with_addresses(2)
    job = funded_job(reward_per_round=10, rounds=2)
    add_round(job, 1, {a: 1, b: 1})
    add_round(job, 2, {a: 1})
    settlement.settle(job.id)
    client.force_login(a.owner)
    response = client.get("/payouts/")
    earnings = list(response.context["earnings"])
    assert sorted((p.round.number, int(p.amount_wei)) for p in earnings) == [(1, 5 * WEI), (2, 10 * WEI)]
    assert response.context["earned"] == "15"
    client.force_login(job.owner)
    budgets = client.get("/payouts/").content.decode()
    assert 'id="budgets"' in budgets


def test_no_operator_key_means_no_payouts_not_a_well_known_key(anvil, settings):
    """An empty CHAIN_PRIVATE_KEY used to fall back to anvil's public dev key on any chain id 31337."""
    from django.core.exceptions import ImproperlyConfigured

    settings.CHAIN_PRIVATE_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="CHAIN_PRIVATE_KEY is not set"):
        Chain._connect(anvil)


def test_contracts_are_redeployed_when_the_chain_lost_them(chain_settings):
    chain = Chain.from_settings()
    first = chain.ledger().address
    ContractDeployment.objects.filter(name="TrainingLedger", chain_id=chain.chain_id).update(address=new_address())
    second = chain.ledger().address
    assert second != first
    row = ContractDeployment.objects.get(name="TrainingLedger", chain_id=chain.chain_id)
    assert row.address == second and row.block_number > 0 and len(row.bytecode_sha256) == 64


def test_eth_tester_runs_the_same_flow(settings):
    settings.CHAIN_RPC_URL = "eth-tester"
    a = nodes_with_addresses(1)[0]
    job = funded_job(reward_per_round=4, rounds=1)
    add_round(job, 1, {a: 1})
    job.status = Job.Status.FINISHED
    job.save()
    settlement.settle(job.id)
    assert Chain.from_settings().chain_id != 31337
    assert balance(address_of(a)) == 4 * WEI
    assert Job.objects.get(pk=job.id).status == Job.Status.SETTLED


def test_one_job_failing_to_settle_does_not_stop_the_others(chain_settings, settings):
    """Reported: one exception stopped beat's retry loop for the jobs behind it."""
    from jobs.models import ValidatorReport
    from ledger.tasks import settle_ended_jobs

    settings.CELERY_TASK_ALWAYS_EAGER = True
    broken_node, good_node = nodes_with_addresses(2)
    validator = make_node(make_user(), "validator")
    broken = funded_job(reward_per_round=3, rounds=1, validator=validator, status=Job.Status.FINISHED)
    rnd = add_round(broken, 1, {broken_node: 1})
    ValidatorReport.objects.create(round=rnd, node=validator, evidence={"not": "evidence"}, consensus_hash="ab" * 32)
    fine = funded_job(reward_per_round=3, rounds=1, status=Job.Status.FINISHED)
    add_round(fine, 1, {good_node: 1})
    assert broken.id < fine.id  # the broken one comes first in the loop
    settle_ended_jobs()
    assert balance(address_of(good_node)) == 3 * WEI
    assert Job.objects.get(pk=fine.id).status == Job.Status.SETTLED
    assert Job.objects.get(pk=broken.id).status == Job.Status.FINISHED  # left for the next beat


def test_the_web_never_needs_the_wallets_encryption_key(client, settings):
    """Only the settlement worker holds WALLET_ENCRYPTION_KEY (compose): pages show a wallet it
    made, or say it is being made, without ever encrypting a key themselves."""
    settings.WALLET_ENCRYPTION_KEY = ""
    user = make_user()
    client.force_login(user)
    page = client.get("/payouts/").content.decode()
    assert "being made" in page
    job = make_job(reward_per_round=5, rounds=1, status=Job.Status.WAITING)
    client.force_login(job.owner)
    assert client.get(f"/jobs/{job.id}/").status_code == 200
