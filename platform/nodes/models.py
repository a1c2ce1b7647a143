"""Nodes: a participant's machines. Hardware is reported by the peer itself; the API token
is shown once and only its sha256 is stored."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from peers.protocol import node_channel

TOKEN_PREFIX = "dfln"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Node(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)
    # Hardware, as reported by `python -m peers hw` (and refreshed by the peer on every hello).
    cpu = models.CharField(max_length=200, blank=True)
    cores = models.PositiveIntegerField(default=0)
    ram_gb = models.FloatField(default=0)
    gpu_name = models.CharField(max_length=200, blank=True)
    vram_gb = models.FloatField(default=0)
    cuda_capability = models.CharField(max_length=16, blank=True)
    hardware = models.JSONField(default=dict, blank=True)
    # Ed25519 public key (hex) the peer signs its weights with.
    public_key = models.CharField(max_length=64, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    # Whether viewers were last told this node is online (jobs.liveness announces the changes).
    online_announced = models.BooleanField(default=False, editable=False)
    # The latest stats its heartbeat carried (nodes.stats.parse_stats: displayed, never trusted).
    stats = models.JSONField(default=dict, blank=True, editable=False)
    stats_at = models.DateTimeField(null=True, blank=True, editable=False)
    token_id = models.CharField(max_length=16, unique=True, editable=False)
    token_hash = models.CharField(max_length=64, editable=False)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_node_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    # -- tokens -------------------------------------------------------------------------------
    def issue_token(self) -> str:
        """Give the node a new token and return it in clear (the only time it exists so)."""
        self.token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self.token_hash = hash_token(secret)
        return f"{TOKEN_PREFIX}_{self.token_id}_{secret}"

    @classmethod
    def authenticate(cls, token: str) -> "Node | None":
        try:
            prefix, token_id, secret = token.split("_", 2)
        except ValueError:
            return None
        if prefix != TOKEN_PREFIX or len(token_id) != 12 or not all(c in "0123456789abcdef" for c in token_id):
            return None  # malformed ids never reach the database (NUL bytes would make it raise)
        node = cls.objects.filter(token_id=token_id).select_related("owner").first()
        if node is None or not hmac.compare_digest(node.token_hash, hash_token(secret)):
            return None
        return node

    # -- hardware and liveness ----------------------------------------------------------------
    def apply_hardware(self, report: dict) -> None:
        """Copy a `peers hw` report onto the node (validated by nodes.hardware.parse_hardware)."""
        gpus = report.get("gpus") or []
        best: dict = max(gpus, key=lambda g: g.get("vram_gb", 0), default={})
        self.cpu = str(report.get("cpu", ""))[:200]
        self.cores = int(report.get("cores", 0))
        self.ram_gb = float(report.get("ram_gb", 0))
        self.gpu_name = str(best.get("name", ""))[:200]
        self.vram_gb = float(best.get("vram_gb", 0))
        self.cuda_capability = str(best.get("cuda_capability", ""))[:16]
        self.hardware = report

    @property
    def is_online(self) -> bool:
        return self.last_seen is not None and self.last_seen > self.online_cutoff()

    @property
    def channel(self) -> str:
        return node_channel(self.id)

    @staticmethod
    def online_cutoff():
        """Nodes last seen before this are offline."""
        return timezone.now() - timedelta(seconds=settings.NODE_ONLINE_SECONDS)

    @staticmethod
    def heartbeat_interval_s() -> float:
        """How often peers beat: a node that misses two beats in a row is offline."""
        return max(1.0, settings.NODE_ONLINE_SECONDS / 2)

    def touch(self) -> bool:
        """Record that the node was just heard from; True when that brings it back online (once:
        the compare-and-set means only one request announces it)."""
        self.last_seen = timezone.now()
        Node.objects.filter(pk=self.pk).update(last_seen=self.last_seen)
        if self.online_announced:  # as loaded with the request: nothing to announce (no second query)
            return False
        self.online_announced = bool(
            Node.objects.filter(pk=self.pk, online_announced=False).update(online_announced=True)
        )
        return self.online_announced


class NodeSample(models.Model):
    """One heartbeat's stats, for the node page's charts: the last SAMPLES_KEPT per node."""

    SAMPLES_KEPT = 720  # an hour at the default 5 s beat, six at 30 s

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    stats = models.JSONField(default=dict)

    class Meta:
        ordering = ["node_id", "at", "id"]

    @classmethod
    def record(cls, node: Node, stats: dict) -> "NodeSample":
        sample = cls.objects.create(node=node, stats=stats)
        newest_first = cls.objects.filter(node=node).order_by("-id").values_list("id", flat=True)
        dropped = list(newest_first[cls.SAMPLES_KEPT : cls.SAMPLES_KEPT + 1])
        if dropped:
            cls.objects.filter(node=node, id__lte=dropped[0]).delete()
        return sample
