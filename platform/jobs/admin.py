from django.contrib import admin

from .models import CohortMember, Consent, Job, PeerReport, Round

admin.site.register(Job, list_display=["name", "owner", "status", "current_round", "rounds", "num_peers"])
admin.site.register(Consent, list_display=["job", "node", "granted", "by", "at"])
admin.site.register(CohortMember, list_display=["job", "node", "position"])
admin.site.register(Round, list_display=["job", "number", "status", "mean_accuracy", "reporters"])
admin.site.register(PeerReport, list_display=["round", "node", "accuracy", "samples", "received_at"])
