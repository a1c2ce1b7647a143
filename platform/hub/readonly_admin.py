"""Read-only Django admin for audit evidence: reports, scores, consents, what went on chain.

Staff may look, search and filter, never add, edit or delete: the evidence is what the chain
audit (ledger.audit) rebuilds the money from, so it stays as the platform wrote it."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Every field shown, none editable; no add, change or delete (POSTs get a 403)."""

    list_per_page = 50

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
