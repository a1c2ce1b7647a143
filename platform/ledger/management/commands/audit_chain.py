"""`manage.py audit_chain --job ID`: rebuild a job's rounds from the database and compare them
with the chain; prints a table and exits 1 on any mismatch."""

from django.core.management.base import BaseCommand, CommandError

from jobs.models import Job
from ledger.audit import audit_job


class Command(BaseCommand):
    help = "Verify a job's round commits, payouts, deposit and refund on chain against the database."

    def add_arguments(self, parser):
        parser.add_argument("--job", type=int, required=True, help="the job's id")

    def handle(self, *args, **opts):
        job = Job.objects.filter(pk=opts["job"]).first()
        if job is None:
            raise CommandError(f"no job {opts['job']}")
        checks = audit_job(job)
        rows = [("round", "check", "database", "chain", "")] + [
            ("job" if c.round is None else str(c.round), c.what, c.database, c.chain, "ok" if c.ok else "MISMATCH")
            for c in checks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        bad = [c for c in checks if not c.ok]
        if bad:
            raise CommandError(f"{len(bad)} of {len(checks)} checks do not match the chain")
        self.stdout.write(self.style.SUCCESS(f"job {job.id}: all {len(checks)} checks match the chain"))
