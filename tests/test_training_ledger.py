"""contracts/TrainingLedger.sol, RewardToken.sol and ModelRegistry.sol on a real anvil, driven by
raw web3 and the committed artifacts; reward roots and proofs come from ledger.merkle."""

import itertools
import json
import secrets
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from ledger.merkle import MerkleTree, reward_leaf

pytestmark = pytest.mark.services  # anvil

ARTIFACTS = Path(__file__).resolve().parents[1] / "platform" / "ledger" / "artifacts"
WEI = 10**18
# anvil's public dev keys 5..9: the platform's own tests pay with key 0 on the same session anvil.
ADMIN_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"
CREATOR_KEY = "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"
OPERATOR_KEY = "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"
OTHER_KEY = "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"
PAYEE_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"

_job_ids = itertools.count(1000 + secrets.randbelow(10**9) * 1000)


def address(key: str) -> str:
    return Account.from_key(key).address


def fresh_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


class Chain:
    """Deploy, send signed transactions and check custom errors by name."""

    def __init__(self, url: str):
        self.w3 = Web3(Web3.HTTPProvider(url))
        self.chain_id = self.w3.eth.chain_id
        self.errors: dict[str, str] = {}

    def artifact(self, name: str) -> dict:
        artifact = json.loads((ARTIFACTS / f"{name}.json").read_text())
        for item in artifact["abi"]:
            if item["type"] == "error":
                signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                self.errors["0x" + keccak(text=signature)[:4].hex()] = item["name"]
        return artifact

    def deploy(self, name: str, key: str, *args):
        artifact = self.artifact(name)
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = self.send(factory.constructor(*args), key)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])

    def send(self, call, key: str):
        sender = address(key)
        tx = call.build_transaction({"from": sender, "nonce": self.w3.eth.get_transaction_count(sender, "pending")})
        signed = Account.sign_transaction(tx, key)
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(signed.raw_transaction))
        assert receipt["status"] == 1
        return receipt

    def reverts(self, call, key: str, error: str) -> None:
        with pytest.raises(ContractCustomError) as info:
            call.call({"from": address(key)})
        data = info.value.data if isinstance(info.value.data, str) else str(info.value.args)
        assert self.errors.get(data[:10]) == error, (data, self.errors.get(data[:10]))


@pytest.fixture(scope="module")
def chain(anvil):
    return Chain(anvil)


@pytest.fixture(scope="module")
def token(chain):
    return chain.deploy("RewardToken", ADMIN_KEY, "Reward", "RWD", address(ADMIN_KEY))


@pytest.fixture(scope="module")
def ledger(chain, token):
    ledger = chain.deploy("TrainingLedger", ADMIN_KEY, token.address, address(ADMIN_KEY))
    for key in (CREATOR_KEY, OPERATOR_KEY, OTHER_KEY, PAYEE_KEY):
        chain.send(token.functions.mint(address(key), 10**6 * WEI), ADMIN_KEY)
    return ledger


def balance(token, who: str) -> int:
    return token.functions.balanceOf(who).call()


def new_job(chain, token, ledger, budget=1000 * WEI, stake=0, burn=False, fund=True):
    job_id = next(_job_ids)
    config = keccak(text=f"config-{job_id}")
    chain.send(ledger.functions.registerJob(job_id, address(CREATOR_KEY), config, stake, burn), ADMIN_KEY)
    if fund:
        chain.send(token.functions.approve(ledger.address, budget), CREATOR_KEY)
        chain.send(ledger.functions.fundJob(job_id, config, budget), CREATOR_KEY)
    return job_id, config


def reward_tree(job_id: int, round_: int, payees: list[tuple[str, int]]) -> MerkleTree:
    return MerkleTree([reward_leaf(job_id, round_, i, account, amount) for i, (account, amount) in enumerate(payees)])


def commit(chain, ledger, job_id: int, round_: int, payees: list[tuple[str, int]], total: int | None = None):
    tree = reward_tree(job_id, round_, payees)
    total = sum(a for _, a in payees) if total is None else total
    receipt = chain.send(
        ledger.functions.commitRound(
            job_id, round_, keccak(text="model"), keccak(text=f"contrib-{round_}"), tree.root, total
        ),
        ADMIN_KEY,
    )
    return tree, receipt


def batch_args(job_id, round_, tree, payees, indexes):
    return (
        job_id,
        round_,
        list(indexes),
        [payees[i][0] for i in indexes],
        [payees[i][1] for i in indexes],
        [tree.proof(i) for i in indexes],
    )


# -- jobs and escrow -------------------------------------------------------------------------


def test_register_and_fund_pulls_the_budget(chain, token, ledger):
    creator = address(CREATOR_KEY)
    before_creator, before_ledger = balance(token, creator), balance(token, ledger.address)
    job_id, config = new_job(chain, token, ledger, budget=500 * WEI, stake=7 * WEI, burn=True)
    assert balance(token, creator) == before_creator - 500 * WEI
    assert balance(token, ledger.address) == before_ledger + 500 * WEI
    assert ledger.functions.jobs(job_id).call() == [creator, config, 500 * WEI, 0, 7 * WEI, True, False, True]
    funded = ledger.events.JobFunded().get_logs(from_block=chain.w3.eth.block_number)
    assert [dict(e["args"]) for e in funded] == [{"jobId": job_id, "creator": creator, "budget": 500 * WEI}]


def test_register_and_fund_refusals(chain, token, ledger):
    job_id, config = new_job(chain, token, ledger, fund=False)
    f = ledger.functions
    chain.reverts(f.registerJob(job_id, address(OTHER_KEY), config, 0, False), ADMIN_KEY, "JobExists")
    chain.reverts(
        f.registerJob(job_id + 1, address(OTHER_KEY), config, 0, False), OTHER_KEY, "AccessControlUnauthorizedAccount"
    )
    chain.reverts(f.fundJob(job_id + 10**6, config, WEI), CREATOR_KEY, "UnknownJob")
    chain.send(token.functions.approve(ledger.address, 10 * WEI), OTHER_KEY)
    chain.reverts(f.fundJob(job_id, config, WEI), OTHER_KEY, "NotCreator")
    chain.send(token.functions.approve(ledger.address, 10 * WEI), CREATOR_KEY)
    chain.reverts(f.fundJob(job_id, keccak(text="another config"), WEI), CREATOR_KEY, "ConfigMismatch")
    chain.reverts(f.fundJob(job_id, config, 0), CREATOR_KEY, "ZeroAmount")
    chain.reverts(f.fundJob(job_id, config, 11 * WEI), CREATOR_KEY, "ERC20InsufficientAllowance")
    chain.send(f.fundJob(job_id, config, 10 * WEI), CREATOR_KEY)
    chain.send(token.functions.approve(ledger.address, 10 * WEI), CREATOR_KEY)
    chain.reverts(f.fundJob(job_id, config, 10 * WEI), CREATOR_KEY, "AlreadyFunded")


def test_fund_with_permit_and_a_front_run_permit(chain, token, ledger):
    creator = address(CREATOR_KEY)
    for front_run in (False, True):
        job_id, config = new_job(chain, token, ledger, fund=False)
        chain.send(token.functions.approve(ledger.address, 0), CREATOR_KEY)
        budget, deadline = 42 * WEI, chain.w3.eth.get_block("latest")["timestamp"] + 3600
        signed = Account.sign_typed_data(
            CREATOR_KEY,
            {"name": "Reward", "version": "1", "chainId": chain.chain_id, "verifyingContract": token.address},
            {
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ]
            },
            {
                "owner": creator,
                "spender": ledger.address,
                "value": budget,
                "nonce": token.functions.nonces(creator).call(),
                "deadline": deadline,
            },
        )
        v, r, s = signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
        if front_run:  # someone submits the permit first: funding must still go through
            chain.send(token.functions.permit(creator, ledger.address, budget, deadline, v, r, s), OTHER_KEY)
        before = balance(token, creator)
        chain.send(ledger.functions.fundJobWithPermit(job_id, config, budget, deadline, v, r, s), CREATOR_KEY)
        assert balance(token, creator) == before - budget
        assert ledger.functions.jobs(job_id).call()[2] == budget


def test_commit_rules(chain, token, ledger):
    f = ledger.functions
    unfunded, _ = new_job(chain, token, ledger, fund=False)
    root = keccak(text="root")
    chain.reverts(f.commitRound(unfunded, 1, root, root, root, 1), ADMIN_KEY, "NotFunded")
    job_id, _ = new_job(chain, token, ledger, budget=100 * WEI)
    chain.reverts(f.commitRound(job_id, 1, root, root, root, WEI), OTHER_KEY, "AccessControlUnauthorizedAccount")
    chain.reverts(f.commitRound(job_id, 1, root, root, b"\0" * 32, WEI), ADMIN_KEY, "ZeroRoot")
    payees = [(fresh_address(), 30 * WEI), (fresh_address(), 30 * WEI), (fresh_address(), 10 * WEI)]
    tree, receipt = commit(chain, ledger, job_id, 1, payees)
    assert receipt["gasUsed"] <= 150_000
    assert f.rounds(job_id, 1).call() == [keccak(text="contrib-1"), tree.root, 70 * WEI, 0]
    (event,) = ledger.events.RoundCommitted().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["modelHash"] == keccak(text="model") and event["args"]["total"] == 70 * WEI
    chain.reverts(f.commitRound(job_id, 1, root, root, root, WEI), ADMIN_KEY, "RoundExists")
    chain.reverts(f.commitRound(job_id, 2, root, root, root, 30 * WEI + 1), ADMIN_KEY, "BudgetExceeded")
    chain.send(f.commitRound(job_id, 2, root, root, root, 30 * WEI), ADMIN_KEY)  # exactly what is left
    chain.reverts(f.commitRound(job_id, 3, root, root, root, 1), ADMIN_KEY, "BudgetExceeded")
    assert f.jobs(job_id).call()[3] == 100 * WEI


# -- payouts ---------------------------------------------------------------------------------


def test_contract_leaf_matches_python(ledger):
    account = fresh_address()
    assert ledger.functions.rewardLeaf(5, 6, 7, account, 8 * WEI).call() == reward_leaf(5, 6, 7, account, 8 * WEI)


def test_claim_pays_once_and_checks_the_proof(chain, token, ledger):
    payee, other = address(PAYEE_KEY), address(OTHER_KEY)
    job_id, _ = new_job(chain, token, ledger)
    payees = [(fresh_address(), 5 * WEI), (payee, 7 * WEI), (fresh_address(), 9 * WEI), (other, 2 * WEI)]
    payees.append((fresh_address(), 1))  # five leaves: an odd one carried up
    tree, _ = commit(chain, ledger, job_id, 1, payees)
    f = ledger.functions
    chain.reverts(f.claim(job_id, 1, 1, 8 * WEI, tree.proof(1)), PAYEE_KEY, "InvalidProof")  # wrong amount
    chain.reverts(f.claim(job_id, 1, 1, 7 * WEI, tree.proof(2)), PAYEE_KEY, "InvalidProof")  # wrong proof
    chain.reverts(f.claim(job_id, 1, 0, 5 * WEI, tree.proof(0)), PAYEE_KEY, "InvalidProof")  # someone else's leaf
    chain.reverts(f.claim(job_id, 1, 1, 7 * WEI, tree.proof(1)), OTHER_KEY, "InvalidProof")  # not the payee
    chain.reverts(f.claim(job_id, 2, 1, 7 * WEI, tree.proof(1)), PAYEE_KEY, "UnknownRound")
    before = balance(token, payee)
    receipt = chain.send(f.claim(job_id, 1, 1, 7 * WEI, tree.proof(1)), PAYEE_KEY)
    assert balance(token, payee) == before + 7 * WEI
    (event,) = ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"jobId": job_id, "round": 1, "account": payee, "index": 1, "amount": 7 * WEI}
    assert f.isPaid(job_id, 1, 1).call() and not f.isPaid(job_id, 1, 0).call()
    chain.reverts(f.claim(job_id, 1, 1, 7 * WEI, tree.proof(1)), PAYEE_KEY, "AlreadyPaid")
    chain.send(f.claim(job_id, 1, 3, 2 * WEI, tree.proof(3)), OTHER_KEY)  # the leaf with a one-level proof
    assert f.rounds(job_id, 1).call()[3] == 9 * WEI

    # a single-payee round: the root is the leaf and the proof is empty
    tree, _ = commit(chain, ledger, job_id, 2, [(payee, 3 * WEI)])
    assert tree.proof(0) == []
    chain.send(f.claim(job_id, 2, 0, 3 * WEI, []), PAYEE_KEY)


def test_pay_batch_pays_skips_what_is_paid_and_refuses_bad_batches(chain, token, ledger):
    job_id, _ = new_job(chain, token, ledger)
    payees = [(fresh_address(), (i + 1) * WEI) for i in range(6)] + [(address(PAYEE_KEY), 4 * WEI)]
    tree, _ = commit(chain, ledger, job_id, 1, payees)
    f = ledger.functions
    chain.reverts(
        f.payBatch(*batch_args(job_id, 1, tree, payees, [0, 1])), OTHER_KEY, "AccessControlUnauthorizedAccount"
    )
    bad = batch_args(job_id, 1, tree, payees, [0, 1])
    bad[5][1] = tree.proof(0)
    chain.reverts(f.payBatch(*bad), ADMIN_KEY, "InvalidProof")
    short = batch_args(job_id, 1, tree, payees, [0, 1])
    chain.reverts(f.payBatch(*short[:3], short[3][:1], *short[4:]), ADMIN_KEY, "LengthMismatch")
    big = [0] * 201
    chain.reverts(
        f.payBatch(job_id, 1, big, [payees[0][0]] * 201, [WEI] * 201, [tree.proof(0)] * 201), ADMIN_KEY, "BatchTooLarge"
    )

    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, [0, 1, 6])), ADMIN_KEY)
    assert len(ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD)) == 3
    paid = {account: balance(token, account) for account, _ in payees}
    assert paid[payees[0][0]] == WEI and paid[payees[1][0]] == 2 * WEI
    # the same batch again, then the whole round: only the unpaid ones move, no event for the rest
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, [0, 1, 6])), ADMIN_KEY)
    assert ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD) == ()
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, range(7))), ADMIN_KEY)
    assert sorted(e["args"]["index"] for e in ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD)) == [
        2,
        3,
        4,
        5,
    ]
    for i, (account, amount) in enumerate(payees):
        expected = paid[account] if i in (0, 1, 6) else amount
        assert balance(token, account) == expected
    assert f.rounds(job_id, 1).call()[2:] == [25 * WEI, 25 * WEI]
    # paid by batch: the payee's own claim is refused
    chain.reverts(f.claim(job_id, 1, 6, 4 * WEI, tree.proof(6)), PAYEE_KEY, "AlreadyPaid")


def test_a_round_never_pays_beyond_its_total(chain, token, ledger):
    # a faulty coordinator commits a tree whose leaves add up to more than the round's total
    job_id, _ = new_job(chain, token, ledger, budget=100 * WEI)
    payees = [(fresh_address(), 40 * WEI), (fresh_address(), 40 * WEI), (address(PAYEE_KEY), 40 * WEI)]
    tree, _ = commit(chain, ledger, job_id, 1, payees, total=100 * WEI)
    f = ledger.functions
    chain.reverts(f.payBatch(*batch_args(job_id, 1, tree, payees, [0, 1, 2])), ADMIN_KEY, "RoundTotalExceeded")
    chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, [0, 1])), ADMIN_KEY)
    chain.reverts(f.claim(job_id, 1, 2, 40 * WEI, tree.proof(2)), PAYEE_KEY, "RoundTotalExceeded")
    assert not f.isPaid(job_id, 1, 2).call()


# -- priming the paid bitmap -----------------------------------------------------------------

LEAVES_PER_WORD = 255  # leaf i: bit i % 255 of word i / 255; bit 255 is the "primed" sentinel
PRIMED = 1 << 255
PAID_BITMAP_SLOT = 4  # storage: AccessControl._roles, jobs, rounds, stakes, _paidBitmap


def bitmap_word(chain, ledger, job_id: int, round_: int, word: int) -> int:
    """A word of the private paid bitmap, read from storage (mapping(job) => mapping(round) => ...)."""
    inner = keccak(
        round_.to_bytes(32, "big") + keccak(job_id.to_bytes(32, "big") + PAID_BITMAP_SLOT.to_bytes(32, "big"))
    )
    slot = keccak(word.to_bytes(32, "big") + inner)
    return int.from_bytes(chain.w3.eth.get_storage_at(ledger.address, slot), "big")


def test_priming_makes_the_first_claim_of_any_word_cost_the_warm_price(chain, token, ledger):
    payee = address(PAYEE_KEY)
    mine = (3, 4, 257, 520)  # two in word 0, one in word 1, one in word 2 (600 leaves: 3 words)
    payees = [(payee, WEI) if i in mine else (fresh_address(), 1) for i in range(600)]
    job_id, _ = new_job(chain, token, ledger, budget=100 * WEI)
    unprimed, _ = commit(chain, ledger, job_id, 1, payees)
    primed, _ = commit(chain, ledger, job_id, 2, payees)  # the same shape: the same proof depths
    f = ledger.functions
    receipt = chain.send(f.primeClaims(job_id, 2, len(payees)), ADMIN_KEY)
    assert [bitmap_word(chain, ledger, job_id, 2, w) for w in range(4)] == [PRIMED, PRIMED, PRIMED, 0]
    assert receipt["gasUsed"] < 21_000 + 3 * 25_000  # one word written from zero per 255 leaves

    before = balance(token, payee)
    cold = {i: chain.send(f.claim(job_id, 1, i, WEI, unprimed.proof(i)), PAYEE_KEY)["gasUsed"] for i in mine}
    warm = {i: chain.send(f.claim(job_id, 2, i, WEI, primed.proof(i)), PAYEE_KEY)["gasUsed"] for i in mine}
    assert balance(token, payee) == before + 2 * len(mine) * WEI
    for i in (3, 257, 520):  # the first claim of its word: written from zero unless primed
        assert warm[i] < cold[i] - 15_000, (i, warm[i], cold[i])
    # primed, the first claim of a word costs what the second one of a word costs unprimed
    assert abs(warm[3] - cold[4]) < 500, (warm[3], cold[4])
    assert all(f.isPaid(job_id, r, i).call() for r in (1, 2) for i in mine)
    assert bitmap_word(chain, ledger, job_id, 2, 0) == PRIMED | 1 << 3 | 1 << 4
    assert bitmap_word(chain, ledger, job_id, 2, 1) == PRIMED | 1 << 2  # leaf 257 = 255 + 2


def test_priming_marks_nothing_paid_and_twice_is_harmless(chain, token, ledger):
    payees = [(fresh_address(), (i + 1) * WEI) for i in range(5)] + [(address(PAYEE_KEY), 4 * WEI)]
    job_id, _ = new_job(chain, token, ledger)
    tree, _ = commit(chain, ledger, job_id, 1, payees)
    f = ledger.functions
    first = chain.send(f.primeClaims(job_id, 1, len(payees)), ADMIN_KEY)
    again = chain.send(f.primeClaims(job_id, 1, len(payees)), ADMIN_KEY)
    assert again["gasUsed"] < first["gasUsed"] - 15_000  # nothing written the second time
    assert bitmap_word(chain, ledger, job_id, 1, 0) == PRIMED
    assert not any(f.isPaid(job_id, 1, i).call() for i in range(LEAVES_PER_WORD + 1))
    assert f.rounds(job_id, 1).call()[3] == 0
    before = balance(token, address(PAYEE_KEY))
    chain.send(f.claim(job_id, 1, 5, 4 * WEI, tree.proof(5)), PAYEE_KEY)
    assert balance(token, address(PAYEE_KEY)) == before + 4 * WEI
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, range(6))), ADMIN_KEY)
    paid = sorted(e["args"]["index"] for e in ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD))
    assert paid == [0, 1, 2, 3, 4]  # the claimed leaf is skipped, the primed ones all pay
    assert all(balance(token, account) == amount for account, amount in payees[:5])
    chain.send(f.primeClaims(job_id, 1, len(payees)), ADMIN_KEY)  # after payouts: changes nothing
    assert bitmap_word(chain, ledger, job_id, 1, 0) == PRIMED | 0b111111
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, range(6))), ADMIN_KEY)
    assert ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD) == ()
    chain.reverts(f.claim(job_id, 1, 5, 4 * WEI, tree.proof(5)), PAYEE_KEY, "AlreadyPaid")
    assert f.rounds(job_id, 1).call()[2:] == [19 * WEI, 19 * WEI]


def test_only_the_coordinator_primes_and_only_committed_rounds(chain, token, ledger):
    job_id, _ = new_job(chain, token, ledger)
    commit(chain, ledger, job_id, 1, [(fresh_address(), WEI)])
    f = ledger.functions
    chain.reverts(f.primeClaims(job_id, 1, 10), OTHER_KEY, "AccessControlUnauthorizedAccount")
    chain.reverts(f.primeClaims(job_id, 2, 10), ADMIN_KEY, "UnknownRound")
    chain.reverts(f.primeClaims(job_id + 10**6, 1, 10), ADMIN_KEY, "UnknownRound")
    chain.send(f.primeClaims(job_id, 1, 0), ADMIN_KEY)  # no leaves: no word
    assert bitmap_word(chain, ledger, job_id, 1, 0) == 0
    chain.send(f.primeClaims(job_id, 1, 1), ADMIN_KEY)
    assert bitmap_word(chain, ledger, job_id, 1, 0) == PRIMED


@pytest.mark.parametrize("primed", [False, True])
def test_bitmap_word_boundaries_pay_exactly_once(chain, token, ledger, primed):
    n = 2 * LEAVES_PER_WORD + 3  # leaves 0..512: words 0, 1 and 2
    edges = [0, 253, 254, 255, 256, 509, 510, 511, 512]
    payees = [(address(PAYEE_KEY), WEI + i) if i in (254, 255) else (fresh_address(), WEI + i) for i in range(n)]
    job_id, _ = new_job(chain, token, ledger, budget=10**4 * WEI)
    tree, _ = commit(chain, ledger, job_id, 1, payees)
    f = ledger.functions
    if primed:
        chain.send(f.primeClaims(job_id, 1, n), ADMIN_KEY)
        assert [bitmap_word(chain, ledger, job_id, 1, w) for w in range(4)] == [PRIMED] * 3 + [0]
    # the payee claims leaf 254 (last bit of word 0), then 255 (first bit of word 1)
    for i in (254, 255):
        chain.send(f.claim(job_id, 1, i, WEI + i, tree.proof(i)), PAYEE_KEY)
        assert [f.isPaid(job_id, 1, j).call() for j in edges] == [j in (254, 255) and j <= i for j in edges]
    sentinel = PRIMED if primed else 0
    assert bitmap_word(chain, ledger, job_id, 1, 0) == sentinel | 1 << 254
    assert bitmap_word(chain, ledger, job_id, 1, 1) == sentinel | 1
    for i in (254, 255):
        chain.reverts(f.claim(job_id, 1, i, WEI + i, tree.proof(i)), PAYEE_KEY, "AlreadyPaid")
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, edges)), ADMIN_KEY)
    paid = [e["args"]["index"] for e in ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD)]
    assert paid == [j for j in edges if j not in (254, 255)]
    assert all(f.isPaid(job_id, 1, j).call() for j in edges)
    assert not any(f.isPaid(job_id, 1, j).call() for j in (1, 252, 257, 508, 513, 765))
    receipt = chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, edges)), ADMIN_KEY)
    assert ledger.events.RewardPaid().process_receipt(receipt, errors=DISCARD) == ()
    for j in edges:
        if j not in (254, 255):
            assert balance(token, payees[j][0]) == WEI + j
    assert f.rounds(job_id, 1).call()[3] == sum(WEI + j for j in edges)
    assert bitmap_word(chain, ledger, job_id, 1, 2) == sentinel | 0b111  # 510, 511, 512


def test_close_refunds_the_uncommitted_budget_and_committed_rounds_stay_payable(chain, token, ledger):
    creator = address(CREATOR_KEY)
    job_id, _ = new_job(chain, token, ledger, budget=1000 * WEI)
    payees = [(address(PAYEE_KEY), 200 * WEI), (fresh_address(), 100 * WEI)]
    tree, _ = commit(chain, ledger, job_id, 1, payees)
    commit(chain, ledger, job_id, 2, [(fresh_address(), 150 * WEI)])
    f = ledger.functions
    chain.reverts(f.closeJob(job_id), OTHER_KEY, "AccessControlUnauthorizedAccount")
    before_creator, before_ledger = balance(token, creator), balance(token, ledger.address)
    supply = token.functions.totalSupply().call()
    receipt = chain.send(f.closeJob(job_id), ADMIN_KEY)
    assert balance(token, creator) == before_creator + 550 * WEI
    assert balance(token, ledger.address) == before_ledger - 550 * WEI
    assert token.functions.totalSupply().call() == supply
    (event,) = ledger.events.JobClosed().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"jobId": job_id, "refunded": 550 * WEI, "burnt": 0}
    assert f.jobs(job_id).call()[6] is True
    chain.reverts(f.closeJob(job_id), ADMIN_KEY, "JobIsClosed")
    root = keccak(text="root")
    chain.reverts(f.commitRound(job_id, 3, root, root, root, WEI), ADMIN_KEY, "JobIsClosed")
    before = balance(token, address(PAYEE_KEY))
    chain.send(f.claim(job_id, 1, 0, 200 * WEI, tree.proof(0)), PAYEE_KEY)
    chain.send(f.payBatch(*batch_args(job_id, 1, tree, payees, [1])), ADMIN_KEY)
    assert balance(token, address(PAYEE_KEY)) == before + 200 * WEI


def test_close_burns_the_remainder_when_the_job_says_so(chain, token, ledger):
    creator = address(CREATOR_KEY)
    job_id, _ = new_job(chain, token, ledger, budget=300 * WEI, burn=True)
    commit(chain, ledger, job_id, 1, [(fresh_address(), 120 * WEI)])
    supply, before_creator = token.functions.totalSupply().call(), balance(token, creator)
    receipt = chain.send(ledger.functions.closeJob(job_id), ADMIN_KEY)
    assert token.functions.totalSupply().call() == supply - 180 * WEI
    assert balance(token, creator) == before_creator
    (event,) = ledger.events.JobClosed().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"jobId": job_id, "refunded": 0, "burnt": 180 * WEI}


# -- stakes ----------------------------------------------------------------------------------


def test_stake_slash_release(chain, token, ledger):
    operator = address(OPERATOR_KEY)
    f = ledger.functions
    free_job, _ = new_job(chain, token, ledger)
    chain.reverts(f.stake(free_job), OPERATOR_KEY, "NoStakeRequired")
    job_id, _ = new_job(chain, token, ledger, stake=100 * WEI)
    chain.send(token.functions.approve(ledger.address, 1000 * WEI), OPERATOR_KEY)
    before = balance(token, operator)
    receipt = chain.send(f.stake(job_id), OPERATOR_KEY)
    assert balance(token, operator) == before - 100 * WEI
    assert dict(ledger.events.Staked().process_receipt(receipt, errors=DISCARD)[0]["args"]) == {
        "jobId": job_id,
        "operator": operator,
        "amount": 100 * WEI,
    }
    assert f.stakes(job_id, operator).call() == [100 * WEI, True, False]
    chain.reverts(f.stake(job_id), OPERATOR_KEY, "AlreadyStaked")

    evidence = keccak(text="evidence")
    chain.reverts(f.slash(job_id, operator, WEI, evidence), OTHER_KEY, "AccessControlUnauthorizedAccount")
    chain.reverts(f.slash(job_id, address(OTHER_KEY), WEI, evidence), ADMIN_KEY, "NotStaked")
    supply = token.functions.totalSupply().call()
    receipt = chain.send(f.slash(job_id, operator, 30 * WEI, evidence), ADMIN_KEY)
    assert token.functions.totalSupply().call() == supply - 30 * WEI
    assert ledger.events.Slashed().process_receipt(receipt, errors=DISCARD)[0]["args"]["evidenceHash"] == evidence
    assert f.stakes(job_id, operator).call()[0] == 70 * WEI
    chain.reverts(f.slash(job_id, operator, 70 * WEI + 1, evidence), ADMIN_KEY, "SlashExceedsStake")

    chain.reverts(f.releaseStake(job_id, operator), OTHER_KEY, "JobNotClosed")
    chain.send(f.closeJob(job_id), ADMIN_KEY)
    chain.reverts(f.stake(job_id), OTHER_KEY, "JobIsClosed")
    before = balance(token, operator)
    receipt = chain.send(f.releaseStake(job_id, operator), OTHER_KEY)  # anyone may release it
    assert balance(token, operator) == before + 70 * WEI
    assert ledger.events.StakeReleased().process_receipt(receipt, errors=DISCARD)[0]["args"]["amount"] == 70 * WEI
    assert f.stakes(job_id, operator).call() == [0, True, True]
    chain.reverts(f.releaseStake(job_id, operator), OTHER_KEY, "StakeAlreadyReleased")
    chain.reverts(f.releaseStake(job_id, address(OTHER_KEY)), OTHER_KEY, "NotStaked")


# -- token and registry ----------------------------------------------------------------------


def test_token_keeps_minter_role_and_burns(chain, token):
    chain.reverts(token.functions.mint(address(OTHER_KEY), WEI), OTHER_KEY, "AccessControlUnauthorizedAccount")
    supply, before = token.functions.totalSupply().call(), balance(token, address(OTHER_KEY))
    chain.send(token.functions.burn(WEI), OTHER_KEY)
    assert token.functions.totalSupply().call() == supply - WEI
    assert balance(token, address(OTHER_KEY)) == before - WEI


def test_model_registry_access_rules(chain):
    registry = chain.deploy("ModelRegistry", ADMIN_KEY)
    f = registry.functions
    owner, user, stranger = address(CREATOR_KEY), address(OTHER_KEY), fresh_address()
    content = keccak(text="weights")
    receipt = chain.send(f.registerModel("digits-cnn", content, False), CREATOR_KEY)
    (event,) = registry.events.ModelRegistered().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {
        "modelId": 1,
        "owner": owner,
        "contentHash": content,
        "name": "digits-cnn",
        "isPublic": False,
    }
    chain.send(f.registerModel("open-model", keccak(text="open"), True), OTHER_KEY)
    assert f.models(1).call() == [owner, False, content, "digits-cnn"]
    assert f.hasAccess(1, owner).call() and not f.hasAccess(1, user).call()
    assert f.hasAccess(2, stranger).call()  # public
    assert not f.hasAccess(3, owner).call()  # no such model

    chain.reverts(f.grantAccess(1, user), OTHER_KEY, "NotModelOwner")
    chain.reverts(f.grantAccess(3, user), CREATOR_KEY, "UnknownModel")
    receipt = chain.send(f.grantAccess(1, user), CREATOR_KEY)
    assert registry.events.AccessGranted().process_receipt(receipt, errors=DISCARD)[0]["args"]["user"] == user
    assert f.hasAccess(1, user).call() and not f.hasAccess(1, stranger).call()
    chain.reverts(f.revokeAccess(1, user), OTHER_KEY, "NotModelOwner")
    receipt = chain.send(f.revokeAccess(1, user), CREATOR_KEY)
    assert registry.events.AccessRevoked().process_receipt(receipt, errors=DISCARD)[0]["args"]["user"] == user
    assert not f.hasAccess(1, user).call()
