from django.urls import path

from . import api, views

urlpatterns = [
    path("api/v1/jobs/<int:job_id>/model", api.upload, name="api-job-model"),
    path("jobs/<int:pk>/model/", views.download, name="job-model"),
]
