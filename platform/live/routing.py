from django.urls import path

from .consumers import JobConsumer, OperatorConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/operator/", OperatorConsumer.as_asgi()),
]
