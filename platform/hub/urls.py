from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from hub.ratelimit import client_address, limited
from jobs import views as job_views

# Attempts count per client address and username, so guessing one account's password is slow
# and one address cannot lock out everyone.
login_view = limited("LOGIN_RATE_LIMIT", lambda r: f"{client_address(r)}:{r.POST.get('username', '')[:150]}")(
    auth_views.LoginView.as_view()
)

urlpatterns = [
    path("", job_views.home, name="home"),
    path("login/", login_view, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("accounts.urls")),
    path("nodes/", include("nodes.urls")),
    path("", include("datasets.urls")),  # /datasets/ and each job's consent history
    path("jobs/", include("jobs.urls")),
    path("payouts/", include("ledger.urls")),
    path("api/v1/", include("nodes.api_urls")),
    path("admin/", admin.site.urls),
    path("", include("modelstore.urls")),  # a job's final model: its upload (node API) and download
]
