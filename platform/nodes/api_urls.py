from django.urls import path

from jobs import api as job_api

from . import api

urlpatterns = [
    path("node", api.me, name="api-node"),
    path("node/hello", api.hello, name="api-hello"),
    path("node/heartbeat", api.heartbeat, name="api-heartbeat"),
    path("node/plans", api.plans, name="api-plans"),
    path("reports", job_api.report, name="api-report"),
]
