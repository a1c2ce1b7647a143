from django import forms

from nodes.models import Node

from .models import MAX_SAMPLES, Dataset, schema_problem


class DatasetForm(forms.ModelForm):
    """Declare (or edit) a dataset: metadata only, never a file."""

    class Meta:
        model = Dataset
        fields = ["node", "name", "task", "schema", "samples", "description"]
        help_texts = {
            "schema": 'JSON: {"features": 64, "classes": 10}, or for images '
            '{"channels": 1, "height": 8, "width": 8, "classes": 10}.',
            "samples": f"How many samples the node holds (declared, at most {MAX_SAMPLES:,}).",
        }

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.fields["node"].queryset = Node.objects.filter(owner=owner)  # only one's own nodes

    def clean_name(self):
        return self.cleaned_data["name"].strip()

    def clean_samples(self):
        samples = self.cleaned_data["samples"]
        if not 0 < samples <= MAX_SAMPLES:
            raise forms.ValidationError(f"Must be between 1 and {MAX_SAMPLES:,}.")
        return samples

    def clean(self):
        data = super().clean()
        task, schema = data.get("task"), data.get("schema")
        if task and schema is not None and (problem := schema_problem(task, schema)):
            self.add_error("schema", f"Does not match the task: {problem}.")
        return data
