"""What the platform put on chain: the reward token deployment and one payout per (job, node)."""

from decimal import ROUND_DOWN, Decimal

from django.db import models

from .fields import WeiField

WEI_PER_TOKEN = 10**18
REWARD_TOKEN = "RewardToken"  # contract name of the ERC-20 that rewards are paid in
TOKEN_PLACES = 6  # decimals shown to people; the chain and the database keep every wei


def tokens_amount(wei: int) -> Decimal:
    """Wei as tokens, rounded down to TOKEN_PLACES decimals (never more than was paid): the one
    rounding of token amounts that pages, live frames and the demo's summary all use."""
    return (Decimal(int(wei)) / WEI_PER_TOKEN).quantize(Decimal(1).scaleb(-TOKEN_PLACES), rounding=ROUND_DOWN)


def tokens_text(wei: int) -> str:
    """tokens_amount for people: trailing zeros dropped, thousands separated."""
    whole, _, fraction = f"{tokens_amount(wei):,.{TOKEN_PLACES}f}".partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


class ContractDeployment(models.Model):
    """Where a contract lives on a given chain (redeployed when the chain lost it)."""

    name = models.CharField(max_length=64)
    chain_id = models.BigIntegerField()
    address = models.CharField(max_length=42)
    tx_hash = models.CharField(max_length=66)
    block_number = models.BigIntegerField()
    bytecode_sha256 = models.CharField(max_length=64)
    deployed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "chain_id"], name="unique_deployment_per_chain")]

    def __str__(self) -> str:
        return f"{self.name}@{self.chain_id}:{self.address}"

    @classmethod
    def reward_tokens(cls):
        """Where the reward token lives, newest deployment first (one per chain)."""
        return cls.objects.filter(name=REWARD_TOKEN).order_by("-deployed_at")


class Payout(models.Model):
    """A reward transfer. The (job, node) constraint makes paying twice impossible at the row level.
    The transfer is signed and stored (raw_tx, tx_hash) before it is broadcast, so a retry after a
    crash re-broadcasts the very same transaction (same nonce: it can be mined once at most)
    instead of creating a second one."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        CONFIRMED = "confirmed", "Confirmed"
        FAILED = "failed", "Failed"

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="payouts")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="payouts")
    address = models.CharField(max_length=42, blank=True)
    amount_wei = WeiField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    tx_hash = models.CharField(max_length=66, blank=True)
    raw_tx = models.TextField(blank=True, help_text="The signed transaction, kept until it is mined.")
    block_number = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["job", "node"], name="one_payout_per_job_node")]

    def __str__(self) -> str:
        return f"payout {self.job_id}/{self.node_id}: {self.amount_text} tokens ({self.status})"

    @property
    def amount_text(self) -> str:
        return tokens_text(int(self.amount_wei))

    def as_event(self) -> dict:
        """What the job page shows of a payout (live frames and the first snapshot)."""
        return {
            "node": self.node_id,
            "node_name": self.node.name,
            "amount": self.amount_text,
            "status": self.status,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
        }
