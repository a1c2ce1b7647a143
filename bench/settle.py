"""Settlement gas on anvil: TrainingLedger's commit, batch payout and claim vs plain transfers.

    python -m bench settle [--quick] [--payees 10,100,1000]

A fresh anvil (the npm-pinned binary, ``bench/_anvil.py``) gets RewardToken and TrainingLedger
from the committed artifacts. For each payee count N a job is registered and funded, round 1 is
committed (its reward tree built by ``ledger.merkle``) and primed (``primeClaims(job, 1, N)``:
one paid-bitmap word per 255 leaves written from zero, ``prime_gas``), payee 0 claims its own
reward first (the first claim of a primed word), the coordinator pays payees 1..N-2 with
``payBatch`` in chunks of at most 200, then payee N-1 claims; ``claim_gas`` is the dearer of the
two claims. For reference, round 2 (the same tree shape, another claimant at leaf 0, never
primed) measures ``claim_gas_first``: a claim that writes its bitmap word from zero, what the
first claim of every 255 leaves costs without priming. Every recipient is a fresh address (zero
balance: a storage slot written from zero, the dearest transfer).

Baseline, same run: a plain ERC-20 ``transfer`` from an EOA to a fresh address, once per payee
(its gas includes the 21,000 of a transaction). ``value`` is the batch gas per payee (all the
batch transactions' gas over the payees they paid, the largest over the sizes), ``ratio`` =
value / baseline. Targets: batch <= 40,000 gas per payee, commit <= 150,000 whatever N, claim
(after priming) <= 90,000. Gas is deterministic: one run, no repeats; the times are for information only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.types import RPCEndpoint

from bench._anvil import DEV_KEYS, anvil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

from ledger.merkle import MerkleTree, reward_leaf  # noqa: E402

ARTIFACTS = ROOT / "platform" / "ledger" / "artifacts"
PAYEES_FULL = (10, 100, 1000)
PAYEES_QUICK = (10, 100)
CHUNK = 200
WEI = 10**18
LEAVES_PER_WORD = 255  # TrainingLedger's paid bitmap: bit 255 of each word is the primed sentinel
TARGET_BATCH, TARGET_COMMIT, TARGET_CLAIM = 40_000, 150_000, 90_000


class Sender:
    """Signs with one key, tracks its nonce, waits for each receipt (anvil mines at once)."""

    def __init__(self, w3: Web3, key: str) -> None:
        self.w3, self.key = w3, key
        self.address = Account.from_key(key).address
        self.nonce: int = int(w3.eth.get_transaction_count(self.address))

    def send(self, call: Any, gas: int | None = None, wait: bool = True) -> Any:
        params: dict[str, Any] = {"from": self.address, "nonce": self.nonce}
        if gas is not None:
            params["gas"] = gas
        tx = call.build_transaction(params)
        tx_hash = self.w3.eth.send_raw_transaction(Account.sign_transaction(tx, self.key).raw_transaction)
        self.nonce += 1
        if not wait:
            return tx_hash
        return self.receipt(tx_hash)

    def send_eth(self, to: str, value: int) -> Any:
        tx = {
            "to": to,
            "value": value,
            "gas": 21_000,
            "nonce": self.nonce,
            "chainId": self.w3.eth.chain_id,
            "maxFeePerGas": 2 * self.w3.eth.gas_price + 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        tx_hash = self.w3.eth.send_raw_transaction(Account.sign_transaction(tx, self.key).raw_transaction)
        self.nonce += 1
        return self.receipt(tx_hash)

    def receipt(self, tx_hash: Any) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.to_0x_hex()} reverted")
        return receipt


def deploy(w3: Web3, sender: Sender, name: str, *args: Any) -> Any:
    artifact = json.loads((ARTIFACTS / f"{name}.json").read_text())
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = sender.send(factory.constructor(*args))
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


def fresh_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


def claim_as(w3: Web3, admin: Sender, payee: Any, call: Any) -> Any:
    admin.send_eth(payee.address, 10**17)
    return Sender(w3, payee.key.to_0x_hex()).send(call)


def run_size(w3: Web3, admin: Sender, creator: Sender, token: Any, ledger: Any, n: int, job_id: int) -> dict:
    payees = [(fresh_address(), WEI + i) for i in range(n)]
    first, last = Account.create(), Account.create()  # the two payees who claim themselves
    payees[0], payees[-1] = (first.address, WEI), (last.address, WEI)
    total = sum(amount for _, amount in payees)
    unprimed = Account.create()  # round 2's leaf 0: the reference claim, never primed
    payees2 = [(unprimed.address, WEI), *payees[1:]]

    t0 = time.perf_counter()
    tree = MerkleTree([reward_leaf(job_id, 1, i, account, amount) for i, (account, amount) in enumerate(payees)])
    proofs = [tree.proof(i) for i in range(n)]
    tree_s = time.perf_counter() - t0
    tree2 = MerkleTree([reward_leaf(job_id, 2, i, account, amount) for i, (account, amount) in enumerate(payees2)])

    config = keccak(text=f"bench-config-{job_id}")
    admin.send(ledger.functions.registerJob(job_id, creator.address, config, 0, False))
    creator.send(token.functions.approve(ledger.address, 2 * total))
    creator.send(ledger.functions.fundJob(job_id, config, 2 * total))
    commit = admin.send(
        ledger.functions.commitRound(job_id, 1, keccak(text="model"), keccak(text="contributions"), tree.root, total)
    )
    admin.send(
        ledger.functions.commitRound(job_id, 2, keccak(text="model"), keccak(text="contributions"), tree2.root, total)
    )
    # what the platform does before opening a round to claims: every bitmap word written once
    prime = admin.send(ledger.functions.primeClaims(job_id, 1, n))
    words = -(-n // LEAVES_PER_WORD)

    # payee 0 claims before anyone of its round is paid: fresh recipient, the first claim of its
    # (primed) bitmap word and a full-depth proof; claimants need ETH for their gas
    claim_first = claim_as(w3, admin, first, ledger.functions.claim(job_id, 1, 0, WEI, proofs[0]))
    # the same claim in the unprimed round 2: its bitmap word written from zero (the old worst case)
    claim_unprimed = claim_as(w3, admin, unprimed, ledger.functions.claim(job_id, 2, 0, WEI, tree2.proof(0)))

    batch_gas, batches, t0 = 0, 0, time.perf_counter()
    for start in range(1, n - 1, CHUNK):
        idx = list(range(start, min(start + CHUNK, n - 1)))
        receipt = admin.send(
            ledger.functions.payBatch(
                job_id,
                1,
                idx,
                [payees[i][0] for i in idx],
                [payees[i][1] for i in idx],
                [proofs[i] for i in idx],
            )
        )
        batch_gas += receipt["gasUsed"]
        batches += 1
    batch_s = time.perf_counter() - t0
    # the last payee claims after the batches (its bitmap word already in use)
    claim_last = claim_as(w3, admin, last, ledger.functions.claim(job_id, 1, n - 1, WEI, proofs[n - 1]))
    paid = ledger.functions.rounds(job_id, 1).call()[3]
    if paid != total or not all(token.functions.balanceOf(a).call() == amt for a, amt in payees[:: max(1, n // 50)]):
        raise RuntimeError("payouts do not add up")

    # baseline: one plain ERC-20 transfer per payee, EOA -> fresh address
    t0 = time.perf_counter()
    hashes = [creator.send(token.functions.transfer(fresh_address(), WEI), gas=100_000, wait=False) for _ in range(n)]
    transfer_gas = [creator.receipt(h)["gasUsed"] for h in hashes]
    transfer_s = time.perf_counter() - t0

    per_payee = batch_gas / (n - 2)
    baseline = statistics.median(transfer_gas)
    return {
        "payees": n,
        "depth": max(len(p) for p in proofs),
        "commit_gas": commit["gasUsed"],
        "prime_words": words,
        "prime_gas": prime["gasUsed"],
        "prime_gas_per_word": round((prime["gasUsed"] - 21_000) / words),
        "claim_gas": max(claim_first["gasUsed"], claim_last["gasUsed"]),
        "claim_gas_primed_first": claim_first["gasUsed"],
        "claim_gas_last": claim_last["gasUsed"],
        "claim_gas_first": claim_unprimed["gasUsed"],
        "batches": batches,
        "batch_gas": batch_gas,
        "batch_gas_per_payee": round(per_payee, 1),
        "transfer_gas": int(baseline),
        "ratio": round(per_payee / baseline, 4),
        "tree_ms": round(tree_s * 1000, 2),
        "batch_s": round(batch_s, 3),
        "transfer_s": round(transfer_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench settle", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="payees 10 and 100 only")
    ap.add_argument("--payees", default=None, help="comma-separated payee counts (default 10,100,1000; quick 10,100)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="recorded only: the chain runs on CPU")
    args = ap.parse_args(argv)
    sizes = (
        tuple(int(x) for x in args.payees.split(",") if x.strip())
        if args.payees
        else (PAYEES_QUICK if args.quick else PAYEES_FULL)
    )
    if not sizes or min(sizes) < 3:
        ap.error("--payees: each count must be >= 3 (two claim, the rest are paid in batches)")

    with anvil() as url:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 120}))
        info: dict[str, Any] = dict(w3.provider.make_request(RPCEndpoint("anvil_nodeInfo"), []))
        hardfork = str(info.get("result", {}).get("hardFork", "?"))
        admin, creator = Sender(w3, DEV_KEYS[0]), Sender(w3, DEV_KEYS[1])
        token = deploy(w3, admin, "RewardToken", "Reward", "RWD", admin.address)
        ledger = deploy(w3, admin, "TrainingLedger", token.address, admin.address)
        admin.send(token.functions.mint(creator.address, 10**9 * WEI))
        rows = [run_size(w3, admin, creator, token, ledger, n, job_id) for job_id, n in enumerate(sizes, start=1)]

    print(f"settle: TrainingLedger on anvil (hardfork {hardfork}); recipients are fresh addresses (zero balance)")
    print("prime = primeClaims for the round's leaves (one bitmap word per 255 leaves), /word without the")
    print("tx's 21,000; claim = the dearer of the two claims after priming (the first claim of a primed")
    print("word, a claim after the batches); unprimed 1st = a claim writing its bitmap word from zero;")
    print("batch/payee = payBatch gas (chunks of <= 200) / payees paid; baseline = one ERC-20 transfer tx")
    print("(EOA -> fresh address) per payee, median; gas is deterministic (one run)")
    print()
    print(
        f"{'payees':>7} {'depth':>5} {'commit':>8} {'prime':>8} {'/word':>7} {'claim':>8} {'unprimed 1st':>12} "
        f"{'batches':>7} {'batch/payee':>11} {'transfer':>8} {'ratio':>6} {'tree ms':>8} {'batch s':>8}"
    )
    for r in rows:
        print(
            f"{r['payees']:>7} {r['depth']:>5} {r['commit_gas']:>8,} {r['prime_gas']:>8,} "
            f"{r['prime_gas_per_word']:>7,} {r['claim_gas']:>8,} {r['claim_gas_first']:>12,} "
            f"{r['batches']:>7} {r['batch_gas_per_payee']:>11,.0f} {r['transfer_gas']:>8,} {r['ratio']:>6.3f} "
            f"{r['tree_ms']:>8.1f} {r['batch_s']:>8.2f}"
        )
    worst = max(rows, key=lambda r: r["batch_gas_per_payee"])
    commit_max = max(r["commit_gas"] for r in rows)
    claim_max = max(r["claim_gas"] for r in rows)
    met = {
        "batch": worst["batch_gas_per_payee"] <= TARGET_BATCH,
        "commit": commit_max <= TARGET_COMMIT,
        "claim": claim_max <= TARGET_CLAIM,
    }
    print()
    print(
        f"targets: batch <= {TARGET_BATCH:,}/payee {'met' if met['batch'] else 'MISSED'}, "
        f"commit <= {TARGET_COMMIT:,} {'met' if met['commit'] else 'MISSED'}, "
        f"claim (primed) <= {TARGET_CLAIM:,} {'met' if met['claim'] else 'MISSED'}"
    )
    result = {
        "bench": "settle",
        "metric": "gas per payee (payBatch, fresh recipients)",
        "value": float(worst["batch_gas_per_payee"]),
        "baseline": float(worst["transfer_gas"]),
        "ratio": round(worst["batch_gas_per_payee"] / worst["transfer_gas"], 4),
        "target": f"<= {TARGET_BATCH} gas per payee; commit <= {TARGET_COMMIT}; claim (primed) <= {TARGET_CLAIM}",
        "device": args.device,
        "quick": bool(args.quick),
        "chain": "anvil",
        "hardfork": hardfork,
        "commit_gas_max": commit_max,
        "batch_gas_per_payee": worst["batch_gas_per_payee"],
        "claim_gas": claim_max,
        "prime_gas_max": max(r["prime_gas"] for r in rows),
        "prime_gas_per_word": max(r["prime_gas_per_word"] for r in rows),
        "claim_gas_first": max(r["claim_gas_first"] for r in rows),
        "targets_met": met,
        "payees": list(sizes),
        "rows": rows,
    }
    print(json.dumps(result))
    return 0
