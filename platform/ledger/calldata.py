"""The two transactions a creator's own (EIP-1193) wallet sends to deposit a job's budget:
`approve(ledger, budget)` on the token, then `fundJob(jobId, configHash, budget)` on the ledger.
Encoded here (eth_abi, no chain access: web processes never reach the chain); the wallet signs
and sends them, and the settlement worker then finds the deposit on chain."""

from eth_abi import encode
from eth_utils import keccak

from ledger.models import REWARD_TOKEN, ContractDeployment, Escrow

LEDGER = "TrainingLedger"


def _call(signature: str, types: list[str], values: list) -> str:
    return "0x" + (keccak(text=signature)[:4] + encode(types, values)).hex()


def deposit_calls(escrow: Escrow) -> dict | None:
    """Chain id and the transactions, or None while the contracts are not deployed yet."""
    ledger = ContractDeployment.objects.filter(name=LEDGER).order_by("-deployed_at").first()
    if ledger is None:
        return None
    token = ContractDeployment.objects.filter(name=REWARD_TOKEN, chain_id=ledger.chain_id).first()
    if token is None:
        return None
    budget = int(escrow.budget_wei)
    config = bytes.fromhex(escrow.config_hash[2:])
    return {
        "chain_id": ledger.chain_id,
        "calls": [
            {
                "to": token.address,
                "data": _call("approve(address,uint256)", ["address", "uint256"], [ledger.address, budget]),
            },
            {
                "to": ledger.address,
                "data": _call(
                    "fundJob(uint256,bytes32,uint256)",
                    ["uint256", "bytes32", "uint256"],
                    [escrow.job_id, config, budget],
                ),
            },
        ],
    }
