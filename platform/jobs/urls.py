from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/consent/", views.job_consent, name="consent"),
    path("<int:pk>/edit/", views.job_edit, name="edit"),
    path("<int:pk>/publish/", views.job_publish, name="publish"),
    path("<int:pk>/clone/", views.job_clone, name="clone"),
    path("<int:pk>/cancel/", views.job_cancel, name="cancel"),
    path("<int:pk>/fund/", views.job_fund, name="fund"),
    path("<int:pk>/fund/browser/", views.job_fund_browser, name="fund-browser"),
]
