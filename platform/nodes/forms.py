from django import forms

from .hardware import HardwareError, parse_hardware
from .models import Node


class NodeForm(forms.ModelForm):
    hardware_json = forms.CharField(
        label="Hardware report",
        widget=forms.Textarea,
        help_text="Run <code>python -m peers hw</code> on the machine and paste its output. "
        "The peer refreshes it every time it connects.",
    )

    class Meta:
        model = Node
        fields = ["name"]

    def __init__(self, *args, owner, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Node.objects.filter(owner=self.owner, name=name).exists():
            raise forms.ValidationError("You already have a node with this name.")
        return name

    def clean_hardware_json(self):
        try:
            return parse_hardware(self.cleaned_data["hardware_json"])
        except HardwareError as exc:
            raise forms.ValidationError(f"Hardware report: {exc}") from None
