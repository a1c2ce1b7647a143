from django.contrib import admin

from .models import Node

admin.site.register(
    Node,
    list_display=["name", "owner", "gpu_name", "vram_gb", "last_seen"],
    exclude=["token_hash"],
    list_filter=["cuda_capability", "last_seen"],
    search_fields=["name", "owner__username", "gpu_name", "cpu"],
)
