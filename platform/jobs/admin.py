from django.contrib import admin

from hub.readonly_admin import ReadOnlyAdmin

from .models import CohortMember, Consent, Job, PeerReport, Round


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """A job's settings may be edited; its state is the orchestration's, and a job with rounds or
    an escrow is audit evidence (deleting it would take its reports and money records along)."""

    list_display = ["name", "id", "owner", "status", "current_round", "rounds", "num_peers", "created_at"]
    list_filter = ["status", "dataset", "model", "rule", "topology", "is_public"]
    search_fields = ["=id", "name", "description", "owner__username"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    readonly_fields = ["status", "current_round", "started_at", "finished_at", "failure"]

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and (obj.round_set.exists() or hasattr(obj, "escrow")):
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one job at a time, through the check above
        return actions


@admin.register(Consent)
class ConsentAdmin(ReadOnlyAdmin):
    """Append-only: a withdrawal is a new row, made by the node's owner on the job page."""

    list_display = ["__str__", "job", "node", "granted", "by", "at"]
    list_filter = ["granted"]
    search_fields = ["=job__id", "job__name", "node__name", "by__username"]
    list_select_related = ["job", "node", "by"]
    date_hierarchy = "at"


@admin.register(CohortMember)
class CohortMemberAdmin(admin.ModelAdmin):
    list_display = ["job", "node", "position", "missed_rounds"]
    list_filter = ["job__status"]
    search_fields = ["=job__id", "job__name", "node__name"]
    list_select_related = ["job", "node"]


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "job", "number", "status", "mean_accuracy", "reporters", "opened_at", "closed_at"]
    list_filter = ["status"]
    search_fields = ["=job__id", "job__name"]
    list_select_related = ["job"]
    date_hierarchy = "opened_at"


@admin.register(PeerReport)
class PeerReportAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "accuracy", "train_loss", "samples", "diverged", "epsilon", "received_at"]
    list_filter = ["diverged"]
    search_fields = ["=round__job__id", "round__job__name", "node__name", "model_hash"]
    list_select_related = ["round", "node"]
    date_hierarchy = "received_at"
