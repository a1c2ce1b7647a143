from django import forms

from .models import Job


class JobForm(forms.ModelForm):
    class Meta:
        model = Job
        fields = [
            "name", "description", "is_public", "dataset", "model", "hidden", "topology",
            "num_peers", "rounds", "local_steps", "lr", "batch_size", "round_timeout_s",
            "min_vram_gb", "require_cuda", "reward_per_round",
        ]
        labels = {
            "num_peers": "Number of peers", "local_steps": "Local steps per round (tau)",
            "lr": "Learning rate", "round_timeout_s": "Round deadline (seconds)",
            "min_vram_gb": "Minimum GPU memory (GB)", "require_cuda": "Requires CUDA",
            "reward_per_round": "Reward per round (tokens)", "hidden": "Hidden units (MLP)",
        }
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    LIMITS = {
        "num_peers": (1, 256), "rounds": (1, 1000), "local_steps": (1, 10_000), "hidden": (1, 4096),
        "batch_size": (1, 4096), "round_timeout_s": (10, 86_400), "reward_per_round": (0, 10**9),
    }

    def clean(self):
        data = super().clean()
        for name, (low, high) in self.LIMITS.items():
            value = data.get(name)
            if value is not None and not low <= value <= high:
                self.add_error(name, f"Must be between {low} and {high}.")
        lr = data.get("lr")
        if lr is not None and not 0 < lr <= 10:
            self.add_error("lr", "Must be greater than 0 and at most 10.")
        if (data.get("min_vram_gb") or 0) < 0:
            self.add_error("min_vram_gb", "Must not be negative.")
        return data


class ConsentForm(forms.Form):
    node = forms.IntegerField()
    grant = forms.ChoiceField(choices=[("yes", "grant"), ("no", "revoke")])
