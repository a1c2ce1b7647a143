from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "datasets"
    verbose_name = "Datasets (declared by metadata only) and consent history"
    default_auto_field = "django.db.models.BigAutoField"
