from django.contrib import admin

from .models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "node", "owner", "samples", "created_at")
    list_filter = ("task",)
    search_fields = ("name", "node__name", "owner__username")
