from django.contrib import admin

from .models import Node

admin.site.register(Node, list_display=["name", "owner", "gpu_name", "vram_gb", "last_seen"], exclude=["token_hash"])
