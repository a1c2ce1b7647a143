"""The chain, and the only module that imports web3. One code path for eth-tester (in process)
and JSON-RPC nodes such as anvil: transactions are always built, signed with the operator key
here and sent raw."""

import hashlib
import json
import threading
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from eth_typing import ChecksumAddress, HexStr
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import TransactionNotFound

from ledger.locks import signer_lock
from ledger.models import REWARD_TOKEN, ContractDeployment

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
TOKEN_CONTRACT = REWARD_TOKEN
LEDGER_CONTRACT = "TrainingLedger"
REGISTRY_CONTRACT = "ModelRegistry"
TOKEN_NAME, TOKEN_SYMBOL = "DFL Reward", "DFLR"
TREASURY_WEI = 10**9 * 10**18  # minted to the operator when the token is deployed
RECEIPT_TIMEOUT_S = 120


class TransactionFailed(RuntimeError):
    """A transaction was mined but reverted (receipt status 0)."""


def load_artifact(name: str) -> dict:
    return json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())


class Chain:
    _instances: dict[str, "Chain"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, w3: Web3, private_key: str):
        self.w3 = w3
        self._account = w3.eth.account.from_key(private_key)
        self.chain_id: int = w3.eth.chain_id
        self._send_lock = threading.Lock()  # one nonce at a time within this process
        self._deploy_lock = threading.RLock()  # the ledger's deployment deploys the token first

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_settings(cls) -> "Chain":
        """The process-wide instance for settings.CHAIN_RPC_URL."""
        url = settings.CHAIN_RPC_URL
        with cls._instances_lock:
            if url not in cls._instances:
                cls._instances[url] = cls._connect(url)
            return cls._instances[url]

    @classmethod
    def _connect(cls, url: str) -> "Chain":
        if url == "eth-tester":
            provider = EthereumTesterProvider()
            w3 = Web3(provider)
            # The first funded test account; eth-tester's backend holds its private key.
            key = provider.ethereum_tester.backend.account_keys[0].to_hex()  # type: ignore[union-attr]
            return cls(w3, key)
        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))
        key = settings.CHAIN_PRIVATE_KEY
        if not key:  # no fallback to a well-known key: anyone could spend what it holds
            raise ImproperlyConfigured(
                f"CHAIN_PRIVATE_KEY is not set: the operator key that pays rewards on {url} must come from the environment."
            )
        return cls(w3, key)

    @property
    def operator_address(self) -> ChecksumAddress:
        return self._account.address

    # -- contracts ------------------------------------------------------------------------------
    def token(self):
        """The RewardToken on this chain, deployed (and the treasury minted) when missing."""
        return self._contract(TOKEN_CONTRACT, lambda: (TOKEN_NAME, TOKEN_SYMBOL, self.operator_address))

    def ledger(self):
        """The TrainingLedger (escrow, round commits, payouts, stakes); the operator coordinates."""
        return self._contract(LEDGER_CONTRACT, lambda: (self.token().address, self.operator_address))

    def registry(self):
        """The ModelRegistry: who may use a job's final model."""
        return self._contract(REGISTRY_CONTRACT, lambda: ())

    def _contract(self, name: str, constructor_args):
        """A contract of ours on this chain, deployed when the chain lacks it or its code changed."""
        artifact = load_artifact(name)
        code_sha = hashlib.sha256(bytes.fromhex(artifact["bytecode"][2:])).hexdigest()
        with self._deploy_lock:
            row = ContractDeployment.objects.filter(name=name, chain_id=self.chain_id).first()
            if (
                row is None
                or row.bytecode_sha256 != code_sha
                or not self.w3.eth.get_code(Web3.to_checksum_address(row.address))
            ):
                row = self._deploy(name, artifact, constructor_args(), code_sha)
        return self.w3.eth.contract(address=Web3.to_checksum_address(row.address), abi=artifact["abi"])

    def _deploy(self, name: str, artifact: dict, args: tuple, code_sha: str) -> ContractDeployment:
        with signer_lock():  # any process may be first to need a contract: its nonce is the settler's too
            row = ContractDeployment.objects.filter(name=name, chain_id=self.chain_id, bytecode_sha256=code_sha).first()
            if row is not None and self.w3.eth.get_code(Web3.to_checksum_address(row.address)):
                return row  # another process deployed it while this one waited
            return self._deploy_unlocked(name, artifact, args, code_sha)

    def _deploy_unlocked(self, name: str, artifact: dict, args: tuple, code_sha: str) -> ContractDeployment:
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        tx_hash = self._send(factory.constructor(*args))
        receipt = self.wait(tx_hash)
        address = receipt["contractAddress"]
        if name == TOKEN_CONTRACT:
            token = self.w3.eth.contract(address=address, abi=artifact["abi"])
            self.wait(self._send(token.functions.mint(self.operator_address, TREASURY_WEI)))
        row, _ = ContractDeployment.objects.update_or_create(
            name=name,
            chain_id=self.chain_id,
            defaults={
                "address": address,
                "tx_hash": tx_hash,
                "block_number": receipt["blockNumber"],
                "bytecode_sha256": code_sha,
            },
        )
        return row

    # -- transactions ---------------------------------------------------------------------------
    def _send(self, call) -> str:
        """Build, sign with the operator key and send a contract call or constructor."""
        tx_hash, raw = self.sign_call(call)
        self.broadcast(raw)
        return tx_hash

    def sign_call(self, call, gas: int | None = None) -> tuple[str, str]:
        """(tx hash, raw signed transaction hex) of an operator call, not yet broadcast."""
        with self._send_lock:
            nonce = self.w3.eth.get_transaction_count(self.operator_address, "pending")
            params = {"from": self.operator_address, "nonce": nonce, "chainId": self.chain_id}
            if gas is not None:
                params["gas"] = gas
            tx = call.build_transaction(params)
            signed = self._account.sign_transaction(tx)
        return signed.hash.to_0x_hex(), signed.raw_transaction.to_0x_hex()

    def send_as(self, private_key: str, call):
        """Sign a call with another account's key (a custodial wallet), send it, wait for it."""
        account = self.w3.eth.account.from_key(private_key)
        nonce = self.w3.eth.get_transaction_count(account.address, "pending")
        tx = call.build_transaction({"from": account.address, "nonce": nonce, "chainId": self.chain_id})
        signed = account.sign_transaction(tx)
        self.broadcast(signed.raw_transaction.to_0x_hex())
        return self.wait(signed.hash.to_0x_hex())

    def transfer(self, to: str, amount_wei: int) -> str:
        """Send `amount_wei` reward-token wei from the operator to `to`; returns the tx hash."""
        return self._send(self.token().functions.transfer(Web3.to_checksum_address(to), int(amount_wei)))

    def mint(self, to: str, amount_wei: int):
        """Test tokens for a wallet (the faucet): the operator holds the minter role."""
        return self.wait(self._send(self.token().functions.mint(Web3.to_checksum_address(to), int(amount_wei))))

    def send_gas(self, to: str, wei: int):
        """Native currency for a custodial wallet's gas (test chains only, via the faucet)."""
        with self._send_lock:
            nonce = self.w3.eth.get_transaction_count(self.operator_address, "pending")
            tx = {
                "from": self.operator_address,
                "to": Web3.to_checksum_address(to),
                "value": int(wei),
                "nonce": nonce,
                "chainId": self.chain_id,
                "gas": 21000,
                "gasPrice": self.w3.eth.gas_price,
            }
            signed = self._account.sign_transaction(tx)
        self.broadcast(signed.raw_transaction.to_0x_hex())
        return self.wait(signed.hash.to_0x_hex())

    def gas_balance(self, address: str) -> int:
        return self.w3.eth.get_balance(Web3.to_checksum_address(address))

    def broadcast(self, raw_tx: str) -> None:
        """Send a signed transaction; sending one the node already has is harmless."""
        try:
            self.w3.eth.send_raw_transaction(HexStr(raw_tx))
        except Exception as exc:
            if "known" not in str(exc).lower():  # "already known": a re-broadcast
                raise

    def nonce_spent(self, raw_tx: str) -> bool:
        """Whether the operator's nonce of this transaction was used by a mined transaction."""
        return self.w3.eth.get_transaction_count(self.operator_address, "latest") > self._raw_nonce(raw_tx)

    @staticmethod
    def _raw_nonce(raw_tx: str) -> int:
        import rlp
        from eth_account.typed_transactions import TypedTransaction
        from hexbytes import HexBytes

        data = HexBytes(raw_tx)
        if data[0] < 0x80:  # typed (EIP-2718) transaction
            return TypedTransaction.from_bytes(data).as_dict()["nonce"]
        return int.from_bytes(rlp.decode(bytes(data))[0], "big")

    def wait(self, tx_hash: str, timeout: float = RECEIPT_TIMEOUT_S):
        """The receipt once mined; raises TransactionFailed if it reverted."""
        receipt = self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout, poll_latency=0.1)
        if receipt["status"] != 1:
            raise TransactionFailed(f"transaction {tx_hash} reverted")
        return receipt

    def receipt(self, tx_hash: str):
        """The receipt if the transaction is mined, else None."""
        try:
            return self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
        except TransactionNotFound:
            return None

    def balance_of(self, address: str) -> int:
        return self.token().functions.balanceOf(Web3.to_checksum_address(address)).call()
