from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/consent/", views.job_consent, name="consent"),
    path("<int:pk>/fund/", views.job_fund, name="fund"),
    path("<int:pk>/fund/browser/", views.job_fund_browser, name="fund-browser"),
]
