from django.urls import path

from . import views

app_name = "datasets"
urlpatterns = [
    path("datasets/", views.dataset_list, name="list"),
    path("datasets/new/", views.dataset_create, name="create"),
    path("datasets/<int:pk>/", views.dataset_edit, name="edit"),
    path("datasets/consents/", views.my_consents, name="consents"),
    path("jobs/<int:pk>/consents/", views.job_consents, name="job-consents"),
]
