"""Custodial test wallets: one per account, its key encrypted at rest with WALLET_ENCRYPTION_KEY,
so creators fund jobs and participants receive rewards on the test chain without a browser
wallet. The faucet gives test tokens (minted by the operator) and gas to any wallet, at most
once per FAUCET_EVERY_S, and only on a test chain."""

from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_account import Account

from ledger.models import WEI_PER_TOKEN, Wallet

FAUCET_GAS_WEI = 10**18  # 1 test ether pays for thousands of approve/fund/claim transactions
MIN_GAS_WEI = 10**17


class FaucetRefused(Exception):
    """A faucet request that is not granted (too soon, or not a test chain), with the reason."""


def _fernet() -> Fernet:
    key = settings.WALLET_ENCRYPTION_KEY
    if not key:
        raise ImproperlyConfigured("WALLET_ENCRYPTION_KEY is not set: custodial wallet keys are encrypted with it.")
    return Fernet(key.encode())


def wallet_for(user) -> Wallet:
    """The user's custodial wallet, created on first use."""
    existing = Wallet.objects.filter(user=user).first()
    if existing:
        return existing
    account = Account.create()
    ciphertext = _fernet().encrypt(bytes(account.key)).decode()
    try:
        with transaction.atomic():
            return Wallet.objects.create(user=user, address=account.address, key_ciphertext=ciphertext)
    except IntegrityError:  # created by a concurrent request
        return Wallet.objects.get(user=user)


def private_key(wallet: Wallet) -> str:
    """The wallet's key, decrypted for signing; never stored or shown anywhere else."""
    try:
        return "0x" + _fernet().decrypt(wallet.key_ciphertext.encode()).hex()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a custodial wallet key does not decrypt: WALLET_ENCRYPTION_KEY changed since it was made"
        ) from None


def payout_address(user) -> str:
    """Where the user's rewards go: the address set on the profile, else the custodial wallet."""
    from accounts.models import Profile

    return Profile.for_user(user).payout_address or wallet_for(user).address


def next_faucet_at(wallet: Wallet):
    if wallet.faucet_at is None:
        return None
    return wallet.faucet_at + timedelta(seconds=settings.FAUCET_EVERY_S)


def faucet(user, chain) -> int:
    """Mint FAUCET_TOKENS test tokens to the user's wallet (and gas when it runs low); returns the
    wei granted. Refused off test chains and more often than FAUCET_EVERY_S."""
    if chain.chain_id not in settings.TEST_CHAIN_IDS:
        raise FaucetRefused("the faucet only runs on a test chain")
    wallet = wallet_for(user)
    with transaction.atomic():
        locked = Wallet.objects.select_for_update().get(pk=wallet.pk)
        due = next_faucet_at(locked)
        if due is not None and due > timezone.now():
            raise FaucetRefused(f"test tokens again from {due:%H:%M:%S} UTC")
        locked.faucet_at = timezone.now()
        locked.save(update_fields=["faucet_at"])
    amount = settings.FAUCET_TOKENS * WEI_PER_TOKEN
    chain.mint(wallet.address, amount)
    if chain.gas_balance(wallet.address) < MIN_GAS_WEI:
        chain.send_gas(wallet.address, FAUCET_GAS_WEI)
    return amount


def refresh_balances(wallet: Wallet, chain) -> Wallet:
    """Read the wallet's balances from the chain into its row (pages show the row)."""
    wallet.tokens_wei, wallet.gas_wei = chain.balance_of(wallet.address), chain.gas_balance(wallet.address)
    wallet.balances_at = timezone.now()
    wallet.save(update_fields=["tokens_wei", "gas_wei", "balances_at"])
    return wallet
