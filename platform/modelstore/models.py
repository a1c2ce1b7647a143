"""A job's final model: an opaque safetensors blob stored by its SHA-256 (the platform never
decodes it), registered in the on-chain ModelRegistry by the settlement worker, and the grants of
access to it. The grant rows mirror the chain: the settler writes `granted` only once the grant's
transaction is mined, and the web (which never reaches the chain) serves the blob by them."""

from pathlib import Path

from django.conf import settings
from django.db import models


class FinalModel(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Registering on chain"
        REGISTERED = "registered", "Registered"
        FAILED = "failed", "Registration failed"

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="final_model")
    sha256 = models.CharField(max_length=64, help_text="Hex SHA-256 of the blob: its name on disk and on chain.")
    size = models.BigIntegerField()
    path = models.CharField(max_length=200, help_text="File name under MODEL_STORE_DIR.")
    uploaded_by = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="uploaded_models")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    registry_model_id = models.PositiveBigIntegerField(null=True, blank=True)
    register_tx_hash = models.CharField(max_length=66, blank=True)
    register_raw_tx = models.TextField(blank=True, help_text="The signed registerModel, kept until it is mined.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"final model of job {self.job_id}: {self.sha256[:12]} ({self.status})"

    @property
    def file(self) -> Path:
        return Path(settings.MODEL_STORE_DIR) / self.path

    @property
    def is_public(self) -> bool:
        return self.job.model_access == "public"

    def may_download(self, user) -> bool:
        """What the chain's hasAccess allows, as the mirror knows it (plus staff)."""
        if not user.is_authenticated:
            return False
        if user.is_staff:
            return True
        if self.status != self.Status.REGISTERED:
            return False
        if self.is_public:
            return True
        return self.grants.filter(user=user, status=ModelGrant.Status.GRANTED).exists()


class ModelGrant(models.Model):
    """Access to a final model for one user's address, `granted` once its grantAccess is mined."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        GRANTED = "granted", "Granted"
        FAILED = "failed", "Failed"

    final_model = models.ForeignKey(FinalModel, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_grants")
    address = models.CharField(max_length=42)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    tx_hash = models.CharField(max_length=66, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    granted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["final_model", "user"], name="one_grant_per_model_user")]

    def __str__(self) -> str:
        return f"grant of model {self.final_model_id} to {self.user} at {self.address} ({self.status})"
