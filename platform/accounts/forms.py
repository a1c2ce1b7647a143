from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import Profile

EMAIL_HELP = "Optional: where a password reset link is sent. Never shown to anyone."


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text=EMAIL_HELP)
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

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")


class ProfileForm(forms.ModelForm):
    email = forms.EmailField(required=False, help_text=EMAIL_HELP)

    class Meta:
        model = Profile
        fields = ["payout_address"]
