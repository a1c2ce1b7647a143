"""Per-job sequence numbers of live frames (see live.broadcast)."""

from django.db import models, transaction


class JobSequence(models.Model):
    """The last sequence number handed to a live frame of a job. A row of its own (not a Redis
    key) so a flushed or restarted Redis never sends a number backwards."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, primary_key=True, related_name="+")
    seq = models.PositiveBigIntegerField(default=0)

    @classmethod
    def next(cls, job_id: int) -> int:
        """Allocate the job's next number (atomic: the row is locked until the increment commits)."""
        with transaction.atomic():
            row, _ = cls.objects.select_for_update().get_or_create(job_id=job_id)
            row.seq += 1
            row.save(update_fields=["seq"])
            return row.seq

    @classmethod
    def current(cls, job_id: int) -> int:
        """The last number allocated: every frame up to it was sent after its data committed."""
        return cls.objects.filter(job_id=job_id).values_list("seq", flat=True).first() or 0
