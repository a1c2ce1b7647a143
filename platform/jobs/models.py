"""Jobs, consent, cohorts, rounds and what peers reported. Every state change is a row first;
websockets and the chain are told after."""

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from peers.protocol import MODEL_ZOO, JobConfig

# The peer side implements these names (peers.models, peers.topology, peers.rules,
# peers.wire.compression, peers.training.LR_SCHEDULES); tests/test_job_options.py keeps both sides in step.
# The model zoo is plain data in peers.protocol (no torch here): each model's name, label, description
# (the job form shows it beside the label) and what data it takes.
MODEL_CHOICES = [(name, info.label) for name, info in MODEL_ZOO.items()]
TOPOLOGY_CHOICES = [
    ("ring", "Ring (two neighbours each)"),
    ("torus", "2-D torus (four neighbours)"),
    ("expander", "Random regular expander"),
    ("complete", "Complete graph (everyone averages with everyone)"),
    ("star", "Star (centralized baseline: one aggregator peer)"),
    ("dynamic", "Dynamic expander (redrawn every k rounds, slow links cut)"),
]
RULE_CHOICES = [
    ("mean", "Weighted mean (Metropolis-Hastings mixing)"),
    ("median", "Coordinate-wise median"),
    ("trimmed_mean", "Trimmed mean (20% per side)"),
    ("krum", "Krum"),
    ("multi_krum", "Multi-Krum"),
    ("bulyan", "Bulyan"),
    ("norm_clip", "Norm clipping, then mean"),
    ("clipped_gossip", "Clipped gossip (each neighbour's pull clipped; f farthest)"),
    # Centralized baselines on a star (peers.star): the star's centre averages everyone's model
    # and sends the global one back. The form asks for the star topology with them.
    ("fedavg", "FedAvg (centralized baseline on a star)"),
    ("fedprox", "FedProx (centralized baseline on a star, proximal term mu)"),
    ("fedadam", "FedAdam (centralized baseline on a star, server Adam)"),
]
COMPRESSION_CHOICES = [
    ("none", "None (float32)"),
    ("fp16", "float16"),
    ("bf16", "bfloat16"),
    ("int8", "int8 quantization"),
    ("topk:0.1", "Top-10% sparsification with error feedback"),
    ("topk:0.01", "Top-1% sparsification with error feedback"),
]
LR_SCHEDULE_CHOICES = [("cosine", "Cosine decay"), ("constant", "Constant")]
DATASET_CHOICES = [
    ("digits", "Handwritten digits (8x8, 10 classes)"),
    ("synthetic", "FedProx Synthetic (60 features, 10 classes)"),
]
# What a sample of each task is, as a dataset of that task declares it (datasets.models.schema_problem):
# an image task gives channels, height and width, a tabular one its features. The model zoo's image
# models (peers.protocol.MODEL_ZOO) need an image task.
DATASET_SCHEMAS: dict[str, dict[str, int]] = {
    "digits": {"channels": 1, "height": 8, "width": 8, "classes": 10},
    "synthetic": {"features": 60, "classes": 10},
}


def image_shape(task: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of an image task's samples; None for a tabular task."""
    schema = DATASET_SCHEMAS[task]
    if "channels" not in schema:
        return None
    return schema["channels"], schema["height"], schema["width"]


def _features(task: str) -> int:
    shape = image_shape(task)
    return shape[0] * shape[1] * shape[2] if shape else DATASET_SCHEMAS[task]["features"]


DATASET_SHAPES = {task: (_features(task), s["classes"]) for task, s in DATASET_SCHEMAS.items()}  # (features, classes)


def new_seed() -> int:
    return secrets.randbelow(2**31)


class Job(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        WAITING = "waiting", "Recruiting"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Completed, settling"
        SETTLED = "settled", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # A draft is not recruiting yet; these may still be cancelled (a running job at its round's end)
    # and take consent.
    OPEN_STATUSES = (Status.DRAFT, Status.WAITING, Status.RUNNING)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    is_public = models.BooleanField(
        default=True,
        help_text="Listed for every participant. Private jobs are seen by their owner and their consenting nodes' owners.",
    )
    # What is trained, and on which data schema.
    dataset = models.CharField(max_length=32, choices=DATASET_CHOICES, default="digits")
    model = models.CharField(max_length=32, choices=MODEL_CHOICES, default="mlp")
    hidden = models.PositiveIntegerField(default=64)
    # How.
    rounds = models.PositiveIntegerField(default=5)
    local_steps = models.PositiveIntegerField(default=20)
    lr = models.FloatField(default=0.1)
    lr_schedule = models.CharField(
        max_length=16,
        choices=LR_SCHEDULE_CHOICES,
        default="cosine",
        help_text="Cosine: from the learning rate down to 1/rounds of it in the last round.",
    )
    batch_size = models.PositiveIntegerField(default=32)
    topology = models.CharField(max_length=32, choices=TOPOLOGY_CHOICES, default="ring")
    degree = models.PositiveIntegerField(default=4, help_text="Neighbours per peer (expander and dynamic).")
    redraw_every = models.PositiveIntegerField(default=5, help_text="Rounds between redraws (dynamic).")
    rule = models.CharField(max_length=32, choices=RULE_CHOICES, default="mean")
    byzantine_f = models.PositiveIntegerField(
        default=0, help_text="Faulty neighbours to tolerate (Krum, Multi-Krum, Bulyan, clipped gossip)."
    )
    clip_norm = models.FloatField(default=10.0, help_text="L2 bound (norm clipping).")
    prox_mu = models.FloatField(
        default=0.01, help_text="FedProx: weight of the proximal term pulling local training towards the global model."
    )
    server_lr = models.FloatField(default=0.01, help_text="FedAdam: the aggregator's Adam step size.")
    compression = models.CharField(max_length=16, choices=COMPRESSION_CHOICES, default="none")
    # Differential privacy (peers.privacy): off while dp_noise is 0.
    dp_level = models.CharField(
        max_length=8,
        choices=[("client", "Client-level (noise on each round's update)"), ("sample", "Sample-level (DP-SGD)")],
        default="client",
    )
    dp_noise = models.FloatField(default=0.0, help_text="Noise multiplier; 0 turns differential privacy off.")
    dp_clip = models.FloatField(
        default=1.0, help_text="L2 bound of a peer's round update (client-level) or of a sample's gradient (DP-SGD)."
    )
    dp_epsilon = models.FloatField(
        default=0.0,
        help_text="Privacy budget: peers train no round past this epsilon (at delta 1e-5); 0: none. "
        "Choose rounds the budget covers: a job ends when its peers stop.",
    )
    secure_aggregation = models.BooleanField(
        default=False,
        help_text="Peers send masked models: each peer learns only the sum of its neighbours' "
        "models. No compression and no validator. Gossip: the mean rule and a topology giving every peer at "
        "least 3 neighbours with equal mixing weights (e.g. complete, or an expander of degree 3 or more). "
        "FedAvg, FedProx or FedAdam: a star of at least 4 peers, whose centre learns only the leaves' sum.",
    )
    secagg_tree_group = models.PositiveSmallIntegerField(
        default=0,
        help_text="With secure aggregation and FedAvg, FedProx or FedAdam on the star: 0 for the plain star, "
        "or a group size g >= 3 for an aggregation tree. Peers are cut into groups of about g by node id, each "
        "with an aggregator that learns only its group's sum; the aggregators mask those sums for the star's "
        "centre, which learns only the total. Needs at least 3 groups of at least 3 peers.",
    )
    secagg_dropout = models.FloatField(
        default=0.5,
        validators=[MinValueValidator(0.01), MaxValueValidator(0.5)],
        help_text="With secure aggregation: the share of a peer's senders (or a group's members) that may "
        "vanish after sending, strictly fewer than it, with their sum still unmasked (at most 0.5). Lower: "
        "more of them would have to collude with the recipient to unmask one peer's model, fewer dropouts "
        "tolerated.",
    )
    num_peers = models.PositiveIntegerField(default=4)
    round_timeout_s = models.PositiveIntegerField(default=120)
    # Who may join.
    min_vram_gb = models.FloatField(default=0)
    require_cuda = models.BooleanField(default=False)
    # Rewards: one pool of whole tokens per completed round, split by measured contribution
    # (ledger.rewards), out of the budget the creator deposited (ledger.escrow) before the start.
    reward_per_round = models.PositiveIntegerField(default=0)
    burn_unspent = models.BooleanField(
        default=False, help_text="Burn what is left of the budget when the job ends, instead of returning it to you."
    )
    stake = models.PositiveIntegerField(
        default=0, help_text="Tokens each node's owner stakes to join; slashed when the node is caught attacking."
    )
    # Contribution scoring: a node of the creator's that holds validation data (never shared),
    # receives every peer's model each round and scores it (peers.scoring). Without one, a
    # round's pool is split evenly between the reporters whose models did not diverge.
    validator = models.ForeignKey(
        "nodes.Node",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="validated_jobs",
        help_text="Your node that scores each round's models on its own validation data.",
    )
    model_access = models.CharField(
        max_length=16,
        choices=[
            ("creator", "Only me"),
            ("contributors", "Me and the contributing nodes' owners"),
            ("public", "Everyone"),
        ],
        default="creator",
        help_text="Who may download the final model (recorded in the on-chain model registry).",
    )
    seed = models.BigIntegerField(default=new_seed)

    # Links (pairs of node ids) whose weights missed a deadline; dynamic topologies avoid them.
    cut_links = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    current_round = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failure = models.TextField(blank=True)
    cancel_requested = models.BooleanField(
        default=False, help_text="The creator cancelled the running job: it ends when its current round closes."
    )
    ended_early = models.CharField(
        max_length=200, blank=True, help_text="Why a finished job ran fewer rounds than planned."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def shape(self) -> tuple[int, int]:
        return DATASET_SHAPES[self.dataset]

    def config(self) -> JobConfig:
        """Hyper-parameters every peer of the job trains with (sent in each round plan)."""
        features, classes = self.shape
        return JobConfig(
            dataset=self.dataset,
            model=self.model,
            hidden=self.hidden,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            seed=self.seed,
            num_features=features,
            num_classes=classes,
            rule=self.rule,
            rule_params=self.rule_params(),
            compression=self.compression,
            dp_level=self.dp_level,
            dp_noise=self.dp_noise,
            dp_clip=self.dp_clip,
            dp_epsilon=self.dp_epsilon,
            secure_aggregation=self.secure_aggregation,
            secagg_tree_group=self.secagg_tree_group,
            secagg_dropout=self.secagg_dropout,
        )

    @property
    def budget_tokens(self) -> int:
        """Whole tokens the creator deposits before the job starts: every round's pool."""
        return self.reward_per_round * self.rounds

    @property
    def ended(self) -> bool:
        return self.status in (self.Status.FINISHED, self.Status.SETTLED, self.Status.FAILED, self.Status.CANCELLED)

    def spectral_gap(self) -> float | None:
        """1 - |lambda_2| of the job's first-round mixing matrix: how fast peers reach consensus."""
        from peers import spectral, topology

        try:
            positions = {i: i for i in range(self.num_peers)}
            return spectral.spectral_gap(
                topology.build(self.topology, self.num_peers, **self.topology_params(1, positions))
            )
        except ValueError:
            return None

    def rule_params(self) -> dict:
        if self.rule in ("krum", "multi_krum", "bulyan", "clipped_gossip"):
            return {"f": self.byzantine_f}
        if self.rule == "trimmed_mean":
            return {"trim": 0.2}
        if self.rule == "norm_clip":
            return {"max_norm": self.clip_norm}
        if self.rule == "fedprox":
            return {"mu": self.prox_mu}
        if self.rule == "fedadam":
            return {"server_lr": self.server_lr}
        return {}

    def topology_params(self, round_number: int, positions: dict[int, int]) -> dict:
        """Parameters of peers.topology.build for this job's graph in a given round."""
        if self.topology == "expander":
            return {"d": self.degree, "seed": self.seed}
        if self.topology == "dynamic":
            cut = [(positions[a], positions[b]) for a, b in self.cut_links if a in positions and b in positions]
            return {
                "base": "random_regular",
                "d": self.degree,
                "seed": self.seed,
                "round": round_number,
                "every_k": self.redraw_every,
                "cut_links": cut,
            }
        return {}

    @classmethod
    def visible_to(cls, user):
        if not user.is_authenticated:
            return cls.objects.none()
        if user.is_staff:
            return cls.objects.all()
        published = Q(is_public=True) & ~Q(status=cls.Status.DRAFT)  # a draft is its creator's until published
        return cls.objects.filter(published | Q(owner=user) | Q(consents__node__owner=user)).distinct()

    def can_view(self, user) -> bool:
        return Job.visible_to(user).filter(pk=self.pk).exists()

    def node_is_eligible(self, node) -> bool:
        """Hardware needs of the job."""
        if self.require_cuda and not node.cuda_capability:
            return False
        return node.vram_gb >= self.min_vram_gb


class Consent(models.Model):
    """Append-only consent record: the latest row for (job, node) is the current state. A grant
    names the node's dataset it covers (null on rows from before datasets were declared and for
    nodes that declare none) and may expire: an expired grant counts as revoked."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="consents")
    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="consents")
    granted = models.BooleanField()
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    scope = models.CharField(max_length=200, default="train on local data; share weights with the job's peers")
    dataset = models.ForeignKey(
        "datasets.Dataset", null=True, blank=True, on_delete=models.PROTECT, related_name="consents"
    )
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"job {self.job_id} node {self.node_id}: {'granted' if self.granted else 'withdrawn'}"

    @property
    def stands(self) -> bool:
        """A grant that has not expired (the latest row's answer is the node's consent)."""
        return self.granted and (self.expires_at is None or self.expires_at > timezone.now())

    @classmethod
    def latest(cls, job, node) -> "Consent | None":
        return cls.objects.filter(job=job, node=node).order_by("-at", "-id").first()

    @classmethod
    def current(cls, job, node) -> bool:
        latest = cls.latest(job, node)
        return bool(latest and latest.stands)

    @classmethod
    def consenting_nodes(cls, job):
        from nodes.models import Node

        ids = [n.id for n in Node.objects.filter(consents__job=job).distinct() if cls.current(job, n)]
        return Node.objects.filter(id__in=ids).order_by("id")


class CohortMember(models.Model):
    """A node chosen for the job when it started; its position fixes its ring neighbours."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="cohort")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="memberships")
    position = models.PositiveIntegerField()
    # Planned rounds in a row this member did not report in; at MAX_MISSED_ROUNDS it is left out
    # of later rounds until its peer says hello again.
    missed_rounds = models.PositiveIntegerField(default=0)

    MAX_MISSED_ROUNDS = 2

    @property
    def plannable(self) -> bool:
        """Whether the next round should count on this member (its consent is checked apart)."""
        return self.node.is_online and self.missed_rounds < self.MAX_MISSED_ROUNDS

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "node"], name="unique_member"),
            models.UniqueConstraint(fields=["job", "position"], name="unique_position"),
        ]


class Round(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="round_set")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    mean_loss = models.FloatField(null=True, blank=True)
    mean_accuracy = models.FloatField(null=True, blank=True)
    reporters = models.PositiveIntegerField(default=0)
    # Node ids the round was planned for, in position order (None: rounds from before this field,
    # planned for every consenting member).
    members = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="unique_round")]

    def __str__(self) -> str:
        return f"{self.job} round {self.number}"


class PeerReport(models.Model):
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="reports")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="reports")
    received_at = models.DateTimeField(auto_now_add=True)
    train_loss = models.FloatField()
    eval_loss = models.FloatField()
    accuracy = models.FloatField()
    samples = models.PositiveIntegerField()
    eval_samples = models.PositiveIntegerField()
    model_hash = models.CharField(max_length=64)
    bytes_sent = models.PositiveBigIntegerField(default=0)
    bytes_received = models.PositiveBigIntegerField(default=0)
    duration_s = models.FloatField(default=0)
    rejected = models.JSONField(default=list, blank=True)
    diverged = models.BooleanField(
        default=False, help_text="The peer's model or losses were not finite; its numbers mean nothing."
    )
    epsilon = models.FloatField(default=0.0, help_text="Privacy the peer had spent in the job (0 without DP).")
    budget_spent = models.BooleanField(
        default=False, help_text="The job's privacy budget allows this peer no further round."
    )
    consensus_distance = models.FloatField(default=0.0, help_text="L2 norm of (mixed - trained) model, as reported.")
    model_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Dense size of the weights the peer sent this round (all sends), as reported."
    )

    class Meta:
        ordering = ["round__number", "node_id"]
        constraints = [models.UniqueConstraint(fields=["round", "node"], name="one_report_per_round")]

    def __str__(self) -> str:
        return f"job {self.round.job_id} round {self.round.number} node {self.node_id}"

    def as_event(self) -> dict:
        return {
            "round": self.round.number,
            "node": self.node_id,
            "node_name": self.node.name,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
            "accuracy": self.accuracy,
            "samples": self.samples,
            "rejected": self.rejected,
            "diverged": self.diverged,
            "epsilon": self.epsilon,
            "budget_spent": self.budget_spent,
            "model_hash": self.model_hash,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "duration_s": self.duration_s,
            "consensus_distance": self.consensus_distance,
            "model_bytes": self.model_bytes,
        }


class ValidatorReport(models.Model):
    """The job's validator's scores of a round, as the evidence they are computed from
    (peers.evidence): stored as received, recomputed before anything is paid on them, and by the
    audit. Append-only."""

    round = models.OneToOneField(Round, on_delete=models.PROTECT, related_name="validator_report")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="validator_reports")
    evidence = models.JSONField()
    consensus_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"validator scores of {self.round}"
