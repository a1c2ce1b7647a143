from django.urls import path

from ledger import views

app_name = "ledger"
urlpatterns = [
    path("", views.payouts, name="payouts"),
    path("faucet/", views.wallet_faucet, name="faucet"),
    path("refresh/", views.wallet_refresh, name="refresh"),
]
