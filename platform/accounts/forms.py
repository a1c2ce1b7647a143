from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import Profile


class SignupForm(UserCreationForm):
    payout_address = forms.CharField(
        max_length=42,
        required=False,
        help_text="Optional now: your wallet address for rewards (0x…). You can add it later.",
    )

    def clean_payout_address(self):
        value = self.cleaned_data["payout_address"].strip()
        if value:
            Profile._meta.get_field("payout_address").run_validators(value)
        return value


class ProfileForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["payout_address"]
