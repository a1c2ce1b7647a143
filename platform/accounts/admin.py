from django.contrib import admin

from .models import Profile

admin.site.register(
    Profile,
    list_display=["user", "payout_address"],
    list_filter=[("payout_address", admin.EmptyFieldListFilter)],
    search_fields=["user__username", "user__email", "payout_address"],
)
