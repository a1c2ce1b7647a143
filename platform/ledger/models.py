"""What the platform put on chain: the reward token deployment and one payout per (job, node)."""

from decimal import ROUND_DOWN, Decimal

from django.conf import settings
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


class Wallet(models.Model):
    """A custodial wallet on the test chain, one per account, so the whole flow (faucet, funding a
    job, receiving rewards) runs without a browser wallet. The key is encrypted at rest with
    WALLET_ENCRYPTION_KEY (ledger.wallets); the address is public."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="wallet")
    address = models.CharField(max_length=42, unique=True)
    key_ciphertext = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    faucet_at = models.DateTimeField(null=True, blank=True, help_text="Last test-token grant.")
    # Balances as the settlement worker last read them: web servers never reach the chain.
    tokens_wei = WeiField(default=0)
    gas_wei = WeiField(default=0)
    balances_at = models.DateTimeField(null=True, blank=True)
    faucet_note = models.CharField(max_length=200, blank=True, help_text="Why the last faucet request was refused.")

    def __str__(self) -> str:
        return f"wallet of {self.user}: {self.address}"

    @property
    def tokens_text(self) -> str:
        return tokens_text(int(self.tokens_wei))

    @property
    def gas_text(self) -> str:
        return tokens_text(int(self.gas_wei))


class Escrow(models.Model):
    """A job's reward budget, deposited by its creator into the TrainingLedger before the job may
    start. Nothing is ever paid beyond it; what is left when the job ends goes back (or is burnt)."""

    class Status(models.TextChoices):
        UNFUNDED = "unfunded", "Waiting for the creator's deposit"
        FUNDED = "funded", "Funded"
        CLOSED = "closed", "Closed (remainder returned)"
        FAILED = "failed", "Funding failed"

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="escrow")
    budget_wei = WeiField()
    config_hash = models.CharField(max_length=66, help_text="keccak256 of the job's configuration, on chain.")
    burn_remainder = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNFUNDED)
    funder = models.CharField(max_length=42, blank=True, help_text="The address registered as the job's creator.")
    browser_wallet = models.BooleanField(
        default=False, help_text="The creator deposits from their own (EIP-1193) wallet, not the custodial one."
    )
    registered_at = models.DateTimeField(null=True, blank=True, help_text="When the ledger registered the job.")
    fund_tx_hash = models.CharField(max_length=66, blank=True)
    funded_at = models.DateTimeField(null=True, blank=True)
    close_tx_hash = models.CharField(max_length=66, blank=True)
    refunded_wei = WeiField(default=0)
    burnt_wei = WeiField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"escrow of job {self.job_id}: {tokens_text(int(self.budget_wei))} tokens ({self.status})"

    @property
    def budget_text(self) -> str:
        return tokens_text(int(self.budget_wei))

    def as_event(self) -> dict:
        """Budget, committed, paid and returned, for the job page (tokens, rounded down)."""
        committed = sum(int(s.total_wei) for s in self.job.settlements.filter(status=TxStatus.CONFIRMED))
        paid = sum(int(p.amount_wei) for p in self.job.payouts.filter(status=TxStatus.CONFIRMED))
        return {
            "status": self.status,
            "budget": self.budget_text,
            "committed": tokens_text(committed),
            "paid": tokens_text(paid),
            "refunded": tokens_text(int(self.refunded_wei)),
            "burnt": tokens_text(int(self.burnt_wei)),
            "fund_tx_hash": self.fund_tx_hash,
            "error": self.error,
        }

    @classmethod
    def lets_start(cls, job) -> bool:
        """Whether the job may start: it pays no rewards, or its creator's deposit is on chain."""
        return not job.reward_per_round or cls.objects.filter(job=job, status=cls.Status.FUNDED).exists()


class TxStatus(models.TextChoices):
    """A transaction the platform signs, in the database before it is sent: pending (nothing
    signed), submitted (signed and stored, maybe broadcast), confirmed (mined), failed (reverted
    or refused, with the reason)."""

    PENDING = "pending", "Pending"
    SUBMITTED = "submitted", "Submitted"
    CONFIRMED = "confirmed", "Confirmed"
    FAILED = "failed", "Failed"


class SignedTx(models.Model):
    """Fields of a transaction driven by compare-and-set (ledger.settlement)."""

    status = models.CharField(max_length=16, choices=TxStatus.choices, default=TxStatus.PENDING)
    tx_hash = models.CharField(max_length=66, blank=True)
    raw_tx = models.TextField(blank=True, help_text="The signed transaction, kept until it is mined.")
    block_number = models.BigIntegerField(null=True, blank=True)
    gas_used = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class RoundSettlement(SignedTx):
    """One closed round's commit on chain: the roots of its contribution scores and rewards, built
    once from the stored reports and scores (immutable afterwards: the audit rebuilds them)."""

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="settlements")
    round = models.OneToOneField("jobs.Round", on_delete=models.PROTECT, related_name="settlement")
    number = models.PositiveIntegerField()
    model_hash = models.CharField(max_length=66)
    contribution_root = models.CharField(max_length=66)
    reward_root = models.CharField(max_length=66)
    total_wei = WeiField()
    scoring = models.CharField(max_length=16, help_text="Where the scores came from (ledger.rewards).")

    class Meta:
        ordering = ["job_id", "number"]

    def __str__(self) -> str:
        return f"job {self.job_id} round {self.number}: {tokens_text(int(self.total_wei))} tokens ({self.status})"


class PayoutBatch(SignedTx):
    """One payBatch transaction: up to BATCH_SIZE of a round's payouts."""

    settlement = models.ForeignKey(RoundSettlement, on_delete=models.CASCADE, related_name="batches")
    chunk = models.PositiveIntegerField()

    class Meta:
        ordering = ["settlement_id", "chunk"]
        constraints = [models.UniqueConstraint(fields=["settlement", "chunk"], name="one_batch_per_chunk")]


class Payout(models.Model):
    """A node's reward for one round: its leaf in the round's reward tree (index, address, amount)
    and the contribution score it was computed from. The (round, node) constraint and the
    contract's claimed bitmap make paying twice impossible."""

    Status = TxStatus

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="payouts")
    round = models.ForeignKey("jobs.Round", on_delete=models.PROTECT, related_name="payouts")
    settlement = models.ForeignKey(RoundSettlement, on_delete=models.CASCADE, related_name="payouts")
    batch = models.ForeignKey(PayoutBatch, on_delete=models.SET_NULL, null=True, blank=True, related_name="payouts")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="payouts")
    index = models.PositiveIntegerField(help_text="Leaf index in the round's reward tree.")
    address = models.CharField(max_length=42)
    amount_wei = WeiField()
    score_ppm = models.PositiveIntegerField(default=0, help_text="Contribution score, parts per million of the round.")
    status = models.CharField(max_length=16, choices=TxStatus.choices, default=TxStatus.PENDING)
    tx_hash = models.CharField(max_length=66, blank=True)
    block_number = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["round__number", "index"]
        constraints = [
            models.UniqueConstraint(fields=["round", "node"], name="one_payout_per_round_node"),
            models.UniqueConstraint(fields=["settlement", "index"], name="one_payout_per_leaf"),
        ]

    def __str__(self) -> str:
        return f"payout job {self.job_id} round {self.round_id} node {self.node_id}: {self.amount_text} ({self.status})"

    @property
    def amount_text(self) -> str:
        return tokens_text(int(self.amount_wei))

    @property
    def score_percent(self) -> str:
        return f"{self.score_ppm / 10_000:.2f} %"

    def as_event(self) -> dict:
        """What the job page shows of a payout (live frames and the first snapshot)."""
        return {
            "round": self.round.number,
            "node": self.node_id,
            "node_name": self.node.name,
            "amount": self.amount_text,
            "score_ppm": self.score_ppm,
            "status": self.status,
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
        }


class ContributionScore(models.Model):
    """A node's measured contribution in a round and the evidence it was computed from (the
    validator's numbers, or the rule used without one). Append-only audit evidence."""

    round = models.ForeignKey("jobs.Round", on_delete=models.PROTECT, related_name="scores")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="scores")
    score_ppm = models.PositiveIntegerField()
    source = models.CharField(max_length=16)
    evidence = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["round_id", "node_id"]
        constraints = [models.UniqueConstraint(fields=["round", "node"], name="one_score_per_round_node")]


class Stake(models.Model):
    """An operator's stake in a job: `Job.stake` tokens pulled from the owner's custodial wallet
    into the TrainingLedger (ledger.staking). The contract stakes per (job, operator address), so
    one stake covers all of an owner's nodes in the job. Slashes burn from it; what is left goes
    back after the job's escrow is closed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being placed"
        STAKED = "staked", "Staked"
        RELEASED = "released", "Returned"
        FAILED = "failed", "Not placed"

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="stakes")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stakes")
    address = models.CharField(max_length=42, help_text="The owner's custodial wallet, the operator on chain.")
    amount_wei = WeiField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    stake_tx_hash = models.CharField(max_length=66, blank=True)
    slashed_wei = WeiField(default=0)
    release_tx_hash = models.CharField(max_length=66, blank=True)
    released_wei = WeiField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job_id", "owner_id"]
        constraints = [models.UniqueConstraint(fields=["job", "owner"], name="one_stake_per_job_owner")]

    def __str__(self) -> str:
        return f"stake of {self.owner} in job {self.job_id}: {tokens_text(int(self.amount_wei))} tokens ({self.status})"

    @property
    def amount_text(self) -> str:
        return tokens_text(int(self.amount_wei))


class Flag(models.Model):
    """A peer caught attacking in a round, with the evidence (append-only audit evidence). A flagged
    (round, node) scores 0 for that round (ledger.rewards) and its owner's stake is slashed
    (ledger.staking.slash_flagged) with `evidence_hash` on chain."""

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="flags")
    round = models.ForeignKey("jobs.Round", on_delete=models.PROTECT, related_name="flags")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="flags")
    reason = models.CharField(max_length=200)
    evidence = models.JSONField(default=dict)
    evidence_hash = models.CharField(max_length=66, help_text="keccak256 of the flag's canonical JSON (staking).")
    created_at = models.DateTimeField(auto_now_add=True)
    slash_tx_hash = models.CharField(max_length=66, blank=True)
    slashed_wei = WeiField(default=0)
    slashed_at = models.DateTimeField(null=True, blank=True, help_text="When the slash was done (or found needless).")
    slash_note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["round_id", "node_id"]
        constraints = [models.UniqueConstraint(fields=["round", "node"], name="one_flag_per_round_node")]

    def __str__(self) -> str:
        return f"flag job {self.job_id} round {self.round_id} node {self.node_id}: {self.reason}"

    @property
    def slashed_text(self) -> str:
        return tokens_text(int(self.slashed_wei))


class Reputation(models.Model):
    """A node's standing in a job, from the validator's verdicts round after round
    (ledger.detection): the mean of its rounds' standings (-1 to 1; 1 before the first); below
    detection.FLAG_BELOW after detection.MIN_JUDGED rounds the node is flagged."""

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="reputations")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="reputations")
    value = models.FloatField(default=1.0)
    last_round = models.PositiveIntegerField(default=0)
    history = models.JSONField(default=list, blank=True, help_text="Each round's verdict and the reputation after it.")

    class Meta:
        ordering = ["job_id", "node_id"]
        constraints = [models.UniqueConstraint(fields=["job", "node"], name="one_reputation_per_job_node")]

    def __str__(self) -> str:
        return f"reputation of node {self.node_id} in job {self.job_id}: {self.value:.2f}"
