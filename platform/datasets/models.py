"""Datasets a participant declares for one of their nodes: metadata only (name, task, schema,
sample count). The data never leaves the node and is never uploaded; consent to train on it is a
jobs.Consent row naming the dataset."""

from django.conf import settings
from django.db import models

from jobs.models import DATASET_CHOICES, DATASET_SHAPES, image_shape

MAX_SAMPLES = 10_000_000  # declared samples, a sanity cap (the platform never counts them)
IMAGE_KEYS = ("channels", "height", "width")


def schema_problem(task: str, schema) -> str | None:
    """Why ``schema`` does not describe data for ``task`` (None when it does). A schema is
    {"features": F, "classes": C} or, for images, {"channels": c, "height": h, "width": w,
    "classes": C} with c*h*w == F; F and C must be the task's (jobs.models.DATASET_SHAPES), and
    an image schema is only for an image task, of its channels and size (jobs.models.DATASET_SCHEMAS)."""
    if task not in DATASET_SHAPES:
        return f"unknown task {task!r}"
    if not isinstance(schema, dict):
        return "the schema must be a JSON object"
    allowed = {"features", "classes", *IMAGE_KEYS}
    if unknown := sorted(set(schema) - allowed):
        return f"unknown schema keys: {', '.join(unknown)}"
    for key, value in schema.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1_000_000:
            return f"{key} must be a positive integer"
    features, classes = DATASET_SHAPES[task]
    if any(k in schema for k in IMAGE_KEYS):
        if not all(k in schema for k in IMAGE_KEYS):
            return "an image schema needs channels, height and width"
        declared = schema["channels"] * schema["height"] * schema["width"]
        if "features" in schema and schema["features"] != declared:
            return "features must equal channels × height × width"
    elif "features" in schema:
        declared = schema["features"]
    else:
        return "the schema needs features (or channels, height and width)"
    if declared != features:
        return f"{task} has {features} features per sample; the schema declares {declared}"
    if schema.get("classes") != classes:
        return f"{task} has {classes} classes; the schema declares {schema.get('classes')}"
    if any(k in schema for k in IMAGE_KEYS):
        expected = image_shape(task)
        if expected is None:
            return f"{task} is tabular data: declare its features, not channels, height and width"
        if tuple(schema[k] for k in IMAGE_KEYS) != expected:
            return f"{task} images are {'×'.join(map(str, expected))} (channels × height × width)"
    return None


class Dataset(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=80)
    task = models.CharField(max_length=32, choices=DATASET_CHOICES)
    schema = models.JSONField(help_text='e.g. {"features": 64, "classes": 10}')
    samples = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["node_id", "name"]
        constraints = [models.UniqueConstraint(fields=["node", "name"], name="unique_dataset_name_per_node")]

    def __str__(self) -> str:
        return f"{self.name} ({self.task}) on {self.node}"
