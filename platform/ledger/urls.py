from django.urls import path

from ledger import views

app_name = "ledger"
urlpatterns = [
    path("", views.payouts, name="payouts"),
    path("faucet/", views.wallet_faucet, name="faucet"),
    path("refresh/", views.wallet_refresh, name="refresh"),
    path("audit/", views.audit_jobs, name="audit"),
    path("audit/<int:job_id>/", views.audit_job, name="audit_job"),
    path("audit/<int:job_id>/run/", views.audit_run, name="audit_run"),
]
