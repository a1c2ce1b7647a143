from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger (reward token and payouts)"
    default_auto_field = "django.db.models.BigAutoField"
