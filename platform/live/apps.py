from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"

    def ready(self):
        from django.db import transaction
        from django.db.models.signals import post_save

        from jobs.models import Consent, Job
        from jobs.snapshot import status_event

        from .broadcast import job_update
        from .events import consent_event

        def consent_changed(sender, instance, created, **kwargs):
            """A consent row (append-only) is a line of the job's event log, live; a recruiting
            job's page also gets its new count of consenting nodes."""
            if created:
                event = consent_event(instance)

                def push():
                    job_update(instance.job_id, "event", event)
                    job = Job.objects.get(pk=instance.job_id)
                    if job.status == Job.Status.WAITING:
                        job_update(job.id, "status", status_event(job))

                transaction.on_commit(push)

        post_save.connect(consent_changed, sender=Consent, weak=False, dispatch_uid="live.consent_changed")
