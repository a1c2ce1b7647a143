from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


def validate_address(value: str) -> None:
    """An Ethereum address: 0x followed by 40 hex digits."""
    if len(value) != 42 or not value.startswith("0x"):
        raise ValidationError("Enter an address like 0x followed by 40 hex digits.")
    try:
        int(value[2:], 16)
    except ValueError:
        raise ValidationError("The address must be hexadecimal.") from None


class Profile(models.Model):
    """What the platform knows about a participant beyond the login: where rewards go."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    payout_address = models.CharField(
        max_length=42,
        blank=True,
        validators=[validate_address],
        help_text="Your wallet address on the reward chain. Rewards are paid here.",
    )

    def __str__(self) -> str:
        return f"profile of {self.user}"

    @classmethod
    def for_user(cls, user) -> "Profile":
        profile, _ = cls.objects.get_or_create(user=user)
        return profile
