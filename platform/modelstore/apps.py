from django.apps import AppConfig


class ModelstoreConfig(AppConfig):
    name = "modelstore"
    verbose_name = "Model store (final models and their registry access)"
    default_auto_field = "django.db.models.BigAutoField"
