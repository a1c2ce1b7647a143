from django.db import migrations, models

CHOICES = [("cosine", "Cosine decay (to lr / rounds in the last round)"), ("constant", "Constant")]


class Migration(migrations.Migration):
    """Jobs created before schedules existed keep training at a constant rate; new ones decay."""

    dependencies = [
        ("jobs", "0002_job_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="lr_schedule",
            field=models.CharField(choices=CHOICES, default="constant", max_length=16),
        ),
        migrations.AlterField(
            model_name="job",
            name="lr_schedule",
            field=models.CharField(choices=CHOICES, default="cosine", max_length=16),
        ),
    ]
