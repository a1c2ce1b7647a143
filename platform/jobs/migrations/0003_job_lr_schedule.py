from django.db import migrations, models

CHOICES = [("cosine", "Cosine decay"), ("constant", "Constant")]
HELP = "Cosine: from the learning rate down to 1/rounds of it in the last round."


class Migration(migrations.Migration):
    """Jobs created before schedules existed keep training at a constant rate; new ones decay."""

    dependencies = [
        ("jobs", "0002_job_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="lr_schedule",
            field=models.CharField(choices=CHOICES, default="constant", help_text=HELP, max_length=16),
        ),
        migrations.AlterField(
            model_name="job",
            name="lr_schedule",
            field=models.CharField(choices=CHOICES, default="cosine", help_text=HELP, max_length=16),
        ),
    ]
