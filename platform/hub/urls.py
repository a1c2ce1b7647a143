from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from hub.api import api
from hub.metrics import metrics
from hub.ratelimit import client_address, limited
from jobs import views as job_views

# Attempts count per client address and username, so guessing one account's password is slow
# and one address cannot lock out everyone.
login_view = limited("LOGIN_RATE_LIMIT", lambda r: f"{client_address(r)}:{r.POST.get('username', '')[:150]}")(
    auth_views.LoginView.as_view()
)

# A reset mails a link: limited per client address like logins, so nobody floods an inbox.
password_reset_view = limited("LOGIN_RATE_LIMIT", lambda r: f"reset:{client_address(r)}")(
    auth_views.PasswordResetView.as_view()
)

urlpatterns = [
    path("", job_views.home, name="home"),
    path("login/", login_view, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/password/reset/", password_reset_view, name="password_reset"),
    path("accounts/password/reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("accounts/reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("accounts/", include("accounts.urls")),
    path("nodes/", include("nodes.urls")),
    path("", include("datasets.urls")),  # /datasets/ and each job's consent history
    path("jobs/", include("jobs.urls")),
    path("payouts/", include("ledger.urls")),
    path("api/v1/", api.urls),  # OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs
    path("metrics", metrics, name="metrics"),  # Prometheus
    path("admin/", admin.site.urls),
    path("", include("modelstore.urls")),  # a job's final model: its upload (node API) and download
]
