from django.urls import path

from . import views

app_name = "nodes"
urlpatterns = [
    path("", views.node_list, name="list"),
    path("register/", views.node_register, name="register"),
    path("<int:pk>/", views.node_detail, name="detail"),
    path("<int:pk>/token/", views.node_new_token, name="new_token"),
    path("<int:pk>/reset-key/", views.node_reset_key, name="reset_key"),
]
