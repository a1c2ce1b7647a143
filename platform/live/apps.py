from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"

    def ready(self):
        from django.db import transaction
        from django.db.models.signals import post_save

        from jobs.models import Consent

        from .broadcast import job_update
        from .events import consent_event

        def consent_changed(sender, instance, created, **kwargs):
            """A consent row (append-only) is a line of the job's event log, live."""
            if created:
                event = consent_event(instance)
                transaction.on_commit(lambda: job_update(instance.job_id, "event", event))

        post_save.connect(consent_changed, sender=Consent, weak=False, dispatch_uid="live.consent_changed")
