from django.contrib import admin

from .models import FinalModel, ModelGrant


@admin.register(FinalModel)
class FinalModelAdmin(admin.ModelAdmin):
    list_display = ("job", "sha256", "size", "registry_model_id", "status", "uploaded_at")
    list_filter = ("status",)
    readonly_fields = [f.name for f in FinalModel._meta.fields]


@admin.register(ModelGrant)
class ModelGrantAdmin(admin.ModelAdmin):
    list_display = ("final_model", "user", "address", "status", "tx_hash")
    list_filter = ("status",)
    readonly_fields = [f.name for f in ModelGrant._meta.fields]
